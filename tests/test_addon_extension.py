"""build.py's extension zip: Blender's validator accepts it, and installed into a temporary user
directory it enables, registers and unregisters cleanly (in a fresh process: bpy reads
BLENDER_USER_RESOURCES when it is imported)."""

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import build  # noqa: E402 - build.py sits at the repository root

INSTALL = r"""
import json, os, sys
os.environ["BLENDER_USER_RESOURCES"] = sys.argv[2]
import bpy
module = "bl_ext.user_default.animax"
types_before = set(dir(bpy.types))
handlers_before = {name: len(getattr(bpy.app.handlers, name)) for name in dir(bpy.app.handlers)
                   if isinstance(getattr(bpy.app.handlers, name), list)}
bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
enabled = module in bpy.context.preferences.addons
ext = sys.modules[module]
registered = sorted(set(dir(bpy.types)) - types_before)
props = [hasattr(bpy.types.Scene, "animax"), hasattr(bpy.types.WindowManager, "animax_state")]
poll = bpy.ops.animax.animate.poll()
site_packages = [p for p in sys.path if p.startswith(sys.argv[2])
                 and all(os.path.isdir(os.path.join(p, name)) for name in ("zmq", "PIL"))]
bpy.ops.preferences.addon_disable(module=module)
handlers_after = {name: len(getattr(bpy.app.handlers, name)) for name in handlers_before}
print("RESULT" + json.dumps({
    "enabled": enabled, "registered": registered, "props": props, "poll": poll,
    "site_packages": site_packages,
    "left_types": sorted(set(dir(bpy.types)) - types_before),
    "left_props": [hasattr(bpy.types.Scene, "animax"), hasattr(bpy.types.WindowManager, "animax_state")],
    "handlers_changed": handlers_after != handlers_before,
    "still_enabled": module in bpy.context.preferences.addons,
}))
"""


@pytest.fixture(scope="module")
def linux_zip(tmp_path_factory):
    return build.build(tmp_path_factory.mktemp("dist"), ["linux-x64"])


def test_zip_holds_the_addon_its_wheels_and_a_valid_manifest(linux_zip):
    done = subprocess.run([sys.executable, str(build.blender_ext_path()), "validate", str(linux_zip)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    with zipfile.ZipFile(linux_zip) as z:
        names = set(z.namelist())
        manifest = tomllib.loads(z.read("blender_manifest.toml").decode())
    assert {"__init__.py", "job.py", "operators.py", "core/client.py", "core/protocol.py"} <= names
    assert not any(n.startswith("backend") or "__pycache__" in n for n in names)
    wheels = sorted(n for n in names if n.startswith("wheels/"))
    assert [w.split("-")[0] for w in wheels] == ["wheels/pillow", "wheels/pyzmq"]
    assert all("manylinux" in w for w in wheels)
    assert manifest["platforms"] == ["linux-x64"] and manifest["wheels"] == [f"./{w}" for w in wheels]
    assert manifest["id"] == "animax" and manifest["blender_version_min"] == "4.4.0"
    assert "network" in manifest["permissions"]


def test_installed_extension_registers_and_unregisters_cleanly(linux_zip, tmp_path):
    done = subprocess.run([sys.executable, "-c", INSTALL, str(linux_zip), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    result = json.loads(lines[-1][len("RESULT"):])
    assert result["enabled"] and result["props"] == [True, True]
    assert {"ANIMAX_OT_animate", "ANIMAX_OT_cancel", "VIEW3D_PT_animax"} <= set(result["registered"])
    assert not result["poll"]  # no armature in the empty file
    # the bundled wheels were unpacked into the user directory and put on the path
    assert len(result["site_packages"]) == 1
    assert result["left_types"] == [] and result["left_props"] == [False, False]
    assert not result["handlers_changed"] and not result["still_enabled"]
