"""Where the worker runs: a local one the add-on starts, or a remote one behind CurveZMQ."""


import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

from .local_worker import check_local_settings


class WorkerSettingsError(ValueError):
    """Preferences that cannot reach a worker; the text says what to change."""


@dataclass(frozen=True)
class Connection:
    """What the job thread needs to reach the worker (plain values: no bpy off the main thread)."""

    mode: str  # "LOCAL" or "REMOTE"
    address: str = ""
    python: str = ""
    project: str = ""
    server_public_key: str = ""
    client_secret_key: str = ""
    startup_timeout_s: float = 120.0


class AnimaXPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    mode: EnumProperty(name="Worker", default="LOCAL", items=[
        ("LOCAL", "Local", "Start a worker on this computer from a Python environment with AnimaX installed"),
        ("REMOTE", "Remote", "Use a worker on another computer (CurveZMQ encrypted; needs online access)"),
    ])
    python: StringProperty(name="Python", subtype="FILE_PATH",
                           description="Python executable of the environment where AnimaX's backend is installed")
    project: StringProperty(name="Project", subtype="DIR_PATH",
                            description="Folder of the AnimaX project (the one holding 'backend')")
    startup_timeout_s: FloatProperty(name="Startup Timeout", default=120.0, min=5.0, subtype="TIME_ABSOLUTE",
                                     unit="TIME_ABSOLUTE",
                                     description="How long a local worker may take to load its model")
    address: StringProperty(name="Address", default="tcp://",
                            description="The remote worker's address, e.g. tcp://gpu-box.example.org:5555")
    server_public_key: StringProperty(name="Server Key", subtype="FILE_PATH",
                                      description="The worker's public CurveZMQ key file (.key)")
    client_secret_key: StringProperty(name="Client Key", subtype="FILE_PATH",
                                      description="This computer's CurveZMQ key pair file (.key_secret); its public "
                                                  "key must be on the worker's allow-list")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "mode", expand=True)
        if self.mode == "LOCAL":
            layout.prop(self, "python")
            layout.prop(self, "project")
            layout.prop(self, "startup_timeout_s")
        else:
            if not bpy.app.online_access:
                layout.label(text="Online access is off: allow it in Preferences > System > Network", icon="ERROR")
            layout.prop(self, "address")
            layout.prop(self, "server_public_key")
            layout.prop(self, "client_secret_key")

    def connection(self) -> Connection:
        """The settings as a ``Connection``; raises ``WorkerSettingsError`` with what to fix."""
        if self.mode == "LOCAL":
            python, project = bpy.path.abspath(self.python), bpy.path.abspath(self.project)
            try:
                check_local_settings(python, project)
            except ValueError as exc:
                raise WorkerSettingsError(f"{exc} (Preferences > Add-ons > AnimaX)") from None
            return Connection("LOCAL", python=python, project=project, startup_timeout_s=self.startup_timeout_s)
        if not bpy.app.online_access:
            raise WorkerSettingsError("A remote worker needs online access, which is off: allow it in "
                                      "Preferences > System > Network > Allow Online Access, or use a local worker")
        if not self.address.startswith("tcp://") or len(self.address) <= len("tcp://"):
            raise WorkerSettingsError(f"The remote worker address '{self.address}' is not of the form "
                                      "tcp://HOST:PORT; set it in Preferences > Add-ons > AnimaX")
        keys = {}
        for name in ("server_public_key", "client_secret_key"):
            path = bpy.path.abspath(getattr(self, name))
            if path:
                if not os.path.isfile(path):
                    label = self.bl_rna.properties[name].name
                    raise WorkerSettingsError(f"The {label} file '{path}' does not exist; fix it in "
                                              "Preferences > Add-ons > AnimaX")
                keys[name] = str(Path(path))
        if len(keys) == 1 or (not keys and not _is_loopback(self.address)):
            raise WorkerSettingsError("A remote worker is reached through CurveZMQ: set both the Server Key and the "
                                      "Client Key files in Preferences > Add-ons > AnimaX (plain TCP is only "
                                      "allowed to 127.0.0.1)")
        return Connection("REMOTE", address=self.address, **keys)


def _is_loopback(address: str) -> bool:
    host = address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


classes = (AnimaXPreferences,)


def preferences(context=None) -> AnimaXPreferences:
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences
