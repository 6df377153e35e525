"""Animate as the button does: real bpy, headless, and a real local worker with the tiny model.

The tiny model may be randomly initialised, so these tests check structure and behaviour (which
Actions, keys, frame range, undo, errors), not motion quality. One local worker serves the file;
the test that kills it runs last.
"""

import sys
import threading
import time
from pathlib import Path

import bpy  # noqa: I001 - bpy first: it puts addon_utils on the path
import addon_utils
import numpy as np
import pytest
from bpy_extras.anim_utils import action_get_channelbag_for_slot

from animax_addon import local_worker
from animax_addon.core.rig import MAX_JOINTS, Bone, Rig
from animax_addon.job import AnimateController
from animax_addon.snapshot import participating_bones
from backend.data.blender_build import build_creature
from backend.data.rig_world import FAMILIES
from backend.model.pipeline_animax import AnimaXPipelineOutput
from backend.worker.standalone import Standalone
from blender_rigs import build_armature

ROOT = Path(__file__).resolve().parent.parent
ADDON = "animax_addon"


def enable_addon():
    """The add-on enabled from this checkout, with a local worker run by this Python."""
    if ADDON not in bpy.context.preferences.addons:  # other files' factory resets disable add-ons
        addon_utils.enable(ADDON, default_set=True, handle_error=None)
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.mode, prefs.python, prefs.project = "LOCAL", sys.executable, str(ROOT)
    return prefs


@pytest.fixture(scope="module", autouse=True)
def module_addon():
    yield
    addon_utils.disable(ADDON, default_set=True)
    assert local_worker.current() is None  # unregister stopped the worker
    assert not [h for h in bpy.app.handlers.load_pre if h.__module__.startswith(ADDON)]


@pytest.fixture(autouse=True)
def addon():
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    yield enable_addon()
    assert AnimateController.active is None


def creature(family: str, seed: int = 0):
    return build_creature(FAMILIES[family](np.random.default_rng(seed)), family)


def configure(obj, prompt="the character jumps", steps=2, duration=9, **changes):
    settings = bpy.context.scene.animax
    settings.armature, settings.prompt, settings.steps, settings.duration = obj, prompt, steps, duration
    for name, value in changes.items():
        setattr(settings, name, value)
    return settings


def keys(action, obj):
    """{(data_path, index): (frames, values)} of the action's slot for obj."""
    bag = action_get_channelbag_for_slot(action, obj.animation_data.action_slot)
    out = {}
    for curve in bag.fcurves:
        co = np.empty(2 * len(curve.keyframe_points), dtype=np.float32)
        curve.keyframe_points.foreach_get("co", co)
        out[curve.data_path, curve.array_index] = co.reshape(-1, 2).T
    return out


ROTATION = {"XZY": ("rotation_euler", 3), "QUATERNION": ("rotation_quaternion", 4)}


def walk_action(obj):
    """An Action the user made before: every bone keyed on frames 1 and 9, in its own rotation
    mode, an Euler order and quaternions by turns."""
    rng = np.random.default_rng(1)
    for b, bone in enumerate(obj.pose.bones):
        bone.rotation_mode = ("XZY", "QUATERNION")[b % 2]
        for frame in (1, 9):
            bone.rotation_euler = rng.uniform(-0.5, 0.5, 3)
            bone.rotation_quaternion = (1.0, *rng.uniform(-0.2, 0.2, 3))
            bone.location = rng.uniform(-0.05, 0.05, 3)
            bone.keyframe_insert(ROTATION[bone.rotation_mode][0], frame=frame)
            bone.keyframe_insert("location", frame=frame)
    obj.animation_data.action.name = "Walk"
    return obj.animation_data.action


def evaluated_pose(obj, frames) -> np.ndarray:
    """Every pose bone's armature-space matrix at each of ``frames``: (F, B, 4, 4)."""
    poses = []
    for frame in frames:
        bpy.context.scene.frame_set(frame)
        poses.append([np.array(bone.matrix) for bone in obj.pose.bones])
    return np.array(poses)


