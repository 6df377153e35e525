"""write_action round trip: a procedural clip, FK on the world-space snapshot, Blender's pose.

Bones are keyed in their own rotation modes: Blender's evaluated pose is compared with the
quaternions given, and with what the user's earlier Action played before.
"""

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from bpy_extras.anim_utils import action_get_channelbag_for_slot  # noqa: E402
from mathutils import Euler, Quaternion  # noqa: E402

from animax_addon.action import EULER_ORDERS, euler_keys, write_action  # noqa: E402
from animax_addon.core.rig import Bone, Rig  # noqa: E402
from animax_addon.snapshot import rig_from_armature  # noqa: E402
from backend.data.blender_build import build_creature  # noqa: E402
from blender_rigs import build_armature  # noqa: E402
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


PROPERTY = {"QUATERNION": ("rotation_quaternion", 4), "AXIS_ANGLE": ("rotation_axis_angle", 4)}
PROPERTY.update({order: ("rotation_euler", 3) for order in EULER_ORDERS})


@pytest.mark.parametrize("mode", ["QUATERNION", "ZYX", "AXIS_ANGLE"])
def test_blender_plays_back_the_forward_kinematics(scene, mode):
    obj, rig, rotations, root, root_translation = scene
    for bone in obj.pose.bones:
        bone.rotation_mode = mode
    locations = np.zeros(rotations.shape[:2] + (3,))
    locations[:, rig.bone_index[root]] = root_translation
    _, truth = forward_kinematics(rig, rotations, locations)
    assert np.abs(truth - rig.joints_rest).max() > 0.05 * rig.bounding_sphere()[1]  # it does move
    frame_range = (bpy.context.scene.frame_start, bpy.context.scene.frame_end)

    action = write_action(obj, "the fox walks", rig.bone_names, rotations, root, root_translation, frame_start=3)
    assert obj.animation_data.action == action and action.name == "the fox walks"
    curves = _curves(obj)
    prop, count = PROPERTY[mode]
    expected = {(f'pose.bones["{n}"].{prop}', i) for n in rig.bone_names for i in range(count)}
    assert set(curves) == expected | {(f'pose.bones["{root}"].location', i) for i in range(3)}
    assert all(len(c.keyframe_points) == 17 and c.range()[:] == pytest.approx((3, 19)) for c in curves.values())
    assert {k.interpolation for c in curves.values() for k in c.keyframe_points} == {"LINEAR"}
    assert {obj.pose.bones[n].rotation_mode for n in rig.bone_names} == {mode}
    assert action.use_frame_range and action.frame_range[:] == pytest.approx((3, 19))
    assert (bpy.context.scene.frame_start, bpy.context.scene.frame_end) == frame_range  # left to the user

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


MODES = ["QUATERNION", "XYZ", "ZXY", "XZY", "AXIS_ANGLE"]  # two even Euler orders, one odd


def _spin(axes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions turning by ``angles`` (...) about unit ``axes`` (..., 3), broadcast."""
    half = np.asarray(angles)[..., None] / 2
    vector = np.sin(half) * axes
    return np.concatenate([np.broadcast_to(np.cos(half), vector.shape[:-1] + (1,)), vector], axis=-1)


def _multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    (aw, ax, ay, az), (bw, bx, by, bz) = np.moveaxis(a, -1, 0), np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], axis=-1)


@pytest.fixture
def chain():
    """A five-bone chain, one bone per rotation mode, and a motion in which every bone turns by
    400° about its Euler order's middle axis (the hard case: past ±90° there) while it wobbles."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bones = [Bone(f"b{i}", f"b{i - 1}" if i else None, (0.1 * i, 0, i), (0.1 * i, 0.2, i + 1), roll=0.3 * i)
             for i in range(len(MODES))]
    obj = build_armature(Rig(bones), "Chain")
    for bone, mode in zip(obj.pose.bones, MODES):
        bone.rotation_mode = mode
    # Euler order "IJK" is K @ J @ I: a spin about J after a wobble about I has J's angle spin
    first, middle = (np.eye(3)[["XYZ".index((m if m in EULER_ORDERS else "XYZ")[i]) for m in MODES]] for i in (0, 1))
    t = np.linspace(0, 1, 41)[:, None]
    rotations = _multiply(_spin(middle, np.radians(400) * t), _spin(first, 0.6 * np.sin(7 * t)))
    return obj, [b.name for b in bones], rotations


def _pose(obj, frame: int) -> np.ndarray:
    bpy.context.scene.frame_set(frame)
    return np.array([np.array(bone.matrix) for bone in obj.pose.bones])


