"""write_action round trip: a procedural clip, FK on the world-space snapshot, Blender's pose."""

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from bpy_extras.anim_utils import action_get_channelbag_for_slot  # noqa: E402

from animax_addon.action import write_action  # noqa: E402
from animax_addon.snapshot import rig_from_armature  # noqa: E402
from backend.data.blender_build import build_creature  # noqa: E402
from backend.data.motions import sample_clip  # noqa: E402
from backend.reconstruction.kinematics import forward_kinematics  # noqa: E402

SCALE = 2.0


@pytest.fixture
def scene():
    """A transformed fox that walks, its world snapshot, and the motion in snapshot bone order."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    clip = sample_clip(np.random.default_rng(11), frames=17, families=["quadruped"], motions=["walk"])
    obj = build_creature(clip.creature, "Fox")
    obj.location = (1.0, -2.0, 0.5)
    obj.rotation_euler = (0.2, 0.1, -0.8)
    obj.scale = (SCALE,) * 3
    bpy.context.view_layer.update()
    rig = rig_from_armature(obj)
    source = clip.creature.rig
    order = [source.bone_index[n] for n in rig.bone_names]
    root = clip.creature.roles["root"][0]
    rotations = clip.rotations[:, order]
    # the worker's root location is measured in the world-space snapshot: scaled with the object
    root_translation = clip.locations[:, source.bone_index[root]] * SCALE
    assert np.abs(root_translation).max() > 1e-3  # the walk moves the root: the test checks it
    return obj, rig, rotations, root, root_translation


def _blender_joints(obj, rig):
    heads = [obj.matrix_world @ obj.pose.bones[n].head for n in rig.bone_names]
    tails = [obj.matrix_world @ obj.pose.bones[rig.bone_names[b]].tail for b in np.flatnonzero(rig.leaves)]
    return np.array(heads + tails)


def _curves(obj):
    animation = obj.animation_data
    channelbag = action_get_channelbag_for_slot(animation.action, animation.action_slot)
    return {(c.data_path, c.array_index): c for c in channelbag.fcurves}


def test_blender_plays_back_the_forward_kinematics(scene):
    obj, rig, rotations, root, root_translation = scene
    locations = np.zeros(rotations.shape[:2] + (3,))
    locations[:, rig.bone_index[root]] = root_translation
    _, truth = forward_kinematics(rig, rotations, locations)
    assert np.abs(truth - rig.joints_rest).max() > 0.05 * rig.bounding_sphere()[1]  # it does move
    frame_range = (bpy.context.scene.frame_start, bpy.context.scene.frame_end)

    action = write_action(obj, "the fox walks", rig.bone_names, rotations, root, root_translation, frame_start=3)
    assert obj.animation_data.action == action and action.name == "the fox walks"
    curves = _curves(obj)
    expected = {(f'pose.bones["{n}"].rotation_quaternion', i) for n in rig.bone_names for i in range(4)}
    assert set(curves) == expected | {(f'pose.bones["{root}"].location', i) for i in range(3)}
    assert all(len(c.keyframe_points) == 17 and c.range()[:] == pytest.approx((3, 19)) for c in curves.values())
    assert {k.interpolation for c in curves.values() for k in c.keyframe_points} == {"LINEAR"}
    assert {obj.pose.bones[n].rotation_mode for n in rig.bone_names} == {"QUATERNION"}
    assert (bpy.context.scene.frame_start, bpy.context.scene.frame_end) == frame_range  # left to the UI

    size = rig.bounding_sphere()[1]
    for t in (0, 5, 11, 16):
        bpy.context.scene.frame_set(3 + t)
        np.testing.assert_allclose(_blender_joints(obj, rig), truth[t], atol=1e-4 * size)


def test_previous_action_is_kept_and_names_never_collide(scene):
    obj, rig, rotations, root, root_translation = scene
    obj.keyframe_insert("location", frame=1)
    previous = obj.animation_data.action
    assert not previous.use_fake_user
    first = write_action(obj, "wave", rig.bone_names, rotations, root, root_translation)
    second = write_action(obj, "wave", rig.bone_names, rotations, root, root_translation)
    assert previous.use_fake_user and first.use_fake_user and not second.use_fake_user
    assert (first.name, second.name) == ("wave", "wave.001")
    assert obj.animation_data.action == second
    assert set(bpy.data.actions) == {previous, first, second}
    assert len(_curves(obj)) == 4 * rig.num_bones + 3


def test_thinning_drops_keys_within_the_tolerance(scene):
    obj, rig, rotations, root, root_translation = scene
    tolerance = 2e-3
    write_action(obj, "thin", rig.bone_names, rotations, root, root_translation, thin_tolerance=tolerance)
    curves = _curves(obj)
    kept = sum(len(c.keyframe_points) for c in curves.values())
    assert kept < 0.7 * 17 * len(curves)
    for b, name in enumerate(rig.bone_names):
        quats = [curves[(f'pose.bones["{name}"].rotation_quaternion', i)] for i in range(4)]
        assert len({len(c.keyframe_points) for c in quats}) == 1  # a bone's components keep whole keys
        evaluated = np.array([[c.evaluate(1 + t) for c in quats] for t in range(17)])
        assert np.abs(evaluated - rotations[:, b]).max() <= tolerance + 1e-6
    location = np.array([[curves[(f'pose.bones["{root}"].location', i)].evaluate(1 + t) for i in range(3)]
                         for t in range(17)])
    assert np.abs(location - root_translation / SCALE).max() <= tolerance + 1e-6


def test_mismatched_shapes_and_unknown_bones_are_refused(scene):
    obj, rig, rotations, root, root_translation = scene
    with pytest.raises(ValueError, match="do not match"):
        write_action(obj, "x", rig.bone_names[:-1], rotations, root, root_translation)
    with pytest.raises(ValueError, match=r"has no bones \['ghost'\]"):
        write_action(obj, "x", rig.bone_names, rotations, "ghost", root_translation)
    assert obj.animation_data is None and not bpy.data.actions