def test_a_rigify_human_keys_the_bones_the_model_leaves_out_at_rest_and_says_which():
    from backend.evaluation.bench_rigs import build_metarig

    obj = build_metarig(bpy, "basic_human")
    configure(obj, prompt="the person waves")
    assert bpy.ops.animax.animate() == {"FINISHED"}
    action = obj.animation_data.action
    summary = bpy.context.window_manager.animax_state.summary
    held = {"shoulder.L", "shoulder.R", "toe.L", "toe.R"}
    assert "held at rest" in summary and all(name in summary for name in held), summary
    assert "moving as the model's biped does" in summary  # its training counterpart, whose maps the preview shows
    got = keys(action, obj)
    for frame in range(1, 10):
        bpy.context.scene.frame_set(frame)
        for name in held:  # keyed, and at rest on every frame
            assert any(path.startswith(f'pose.bones["{name}"].rotation') for path, _ in got)
            assert np.allclose(obj.pose.bones[name].matrix_basis, np.eye(4), atol=1e-5)


@pytest.mark.parametrize("family", ["biped", "quadruped", "chest"])
def test_animate_writes_a_new_action_and_keeps_the_old_one(family):
    obj = creature(family)
    walk = walk_action(obj)
    walk_keys, walk_slot = keys(walk, obj), obj.animation_data.action_slot
    walk_pose = evaluated_pose(obj, (1, 4, 9))
    modes = [bone.rotation_mode for bone in obj.pose.bones]
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end, scene.frame_current = 5, 100, 7
    scene.render.resolution_x, scene.render.engine = 321, "CYCLES"
    selected = {o.name for o in scene.objects if o.select_get()}
    active = bpy.context.view_layer.objects.active
    counts = {name: len(getattr(bpy.data, name)) for name in ("objects", "scenes", "cameras", "worlds", "meshes")}
    configure(obj, duration=9)

    assert bpy.ops.animax.animate() == {"FINISHED"}

    action = obj.animation_data.action
    assert action != walk and action.name.startswith("AnimaX the character jumps")
    deform = participating_bones(obj)  # the deform bones, or past the joint budget the body chosen from them
    got = keys(action, obj)
    rotation = {b: ROTATION[obj.pose.bones[b].rotation_mode] for b in deform}  # each bone in its own mode
    expected = {(f'pose.bones["{b}"].{path}', i) for b, (path, count) in rotation.items() for i in range(count)}
    root = next(b.name for b in obj.data.bones if b.parent is None)
    expected |= {(f'pose.bones["{root}"].location', i) for i in range(3)}
    assert set(got) == expected
    summary = bpy.context.window_manager.animax_state.summary  # the panel's line after the run
    assert summary.startswith(f"AnimaX wrote '{action.name}'") and f"{len(deform)} bones" in summary
    frames = {tuple(f) for f, _ in got.values()}
    assert len(frames) == 1  # every channel keyed on the same frames (no thinning)
    (frames,) = frames
    assert frames[0] == 5 and np.array_equal(np.diff(frames), np.ones(len(frames) - 1))
    assert 1 < len(frames) <= 9
    assert action.use_frame_range and action.frame_range[:] == (frames[0], frames[-1])
    assert (scene.frame_start, scene.frame_end) == (5, 100)  # the Action has the range, the scene keeps its own
    assert [bone.rotation_mode for bone in obj.pose.bones] == modes
    quaternion = next(b for b in deform if rotation[b][0] == "rotation_quaternion")
    quats = np.stack([got[f'pose.bones["{quaternion}"].rotation_quaternion', i][1] for i in range(4)], axis=1)
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, atol=1e-3)
    # the user's previous Action: untouched and kept in the file
    assert walk.use_fake_user and "Walk" in bpy.data.actions
    assert keys(walk, obj).keys() == walk_keys.keys()
    for key, value in walk_keys.items():
        np.testing.assert_array_equal(keys(walk, obj)[key], value)
    # the user's scene: unchanged; templates left nothing behind
    assert scene.frame_current == 7 and scene.render.resolution_x == 321 and scene.render.engine == "CYCLES"
    assert {o.name for o in scene.objects if o.select_get()} == selected
    assert bpy.context.view_layer.objects.active == active
    assert {name: len(getattr(bpy.data, name)) for name in counts} == counts
    state = bpy.context.window_manager.animax_state
    assert not state.running and state.stage == "Done" and state.error == ""
    assert [r.action for r in scene.animax.results] == [action]
    preview = bpy.data.images[scene.animax.results[0].preview]
    assert preview.source == "SEQUENCE" and preview["animax_frames"] >= len(frames) - 1
    # the previous Action plays back as before: its bones kept their modes
    obj.animation_data.action, obj.animation_data.action_slot = walk, walk_slot
    np.testing.assert_array_equal(evaluated_pose(obj, (1, 4, 9)), walk_pose)


