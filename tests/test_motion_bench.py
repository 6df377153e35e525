"""``animax motion-bench``'s Blender side: its rigs, reading an Action back as Blender plays it, its GIFs."""

import argparse
import importlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageSequence

bpy = pytest.importorskip("bpy")

from animax_addon.action import write_action  # noqa: E402
from animax_addon.snapshot import rig_from_armature  # noqa: E402
from backend.data.motions import FPS, MOTIONS  # noqa: E402
from backend.evaluation import motion_bench  # noqa: E402
from backend.evaluation.bench_rigs import bench_rigs, build_metarig, gltf_round_trip  # noqa: E402
from backend.reconstruction.kinematics import forward_kinematics, resample  # noqa: E402


def _skinned(obj):
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH" and o.parent == obj]
    return meshes and any(m.type == "ARMATURE" and m.object == obj for m in meshes[0].modifiers)


def bench_rig_in_scene(name):
    """The benchmark rig ``name`` built in an empty scene at the benchmark's frame rate."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = int(motion_bench.SCENE_FPS)
    bench = bench_rigs()[name]
    return bench, bench.build(bpy)


def test_truth_keyed_and_read_back_is_the_procedural_motion():
    bench, obj = bench_rig_in_scene("procedural:quadruped")
    rig = rig_from_armature(obj)
    action = motion_bench.key_truth(bpy, obj, bench, "walk", 17, write_action)
    rotations, joints = motion_bench.read_motion(bpy, obj, rig, motion_bench.action_frames(action))
    # the truth as the bpy-free maths has it, at the scene's frame rate
    source = bench.creature.rig
    truth_rot, truth_loc = resample(*MOTIONS["walk"](bench.creature, np.random.default_rng(0), 17, FPS),
                                    FPS, motion_bench.SCENE_FPS)
    _, truth_joints = forward_kinematics(source, truth_rot, truth_loc)
    order = [source.joint_names.index(n) for n in rig.joint_names]
    assert joints.shape == (25, rig.num_joints, 3)
    assert np.abs(joints - truth_joints[:, order]).max() < 1e-4
    assert np.abs(joints - joints[0]).max() > 0.05  # the legs move: the comparison means something
    bones = [source.bone_index[n] for n in rig.bone_names]
    dots = np.abs(np.sum(rotations * truth_rot[:, bones], axis=-1))
    assert dots.min() > 1 - 1e-6


def test_a_rigify_rigs_truth_is_its_counterparts_motion_carried_onto_its_body():
    from animax_addon.core.cameras import make_camera_rig
    from backend.evaluation.counterpart_truth import counterpart_truth
    from backend.reconstruction.kinematics import resample_positions
    from backend.worker.model_body import model_body

    bench, obj = bench_rig_in_scene("rigify:basic_human")
    rig = rig_from_armature(obj)
    cameras = make_camera_rig(*rig.bounding_sphere(), 64)
    body = model_body(rig, cameras)
    action = motion_bench.key_counterpart_truth(bpy, obj, rig, body, cameras.rotation, "jump", 17, write_action)
    _, joints = motion_bench.read_motion(bpy, obj, rig, motion_bench.action_frames(action))
    assert joints.shape == (25, rig.num_joints, 3)  # one second at the scene's 24 fps
    truth = counterpart_truth(body.rig, body.creature, body.counterparts, "jump", 0, 17, cameras.rotation)
    shared = [name for name in body.rig.joint_names if name in rig.joint_names]
    assert len(shared) > 15
    keyed = resample_positions(joints, motion_bench.SCENE_FPS, FPS)[:17][:, [rig.joint_names.index(n) for n in shared]]
    wanted = truth[:, [body.rig.joint_names.index(n) for n in shared]]
    radius = rig.bounding_sphere()[1]
    assert np.linalg.norm(keyed - wanted, axis=-1).max() < 0.03 * radius
    lift = (joints[:, :, 2].min(axis=1).max() - joints[0, :, 2].min()) / np.ptp(joints[0, :, 2])
    assert lift > 0.08  # the counterpart's jump: the whole body leaves the ground


@pytest.mark.parametrize("which", ["basic_human", "basic_quadruped"])
def test_metarig_and_its_gltf_round_trip_are_skinned_rigs_the_add_on_takes(which):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    metarig = build_metarig(bpy, which)
    assert _skinned(metarig)
    bones = rig_from_armature(metarig).num_bones
    assert bones >= 15  # a body: spine, legs, head, (arms)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    imported = gltf_round_trip(bpy, which)
    assert imported.name != which or imported.data.name != which  # the importer's own armature
    assert _skinned(imported)
    # glTF keeps joints, not tails: the importer aims a foot at its heel or its toe, so the side
    # leaves the body choice leaves out may differ by a pair
    assert bones - 2 <= rig_from_armature(imported).num_bones <= bones


def test_unknown_rig_is_refused_with_the_names():
    with pytest.raises(motion_bench.BenchError, match="no rig or group 'dragon'.*procedural:biped"):
        motion_bench.select_rigs("procedural,dragon")
    chosen = motion_bench.select_rigs("rigify:wolf,procedural")
    assert chosen[0].name == "rigify:wolf" and {r.group for r in chosen[1:]} == {"procedural"}


def test_gif_shows_every_scene_frame_of_the_actions_side_by_side(tmp_path, monkeypatch):
    # the renderer reaches the add-on as the installed extension; here it is the source tree
    monkeypatch.setattr(motion_bench, "_addon", lambda name: importlib.import_module(f"animax_addon.{name}"))
    bench, obj = bench_rig_in_scene("procedural:quadruped")
    walk = motion_bench.key_truth(bpy, obj, bench, "walk", 17, write_action)
    jump = motion_bench.key_truth(bpy, obj, bench, "jump", 17, write_action)
    motion_bench._setup_render(bpy, obj)
    path = motion_bench.action_gif(bpy, obj, [("truth: walk", walk), ("jump", jump)], tmp_path / "gifs" / "q.gif",
                                   tmp_path)
    with Image.open(path) as gif:
        assert gif.is_animated and gif.n_frames == len(motion_bench.action_frames(jump)) == 25
        assert gif.size == (motion_bench.GIF_WIDTH, motion_bench.GIF_WIDTH // 2)
        assert gif.info["loop"] == 0 and gif.info["duration"] == 40  # 24 fps to the format's 1/100 s
        frames = [np.asarray(f.convert("RGB"), dtype=int) for f in ImageSequence.Iterator(gif)]
    half = motion_bench.GIF_WIDTH // 2
    for panel in (slice(None, half), slice(half, None)):  # the walk moves on the left, the jump on the right
        changed = np.abs(frames[12][:, panel] - frames[0][:, panel]).max(axis=-1) > 40
        assert changed.mean() > 0.005


def test_gifs_are_refused_with_requests_and_a_size_without_them():
    args = argparse.Namespace(requests=True, gifs=True, videos=None, size=None)
    with pytest.raises(motion_bench.BenchError, match="--requests keys no Actions"):
        motion_bench.run(args)
    args = argparse.Namespace(requests=False, gifs=False, videos=None, size=96)
    with pytest.raises(motion_bench.BenchError, match="--size sets the templates that --requests writes"):
        motion_bench.run(args)


def test_replayed_videos_are_read_in_the_colours_of_the_model_that_drew_them(tmp_path, monkeypatch):
    """Saved videos carry the training families of the model that drew them: a model trained on
    laptops draws a laptop in its own colours, which another family's would misread."""
    from animax_addon.core.cameras import make_camera_rig
    from animax_addon.core.pose_maps import render_pose_maps
    from backend.data.rig_world import FAMILIES
    from backend.model.presets import TINY
    from backend.worker.model_body import model_body

    monkeypatch.setattr(motion_bench, "_addon", lambda name: importlib.import_module(f"animax_addon.{name}"))
    bench, obj = bench_rig_in_scene("procedural:laptop")
    rig = rig_from_armature(obj)
    truth = motion_bench.key_truth(bpy, obj, bench, "open", 17, write_action)
    _, truth_joints = motion_bench.read_motion(bpy, obj, rig, motion_bench.action_frames(truth))
    frame = motion_bench._addon("snapshot").upright_frame(obj)
    sphere = motion_bench._addon("templates").framing_sphere(obj, rig, frame.rotation)
    cameras = make_camera_rig(*sphere, 64, rotation=frame.rotation)
    every = tuple(FAMILIES)
    body = model_body(rig, cameras, replace(TINY, families=every))
    source = bench.creature.rig
    _, joints = forward_kinematics(source, *MOTIONS["open"](bench.creature, np.random.default_rng(0), 17, FPS))
    joints = joints[:, [source.joint_names.index(name) for name in body.rig.joint_names]]
    pose = render_pose_maps(cameras, joints, body.rig.joint_parents, body.colours)
    errors = {}
    for name, extra in (("every", dict(families=np.array(every))), ("unsaid", {})):
        path = tmp_path / name / "open_seed0.npz"
        path.parent.mkdir()
        np.savez_compressed(path, pose=pose, **extra)
        video = motion_bench.saved_video(obj, rig, sphere, path, frame.rotation)
        action = motion_bench.replay(bpy, obj, rig, video, "the laptop opens")
        _, replayed = motion_bench.read_motion(bpy, obj, rig, motion_bench.action_frames(action))
        errors[name] = np.linalg.norm(replayed - truth_joints, axis=-1).mean() / sphere[1]
    assert errors["every"] < 0.05 < errors["unsaid"]  # unsaid: read as the training families drew it


