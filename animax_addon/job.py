"""One Animate: a worker thread that talks to the worker, and the controller that applies its events.

``WorkerThread`` is bpy-free: it owns the ZeroMQ client (sockets are used by one thread only), puts
events on a queue and writes preview frames to disk. ``AnimateController`` runs on Blender's main
thread only: ``start()`` snapshots the rig and starts the thread, ``poll()`` drains the queue and
touches Blender data (template renders when the worker says its image size, the Actions at the
end), ``cancel()`` asks the worker to stop. The modal operator calls ``poll()`` from its timer;
without an event loop (``bpy.app.background``) the operator's ``execute`` calls it in a loop.
"""

from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .core.client import Client, WorkerUnavailable, result_arrays
from .core.protocol import MessageType, ProtocolError

_EXPECTED_VIEWS = 4


class AnimateError(ValueError):
    """Animate cannot start or go on; the text is a sentence for the user saying what to do."""


def model_frames(duration: int, scene_fps: float, model_fps: float, max_frames: int) -> int:
    """Frames (1 + 4k, at most ``max_frames``) the model makes to cover ``duration`` scene frames."""
    span = (duration - 1) / scene_fps * model_fps  # seconds between first and last frame, in model frames
    frames = 1 + 4 * math.ceil(span / 4 - 1e-9)
    return max(1, min(frames, 1 + 4 * ((max_frames - 1) // 4)))


def tile_views(video: np.ndarray) -> np.ndarray:
    """(V, T, H, W, 3) -> (T, rows*H, cols*W, 3): the views side by side, two per row for four."""
    views, frames, height, width = video.shape[:4]
    cols = math.ceil(math.sqrt(views))
    rows = math.ceil(views / cols)
    grid = np.zeros((frames, rows * height, cols * width, 3), dtype=np.uint8)
    for v in range(views):
        r, c = divmod(v, cols)
        grid[:, r * height:(r + 1) * height, c * width:(c + 1) * width] = video[v]
    return grid


@dataclass
class JobSpec:
    """Everything the worker thread needs, as plain values."""

    address: str
    prompt: str
    seeds: list[int]
    preview_dir: str
    client_options: dict = field(default_factory=dict)
    local: object | None = None  # a local_worker.LocalWorker still starting up, or None
    startup_timeout_s: float = 0.0


class WorkerThread(threading.Thread):
    """Connects, waits for the templates from the main thread, runs one job per seed.

    Events on ``events``: ("welcome", body), ("accepted", (i, position)), ("progress", (i, body)),
    ("result", (i, arrays, diagnostics, previews)), then one of ("done", None), ("cancelled", None),
    ("error", sentence).
    """

    def __init__(self, spec: JobSpec):
        super().__init__(name="animax-job", daemon=True)
        self.spec = spec
        self.events: queue.Queue = queue.Queue()
        self._payload: queue.Queue = queue.Queue(maxsize=1)
        self._cancel = threading.Event()

    # --- main thread ---------------------------------------------------------------------------------
    def send_inputs(self, rig: dict, cameras: dict, templates: np.ndarray, options: dict) -> None:
        self._payload.put((rig, cameras, templates, options))

    def cancel(self) -> None:
        self._cancel.set()
        try:
            self._payload.put_nowait(None)  # wakes a thread waiting for the templates
        except queue.Full:
            pass

    # --- this thread -----------------------------------------------------------------------------------
    def run(self) -> None:
        client = Client(self.spec.address, **self.spec.client_options)
        try:
            self._run(client)
        except WorkerUnavailable as exc:
            local = self.spec.local
            self.events.put(("error", local.exit_message() if local and not local.running() else str(exc)))
        except ProtocolError as exc:
            self.events.put(("error", exc.sentence))
        except Exception as exc:  # noqa: BLE001 - the user must see it in the panel, not in a dead thread
            self.events.put(("error", f"AnimaX failed unexpectedly ({type(exc).__name__}: {exc}); "
                                      "please report this with the worker log"))
        finally:
            client.close()

    def _run(self, client: Client) -> None:
        welcome = self._connect(client)
        if welcome is None:
            return
        self.events.put(("welcome", welcome))
        inputs = self._payload.get()
        if inputs is None or self._cancel.is_set():
            self.events.put(("cancelled", None))
            return
        rig, cameras, templates, options = inputs
        for i, seed in enumerate(self.spec.seeds):
            if not self._variation(client, i, rig, cameras, templates, dict(options, seed=seed)):
                return
        self.events.put(("done", None))

    def _connect(self, client: Client) -> dict | None:
        """The worker's WELCOME; a local worker that is still loading its model gets time."""
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while not self._cancel.is_set():
            try:
                return client.hello()
            except WorkerUnavailable:
                local = self.spec.local
                if local is None or not local.running() or time.monotonic() > deadline:
                    raise
        self.events.put(("cancelled", None))
        return None

    def _variation(self, client: Client, i: int, rig: dict, cameras: dict, templates: np.ndarray,
                   options: dict) -> bool:
        job = client.submit(self.spec.prompt, rig, cameras, templates, options)
        cancel_sent = False
        for message in client.events(job):
            # Checked per message: progress comes every denoising step, so a cancel waits at most one.
            if self._cancel.is_set() and not cancel_sent:
                client.cancel(job)
                cancel_sent = True
            if message.type == MessageType.ACCEPTED:
                self.events.put(("accepted", (i, message.body["position"])))
            elif message.type == MessageType.PROGRESS:
                self.events.put(("progress", (i, message.body)))
            elif message.type == MessageType.RESULT and not self._cancel.is_set():
                arrays = result_arrays(message)
                previews = self._write_previews(i, arrays)
                self.events.put(("result", (i, arrays, message.body["diagnostics"], previews)))
                return True
            elif message.type == MessageType.ERROR:
                self.events.put(("error", message.body["message"]))
                return False
        self.events.put(("cancelled", None))  # CANCELLED, or a RESULT that came after the cancel
        return False

    def _write_previews(self, i: int, arrays: dict) -> dict[str, tuple[str, int]]:
        """PNG frames of each video, the views tiled; {output: (first frame path, frame count)}."""
        from PIL import Image

        previews = {}
        for key, video in arrays.items():
            if not key.endswith("_video"):
                continue
            name = key[: -len("_video")]
            folder = os.path.join(self.spec.preview_dir, f"variation{i + 1}_{name}")
            os.makedirs(folder, exist_ok=True)
            frames = tile_views(video)
            paths = [os.path.join(folder, f"{name}_{t + 1:04d}.png") for t in range(len(frames))]
            for path, frame in zip(paths, frames):
                Image.fromarray(frame).save(path)
            previews[name] = (paths[0], len(paths))
        return previews


# --- the controller (Blender's main thread only) ---------------------------------------------------------


CONTROLS_NAMED = 6  # a baked run's message names this many of the controls it keyed


class AnimateController:
    """Start, poll and cancel one Animate; see the module doc."""

    active: "AnimateController | None" = None  # the one running job (the panel's Cancel targets it)

    def __init__(self, context, obj):
        settings = context.scene.animax
        self.scene_name, self.object_name = context.scene.name, obj.name
        self.prompt = settings.prompt.strip()
        self.duration, self.steps, self.guidance = settings.duration, settings.steps, settings.guidance
        self.seeds = [settings.seed + i for i in range(settings.variations)]
        self.bones, self.bone_collection = settings.bones, settings.bone_collection
        self.thin_tolerance, self.decode_rgb = settings.thin_tolerance, settings.decode_rgb
        self.outcome: str | None = None  # FINISHED, CANCELLED or FAILED once done
        self.message = ""
        self.warnings: list[str] = []
        self.thread: WorkerThread | None = None
        self.rig = None
        self.frame = None  # the character's upright frame (snapshot.upright_frame), the cameras' axes
        self.address = ""
        self._results: dict[int, tuple] = {}
        self._started = time.monotonic()
        self._variation_started = self._started

    # --- state shown in the panel --------------------------------------------------------------------
    @staticmethod
    def _state():
        import bpy

        return bpy.context.window_manager.animax_state

    def _show(self, stage: str, progress: float | None = None, eta_s: float | None = None) -> None:
        state = self._state()
        state.stage = stage
        if progress is not None:
            state.progress = min(max(progress, 0.0), 1.0)
        state.eta_s = -1.0 if eta_s is None else eta_s

    def _end(self, outcome: str, message: str) -> None:
        self.outcome, self.message = outcome, message
        state = self._state()
        state.running = False
        state.error = message if outcome == "FAILED" else ""
        state.summary = message if outcome == "FINISHED" else ""
        state.stage = {"FINISHED": "Done", "CANCELLED": "Cancelled", "FAILED": "Failed"}[outcome]
        if outcome == "FINISHED":
            state.progress = 1.0
        state.eta_s = -1.0
        if self.thread is not None:
            self.thread.cancel()  # a thread still waiting for templates ends now
        if AnimateController.active is self:
            AnimateController.active = None

    @property
    def running(self) -> bool:
        return self.outcome is None and self.thread is not None

    # --- start / poll / cancel --------------------------------------------------------------------------
    def start(self) -> None:
        """Snapshot the rig and start the worker thread; raises ``AnimateError`` with what to do."""
        import bpy

        from . import local_worker
        from .preferences import WorkerSettingsError, preferences
        from .snapshot import rig_from_armature, upright_frame

        if AnimateController.active is not None and AnimateController.active.running:
            raise AnimateError("An AnimaX job is running already; wait for it or press Cancel")
        obj = bpy.data.objects[self.object_name]
        state = self._state()
        state.error = state.summary = ""
        try:
            self.rig = rig_from_armature(obj, self.bones, self.bone_collection)
            connection = preferences().connection()
        except (ValueError, WorkerSettingsError) as exc:
            self._fail(str(exc))
            raise AnimateError(self.message) from None
        self.frame = upright_frame(obj)
        if self.frame.warning:  # a rest pose lying down: told before the job and in the outcome
            self.warnings.append(self.frame.warning)
        local = None
        if connection.mode == "LOCAL":
            try:
                local = local_worker.ensure(connection.python, connection.project)
            except OSError as exc:
                self._fail(f"The local worker could not be started with '{connection.python}' ({exc}); "
                           "check the Python executable in Preferences > Add-ons > AnimaX")
                raise AnimateError(self.message) from None
            self.address = local.address
        else:
            self.address = connection.address
        preview_dir = tempfile.mkdtemp(prefix="animax-preview-", dir=bpy.app.tempdir or None)
        spec = JobSpec(self.address, self.prompt, self.seeds, preview_dir,
                       client_options=_client_keys(connection), local=local,
                       startup_timeout_s=connection.startup_timeout_s if local else 0.0)
        self.thread = WorkerThread(spec)
        state.running, state.progress = True, 0.0
        self._show("Starting the local worker" if local else f"Connecting to {self.address}")
        AnimateController.active = self
        self.thread.start()

    def cancel(self) -> None:
        if self.running:
            self.thread.cancel()
            self._show("Cancelling")

    def poll(self) -> bool:
        """Apply the thread's events; True once the job has ended (see ``outcome``)."""
        while self.outcome is None:
            try:
                kind, data = self.thread.events.get_nowait()
            except queue.Empty:
                break
            try:
                getattr(self, f"_on_{kind}")(data)
            except AnimateError as exc:
                self._fail(str(exc))
        return self.outcome is not None

    def _fail(self, sentence: str) -> None:
        self._end("FAILED", sentence)

    # --- events ------------------------------------------------------------------------------------------
    def _on_welcome(self, welcome: dict) -> None:
        import bpy

        from .templates import camera_rig, render_templates

        preset = welcome.get("preset")
        if not isinstance(preset, dict):
            raise AnimateError(f"The worker at {self.address} did not tell its model's image size and frame "
                               "count (no 'preset' in its welcome); update the worker to this add-on's release")
        scene = bpy.data.scenes[self.scene_name]
        obj = bpy.data.objects.get(self.object_name)
        if obj is None:
            raise AnimateError(f"The armature '{self.object_name}' was deleted or renamed; animate it again")
        if self.rig.num_joints > preset["joints"]:  # a model that tells fewer joints apart than the default
            from .snapshot import rig_from_armature

            try:
                self.rig = rig_from_armature(obj, self.bones, self.bone_collection, preset["joints"])
            except ValueError as exc:
                raise AnimateError(str(exc)) from None
        scene_fps = scene.render.fps / scene.render.fps_base
        frames = model_frames(self.duration, scene_fps, preset["fps"], preset["frames"])
        covered = 1 + round((frames - 1) / preset["fps"] * scene_fps)
        if covered < self.duration:
            self.warnings.append(f"The {preset['name']} model makes at most {preset['frames']} frames at "
                                 f"{preset['fps']:g} fps, so the Action has {covered} of the {self.duration} "
                                 "frames asked for")
        self._show(f"Rendering {_EXPECTED_VIEWS} templates")
        cameras = camera_rig(obj, self.rig, preset["size"], self.frame)
        try:
            templates = render_templates(obj, cameras, preset["size"])
        except ValueError as exc:
            raise AnimateError(str(exc)) from None
        options = {"steps": self.steps, "guidance": self.guidance, "frames": frames, "fps": scene_fps,
                   "outputs": ["pose", "rgb"] if self.decode_rgb else ["pose"]}
        self.thread.send_inputs(self.rig.to_dict(), cameras.to_dict(), templates, options)
        self._show("Sending the job")

    def _on_accepted(self, data) -> None:
        i, position = data
        self._variation_started = time.monotonic()
        self._show(f"Queued, position {position}" if position else "Starting", self._fraction(i, 0.0))

    def _on_progress(self, data) -> None:
        i, body = data
        total = max(body["total"], 1)
        done = body["step"] / total
        if body["stage"] == "denoise":
            within = 0.9 * done  # reconstruction is the last tenth of a variation
        else:
            within = 0.9 + 0.1 * done
        eta = body["eta_s"]
        if eta is not None:
            per_variation = time.monotonic() - self._variation_started + eta
            eta += per_variation * (len(self.seeds) - i - 1)
        label = f"{body['stage'].capitalize()} {body['step']}/{body['total']}"
        if len(self.seeds) > 1:
            label = f"Variation {i + 1}/{len(self.seeds)}: {label}"
        self._show(label, self._fraction(i, within), eta)

    def _fraction(self, i: int, within: float) -> float:
        return (i + within) / len(self.seeds)

    def _on_result(self, data) -> None:
        i, arrays, diagnostics, previews = data
        self._results[i] = (arrays, diagnostics, previews)
        self._show(f"Variation {i + 1} received", self._fraction(i + 1, 0.0))

    def _on_error(self, sentence: str) -> None:
        raise AnimateError(sentence)

    def _on_cancelled(self, _) -> None:
        self._end("CANCELLED", "AnimaX was cancelled; no Action was written")

    def _on_done(self, _) -> None:
        self._apply()

    # --- the result ----------------------------------------------------------------------------------------
    def _apply(self) -> None:
        """One new Action per variation, the previews, then one undo step.

        The scene's frame range stays the user's: each Action carries its own (``write_action``).
        Where constraints drive the snapshot's bones (a generated rig), the motion is baked onto
        the rig's controls instead (``bake``), and the message says which.
        """
        import bpy

        from .action import write_action
        from .bake import bake_to_controls, driven_bones

        scene = bpy.data.scenes[self.scene_name]
        obj = bpy.data.objects.get(self.object_name)
        if obj is None:
            raise AnimateError(f"The armature '{self.object_name}' was deleted or renamed while AnimaX worked; "
                               "nothing was written")
        settings = scene.animax
        root_bone = self.rig.bones[self.rig.roots[0]].name
        name = f"AnimaX {self.prompt}"[:56]
        written, controls = [], []
        for i in sorted(self._results):
            arrays, diagnostics, previews = self._results[i]
            bone_names = diagnostics["bone_names"]
            motion = (bone_names, arrays["rotations"][: self.duration], root_bone,
                      arrays["root_translation"][: self.duration])
            action_name = name if len(self.seeds) == 1 else f"{name} #{i + 1}"
            action = None
            if driven_bones(obj, bone_names):
                action, controls = bake_to_controls(obj, action_name, self.rig, *motion,
                                                    frame_start=scene.frame_start, thin_tolerance=self.thin_tolerance)
            if action is None:
                action = write_action(obj, action_name, *motion, frame_start=scene.frame_start,
                                      thin_tolerance=self.thin_tolerance)
            written.append((action, self.seeds[i], self._load_previews(action.name, previews)))
        first = written[0][0]
        if len(written) > 1:
            use_action(obj, first)
        settings.results.clear()
        for action, seed, images in written:
            entry = settings.results.add()
            entry.action, entry.seed = action, seed
            entry.preview = images.get("pose", "")
            entry.preview_rgb = images.get("rgb", "")
        settings.result_index = 0
        frames = len(self._results[0][0]["rotations"][: self.duration])
        bpy.ops.ed.undo_push(message=f"AnimaX: {self.prompt}")
        names = ", ".join(f"'{a.name}'" for a, _, _ in written)
        seconds = time.monotonic() - self._started
        shown = ", ".join(controls[:CONTROLS_NAMED]) + (", ..." if len(controls) > CONTROLS_NAMED else "")
        keyed = (f"keyed {len(controls)} controls of '{obj.name}' ({shown})" if controls
                 else f"{len(self._results[0][1]['bone_names'])} bones")
        self._end("FINISHED", f"AnimaX wrote {names}: {frames} frames, {keyed}, in {seconds:.1f} s"
                  + "".join(f". {w}" for w in self.warnings))

    def _load_previews(self, action_name: str, previews: dict) -> dict[str, str]:
        """Each preview video as an image sequence; {output: image name}."""
        import bpy

        names = {}
        for output, (first, count) in previews.items():
            image = bpy.data.images.load(first, check_existing=False)
            image.source = "SEQUENCE"
            image.name = f"AnimaX preview {action_name} ({output})"
            image["animax_frames"] = count  # for the Image Editor's frame range
            names[output] = image.name
        return names


def _client_keys(connection) -> dict:
    """CurveZMQ key files for the ``Client``, when the preferences name them."""
    keys = {"server_public_key": connection.server_public_key, "client_secret_file": connection.client_secret_key}
    return {name: path for name, path in keys.items() if path}


def use_action(obj, action) -> None:
    """Make ``action`` the armature's active Action, on its first slot (Blender 4.4+ layered Actions)."""
    animation = obj.animation_data or obj.animation_data_create()
    animation.action = action
    slots = getattr(action, "slots", None)
    if slots and getattr(animation, "action_slot", None) is None:
        animation.action_slot = slots[0]