def test_undo_restores_the_previous_state():
    obj = creature("quadruped")
    walk_action(obj)
    scene = bpy.context.scene
    scene.frame_end = 100
    configure(obj)
    bpy.ops.ed.undo_push(message="before AnimaX")
    bpy.ops.animax.animate()
    assert bpy.data.objects["quadruped"].animation_data.action.name.startswith("AnimaX")

    bpy.ops.ed.undo()  # one step: the Action and the variation list go together

    obj = bpy.data.objects["quadruped"]  # undo rebuilt the data: old references are gone
    assert obj.animation_data.action.name == "Walk"
    assert not [a for a in bpy.data.actions if a.name.startswith("AnimaX")]
    assert bpy.context.scene.frame_end == 100 and len(bpy.context.scene.animax.results) == 0


def test_variations_give_distinct_switchable_actions():
    obj = creature("biped")
    settings = configure(obj, variations=2, seed=3)
    bpy.ops.animax.animate()
    first, second = (r.action for r in settings.results)
    assert [r.seed for r in settings.results] == [3, 4]
    assert first != second and obj.animation_data.action == first
    assert len({r.preview for r in settings.results if r.preview}) == 2  # each variation its own preview
    bone = f'pose.bones["{obj.data.bones[0].name}"].rotation_quaternion'
    a = keys(first, obj)[bone, 1][1]
    bpy.ops.animax.use_variation(index=1)
    assert obj.animation_data.action == second and settings.result_index == 1
    b = keys(second, obj)[bone, 1][1]
    assert not np.allclose(a, b)  # different seeds, different motions


def test_poll_explains_why_animate_is_disabled():
    with pytest.raises(RuntimeError, match="Select an armature"):
        bpy.ops.animax.animate()
    obj = creature("chest")
    bpy.context.view_layer.objects.active = obj  # the active armature is used by default
    with pytest.raises(RuntimeError, match="Type a prompt"):
        bpy.ops.animax.animate()
    bpy.context.scene.animax.prompt = "the lid opens"
    assert bpy.ops.animax.animate.poll()


def test_rig_over_the_joint_limit_is_refused_with_the_count():
    bones = [Bone(f"b{i}", f"b{i - 1}" if i else None, (0, 0, 0.1 * i), (0, 0, 0.1 * (i + 1)))
             for i in range(MAX_JOINTS)]  # a chain: MAX_JOINTS heads plus the last tail
    obj = build_armature(Rig(bones, max_joints=None), "long")
    for pose_bone in obj.pose.bones:  # the default choice would sample the chain; a selection is kept as is
        pose_bone.select = True
    configure(obj, bones="SELECTED")
    with pytest.raises(RuntimeError, match=f"{MAX_JOINTS + 1} joints"):
        bpy.ops.animax.animate()
    assert str(MAX_JOINTS + 1) in bpy.context.window_manager.animax_state.error
    assert not bpy.data.actions


def test_unreachable_worker_is_reported_within_five_seconds(addon):
    online = bpy.context.preferences.system.use_online_access
    bpy.context.preferences.system.use_online_access = True
    addon.mode, addon.address = "REMOTE", f"tcp://127.0.0.1:{local_worker.free_loopback_port()}"
    configure(creature("chest"))
    start = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="did not answer"):
            bpy.ops.animax.animate()
    finally:
        bpy.context.preferences.system.use_online_access = online
    assert time.monotonic() - start < 5.5
    assert "check that it is running" in bpy.context.window_manager.animax_state.error


def test_remote_needs_online_access(addon):
    online = bpy.context.preferences.system.use_online_access
    bpy.context.preferences.system.use_online_access = False
    addon.mode, addon.address = "REMOTE", "tcp://127.0.0.1:5555"
    configure(creature("chest"))
    try:
        with pytest.raises(RuntimeError, match="Allow Online Access"):
            bpy.ops.animax.animate()
    finally:
        bpy.context.preferences.system.use_online_access = online