def test_the_creature_drawn_for_a_rig_is_read_from_the_saved_video_before_carrying(tmp_path):
    """``drawn_motion`` reconstructs the cast member a cast model drew for a Rigify rig, not the rig:
    its true walk drawn cleanly comes back as that walk; a model that draws rigs themselves gives
    nothing to read."""
    from animax_addon.core.cameras import make_camera_rig
    from animax_addon.core.pose_maps import render_pose_maps
    from backend.model.presets import TINY
    from backend.worker.model_body import model_body

    _, obj = bench_rig_in_scene("rigify:basic_quadruped")
    rig = rig_from_armature(obj)
    sphere = rig.bounding_sphere()
    cast_model = replace(TINY, retargets=True, cast=True)
    body = model_body(rig, make_camera_rig(*sphere, 64), cast_model)
    creature = body.creature.rig
    _, truth = forward_kinematics(creature, *MOTIONS["walk"](body.creature, np.random.default_rng(0), 17, FPS))
    pose = render_pose_maps(body.cameras, truth, creature.joint_parents, body.colours)
    for name, preset in (("cast", cast_model), ("itself", replace(TINY, retargets=False))):
        np.savez_compressed(tmp_path / f"{name}.npz", pose=pose, **motion_bench.video_fields(preset))
    drawn, joints = motion_bench.drawn_motion(motion_bench.saved_video(obj, rig, sphere, tmp_path / "cast.npz"))
    assert drawn.joint_names == creature.joint_names and joints.shape == truth.shape
    error = np.linalg.norm(joints - truth, axis=-1).mean() / creature.bounding_sphere()[1]
    assert error < 0.03  # of the creature's radius
    still = np.repeat(creature.joints_rest[None], 17, axis=0)  # the walk is followed, not the rest held
    assert error < 0.5 * np.linalg.norm(still - truth, axis=-1).mean() / creature.bounding_sphere()[1]
    assert motion_bench.drawn_motion(motion_bench.saved_video(obj, rig, sphere, tmp_path / "itself.npz")) is None
