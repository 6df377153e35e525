"""Animate on Blender's main thread: the controller that turns a ``JobFuture`` into Blender data.

``AnimateController.start()`` snapshots the rig and starts the job (``job_future.py``, bpy-free).
The future's callbacks run only where ``poll()`` delivers them, on the main thread: from a
``bpy.app.timers`` function while Blender's event loop runs (``deliver_on_timer``, used by the
modal operator), or in the loop of the operator's ``execute`` without one (``bpy.app.background``,
where timers never run). The welcome renders the templates at the worker's image size, progress
goes to the panel, and the result becomes the Actions in one undo step.
"""

from __future__ import annotations

import math
import tempfile
import time
from concurrent.futures import Future

from .core.request import Options, Request
from .job_future import JobFuture, JobSpec, Progress, Variation, Welcome, start_job

_EXPECTED_VIEWS = 4
_DELIVERY_S = 0.1


class AnimateError(ValueError):
    """Animate cannot start or go on; the text is a sentence for the user saying what to do."""


def model_frames(duration: int, scene_fps: float, model_fps: float, max_frames: int) -> int:
    """Frames (1 + 4k, at most ``max_frames``) the model makes to cover ``duration`` scene frames."""
    span = (duration - 1) / scene_fps * model_fps  # seconds between first and last frame, in model frames
    frames = 1 + 4 * math.ceil(span / 4 - 1e-9)
    return max(1, min(frames, 1 + 4 * ((max_frames - 1) // 4)))


CONTROLS_NAMED = 6  # a baked run's message names this many of the controls it keyed


def held_at_rest(diagnostics: dict) -> list[str]:
    """The bones a result keys at rest because the model did not animate them: those whose heads
    are not among its joints (the tiny model leaves out bones its training creatures lack, such
    as Rigify's shoulders and toes)."""
    joints = set(diagnostics["joint_names"])
    return [bone for bone in diagnostics["bone_names"] if bone not in joints]


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
        self.future: JobFuture | None = None
        self.rig = None
        self.frame = None  # the character's upright frame (snapshot.upright_frame), the cameras' axes
        self.address = ""
        self._started = time.monotonic()

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
        if self.future is not None:
            self.future.cancel()  # a job that failed here stops there too (nothing to stop once it is done)
        if AnimateController.active is self:
            AnimateController.active = None

    @property
    def running(self) -> bool:
        return self.outcome is None and self.future is not None

    # --- start / poll / cancel --------------------------------------------------------------------------
    def start(self) -> None:
        """Snapshot the rig and start the job; raises ``AnimateError`` with what to do."""
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
        spec = JobSpec(self.address, preview_dir,
                       client_options=_client_keys(connection), local=local,
                       startup_timeout_s=connection.startup_timeout_s if local else 0.0)
        state.running, state.progress = True, 0.0
        self._show("Starting the local worker" if local else f"Connecting to {self.address}")
        AnimateController.active = self
        self.future = start_job(spec)
        self.future.add_update_callback(self._on_update)
        self.future.add_done_callback(self._on_done)

    def deliver_on_timer(self, window):
        """Deliver from a ``bpy.app.timers`` function until the job ends; returns that function.

        It runs in ``window``'s context while that window is open, as an operator started there
        would (the templates and a bake use its scene); Blender's timers get the first window.
        """
        import bpy

        def deliver():
            override = {"window": window} if window in bpy.context.window_manager.windows[:] else {}
            with bpy.context.temp_override(**override):
                return None if self.poll() else _DELIVERY_S

        bpy.app.timers.register(deliver, first_interval=_DELIVERY_S)
        return deliver

    def cancel(self) -> None:
        if self.running:
            self.future.cancel()
            self.poll()  # the panel says so now, not after the thread has told the worker

    def abandon(self) -> None:
        """Cancel the job and end it here without delivering what it queued: another file is being
        loaded, and the scene and armature the job was for go with the file being closed."""
        if self.running:
            self._end("CANCELLED", "AnimaX was cancelled because another file was opened; no Action was written")

    def poll(self) -> bool:
        """Run the job's callbacks here, on the main thread; True once it has ended (see ``outcome``)."""
        self.future.deliver()
        return self.outcome is not None

    def _fail(self, sentence: str) -> None:
        self._end("FAILED", sentence)

    # --- the future's callbacks ----------------------------------------------------------------------------
    def _on_update(self, update: Welcome | Progress) -> None:
        if self.future.done():  # its outcome is queued behind: what came before it no longer matters
            return
        if isinstance(update, Progress):
            self._show(update.stage, update.fraction, update.eta_s)
            return
        try:
            self._on_welcome(update.body)
        except AnimateError as exc:
            self._fail(str(exc))

    def _on_done(self, future: Future) -> None:
        if self.outcome is not None:  # ended here already
            return
        if future.cancelled():
            self._end("CANCELLED", "AnimaX was cancelled; no Action was written")
        elif future.exception() is not None:
            self._fail(str(future.exception()))
        else:
            try:
                self._apply(future.result())
            except AnimateError as exc:
                self._fail(str(exc))

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
        options = Options(steps=self.steps or preset["steps"], guidance=self.guidance, seed=self.seeds[0],
                          frames=frames, fps=scene_fps, outputs=("pose", "rgb") if self.decode_rgb else ("pose",),
                          variations=len(self.seeds))
        self.future.send_request(Request.from_images(self.prompt, self.rig.to_dict(), cameras.to_dict(), templates,
                                                     options))
        self._show("Sending the job")

    # --- the result ----------------------------------------------------------------------------------------
    def _apply(self, variations: list[Variation]) -> None:
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
        for i, variation in enumerate(variations):
            arrays, bone_names = variation.arrays, variation.diagnostics["bone_names"]
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
            written.append((action, self.seeds[i], self._load_previews(action.name, variation.previews)))
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
        frames = len(variations[0].arrays["rotations"][: self.duration])
        bpy.ops.ed.undo_push(message=f"AnimaX: {self.prompt}")
        names = ", ".join(f"'{a.name}'" for a, _, _ in written)
        seconds = time.monotonic() - self._started
        shown = ", ".join(controls[:CONTROLS_NAMED]) + (", ..." if len(controls) > CONTROLS_NAMED else "")
        keyed = (f"keyed {len(controls)} controls of '{obj.name}' ({shown})" if controls
                 else f"{len(variations[0].diagnostics['bone_names'])} bones")
        held = held_at_rest(variations[0].diagnostics)
        if held:
            keyed += (f" ({len(held)} held at rest, which the model has no counterpart for: "
                      + ", ".join(held[:CONTROLS_NAMED]) + (", ..." if len(held) > CONTROLS_NAMED else "") + ")")
        drawn_as = variations[0].diagnostics.get("drawn_as")  # workers before it was sent draw the rig itself
        if drawn_as:
            keyed += f", moving as the model's {drawn_as.replace('_', ' ')} does (the preview shows it)"
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