def test_a_timer_delivers_the_job_as_blenders_event_loop_runs_it():
    """The modal Animate has the job delivered by a ``bpy.app.timers`` function; headless bpy runs
    no timers, so the test calls it as Blender's event loop would, until it unregisters itself."""
    obj = creature("chest")
    configure(obj)
    controller = AnimateController(bpy.context, obj)
    controller.start()
    deliver = controller.deliver_on_timer(bpy.context.window)
    assert bpy.app.timers.is_registered(deliver)
    deadline = time.monotonic() + 120
    try:
        while (interval := deliver()) is not None:
            assert time.monotonic() < deadline
            time.sleep(interval)
    finally:
        bpy.app.timers.unregister(deliver)
    assert controller.outcome == "FINISHED", controller.message
    assert obj.animation_data.action.name.startswith("AnimaX")
    assert bpy.context.window_manager.animax_state.stage == "Done"


def run_until_denoising(obj, steps: int = 50) -> AnimateController:
    """Start Animate as the modal operator does and poll until the worker is denoising."""
    configure(obj, steps=steps)
    controller = AnimateController(bpy.context, obj)
    controller.start()
    deadline = time.monotonic() + 120
    while not bpy.context.window_manager.animax_state.stage.startswith("Denoise"):
        assert not controller.poll(), controller.message
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return controller


def finish(controller: AnimateController, timeout_s: float) -> float:
    start = time.monotonic()
    while not controller.poll():
        assert time.monotonic() - start < timeout_s
        time.sleep(0.05)
    return time.monotonic() - start


def test_cancel_mid_job_writes_nothing():
    obj = creature("quadruped")
    controller = run_until_denoising(obj)
    assert not bpy.ops.animax.animate.poll()  # one job at a time
    assert bpy.ops.animax.cancel() == {"FINISHED"}
    finish(controller, 60)  # the worker checks for a cancel once per denoising step: slow on a loaded CPU
    assert controller.outcome == "CANCELLED"
    assert not bpy.data.actions and obj.animation_data is None
    state = bpy.context.window_manager.animax_state
    assert state.stage == "Cancelled" and not state.running and state.error == ""


def test_steps_left_at_zero_take_the_workers_default():
    """The panel's default, 0, asks for the steps the worker's welcome advertises (its sampler's)."""
    controller = run_until_denoising(creature("lamp"), steps=0)
    assert "/20" in bpy.context.window_manager.animax_state.stage  # the embedded model's 20
    assert bpy.ops.animax.cancel() == {"FINISHED"}
    finish(controller, 60)
    assert controller.outcome == "CANCELLED"


class EndlessPipeline:
    """Denoises until interrupted, a step every 0.1 s: a job only a cancel ends."""

    def __call__(self, num_inference_steps, callback_on_step_end, **kwargs):
        self._interrupt, step = False, 0
        while not self._interrupt:
            time.sleep(0.1)
            callback_on_step_end(self, step, None, {})
            step = min(step + 1, num_inference_steps - 1)
        return AnimaXPipelineOutput(pose_videos=None, rgb_videos=None, interrupted=True)


def test_opening_another_file_cancels_the_job(addon):
    """Loading a file drops the timer that delivers the job: the job is cancelled as the file
    loads, the worker is told, and Animate is available in the new file."""
    worker = Standalone(EndlessPipeline(), "tcp://127.0.0.1:*")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    online = bpy.context.preferences.system.use_online_access
    bpy.context.preferences.system.use_online_access = True
    addon.mode, addon.address = "REMOTE", worker.address
    try:
        controller = run_until_denoising(creature("chest"))
        deliver = controller.deliver_on_timer(bpy.context.window)
        bpy.ops.wm.read_homefile(use_empty=True)
        assert not bpy.app.timers.is_registered(deliver)
        assert AnimateController.active is None and controller.outcome == "CANCELLED"
        assert "another file was opened" in controller.message
        configure(creature("biped"))
        assert bpy.ops.animax.animate.poll()
        deadline = time.monotonic() + 60  # the job's thread tells the worker at its next progress message
        while list(worker.job_states().values()) != ["cancelled"]:
            assert time.monotonic() < deadline, worker.job_states()
            time.sleep(0.05)
        assert not bpy.data.actions
    finally:
        bpy.context.preferences.system.use_online_access = online
        worker.stop()
        thread.join(30)


def test_worker_killed_mid_job_is_reported():  # last: it kills the file's worker
    obj = creature("quadruped")
    controller = run_until_denoising(obj)
    local_worker.current().process.kill()
    assert finish(controller, 10) < 7  # heartbeats stop; the client gives up after 5 s
    assert controller.outcome == "FAILED"
    assert "local AnimaX worker stopped" in controller.message and "log" in controller.message
    assert not bpy.data.actions