def test_each_bone_is_keyed_in_its_own_mode_and_poses_as_the_quaternions(chain):
    obj, names, rotations = chain
    write_action(obj, "spin", names, rotations, names[0], np.zeros((len(rotations), 3)), frame_start=1)

    assert [bone.rotation_mode for bone in obj.pose.bones] == MODES
    curves = _curves(obj)
    for name, mode in zip(names, MODES):
        prop, count = PROPERTY[mode]
        assert {i for path, i in curves if path == f'pose.bones["{name}"].{prop}'} == set(range(count))
    # the same pose, set directly as quaternions on a copy of the armature
    reference = obj.copy()
    reference.animation_data_clear()
    bpy.context.scene.collection.objects.link(reference)
    for frame in (1, 8, 14, 21, 30, 41):
        for bone, q in zip(reference.pose.bones, rotations[frame - 1]):
            bone.rotation_mode, bone.rotation_quaternion = "QUATERNION", q
        np.testing.assert_allclose(_pose(obj, frame), _pose(reference, frame), atol=1e-5)
    for name, mode in zip(names, MODES):  # continuous: the motion turns ~10° a frame, and so do the keys
        prop, count = PROPERTY[mode]
        values = np.array([[k.co[1] for k in curves[f'pose.bones["{name}"].{prop}', i].keyframe_points]
                           for i in range(count)])
        channels = values if mode in EULER_ORDERS else values[:1]  # angles (not quaternion, axis)
        assert np.abs(np.diff(channels, axis=1)).max() < np.radians(30), mode
        if mode in EULER_ORDERS:  # the middle axis's angle really went past a half turn
            assert np.ptp(values["XYZ".index(mode[1])]) > np.pi


def test_euler_keys_follow_blenders_compatible_euler():
    """As Quaternion.to_euler(order, previous frame's Euler) chains them, and the same rotations."""
    rng = np.random.default_rng(5)
    axes = rng.normal(size=(60, 3))
    steps = _spin(axes / np.linalg.norm(axes, axis=1, keepdims=True), rng.uniform(0.1, 0.6, 60))
    rotations = np.empty((60, 4))
    rotations[0] = steps[0]
    for t in range(1, 60):  # a random walk over many turns
        rotations[t] = _multiply(steps[t], rotations[t - 1])
    angles = euler_keys(np.repeat(rotations[:, None], len(EULER_ORDERS), axis=1), list(EULER_ORDERS))
    for b, order in enumerate(EULER_ORDERS):
        compatible = Euler((0, 0, 0), order)
        for t, q in enumerate(rotations):
            compatible = Quaternion(q).to_euler(order, compatible)
            np.testing.assert_allclose(angles[t, b], compatible[:], atol=1e-4)
            np.testing.assert_allclose(np.array(Euler(angles[t, b], order).to_matrix()),
                                       np.array(Quaternion(q).to_matrix()), atol=1e-5)


def test_thinning_works_in_every_rotation_mode(chain):
    obj, names, rotations = chain
    tolerance = 1e-2
    write_action(obj, "dense", names, rotations, names[0], np.zeros((len(rotations), 3)))
    dense_curves = _curves(obj)
    write_action(obj, "thin", names, rotations, names[0], np.zeros((len(rotations), 3)), thin_tolerance=tolerance)
    curves = _curves(obj)
    for name, mode in zip(names, MODES):
        prop, count = PROPERTY[mode]
        paths = [(f'pose.bones["{name}"].{prop}', i) for i in range(count)]
        assert len({len(curves[p].keyframe_points) for p in paths}) == 1  # whole keys per bone
        assert len(curves[paths[0]].keyframe_points) < 0.7 * len(rotations), mode
        for path in paths:
            keyed = np.array([k.co[1] for k in dense_curves[path].keyframe_points])
            thinned = np.array([curves[path].evaluate(1 + t) for t in range(len(rotations))])
            assert np.abs(thinned - keyed).max() <= tolerance + 1e-5, (mode, path)


def test_an_earlier_euler_action_plays_back_as_before(chain):
    """The issue's regression: forcing quaternion mode made the user's Euler keys do nothing."""
    obj, names, rotations = chain
    rng = np.random.default_rng(2)
    for frame in (1, 10, 20):  # the user's Action: keys in each bone's own mode
        for bone in obj.pose.bones:
            bone.rotation_euler = rng.uniform(-1, 1, 3)
            bone.rotation_quaternion = Quaternion(rng.normal(size=4)).normalized()
            bone.rotation_axis_angle = (rng.uniform(-2, 2), *rng.normal(size=3))
            bone.keyframe_insert(PROPERTY[bone.rotation_mode][0], frame=frame)
    walk, walk_slot = obj.animation_data.action, obj.animation_data.action_slot
    frames = (1, 5, 10, 17, 20)
    before = [_pose(obj, f) for f in frames]
    assert np.abs(before[0] - before[2]).max() > 0.1  # the earlier Action moves every bone

    write_action(obj, "spin", names, rotations, names[0], np.zeros((len(rotations), 3)))
    assert obj.animation_data.action != walk
    obj.animation_data.action, obj.animation_data.action_slot = walk, walk_slot

    for frame, pose in zip(frames, before):
        np.testing.assert_array_equal(_pose(obj, frame), pose)
