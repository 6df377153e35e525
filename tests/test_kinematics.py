"""Forward/inverse kinematics round trips on random trees, and frame-rate mapping."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from backend.reconstruction.kinematics import forward_kinematics, inverse_kinematics, resample
from synthetic import SHAPES, random_motion, random_rig


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES), n_bones=st.integers(1, 31))
def test_ik_then_fk_gives_back_the_joints(seed, shape, n_bones):
    rng = np.random.default_rng(seed)
    rig = random_rig(rng, n_bones, shape)
    rotations, locations, joints = random_motion(rng, rig, frames=3, amplitude=1.5)
    ik_rot, ik_loc = inverse_kinematics(rig, joints)
    ik_pose, again = forward_kinematics(rig, ik_rot, ik_loc)
    # 1e-4, not machine precision: within 0.3 degrees of -Y Blender's rest matrices are
    # non-orthogonal by up to ~5e-5 (a series expansion), and a parent's free twist changes how
    # that distortion lands on a child
    np.testing.assert_allclose(again, joints, atol=1e-4)
    np.testing.assert_allclose(ik_loc, locations, atol=1e-9)
    # a bone whose targets span a plane has one right orientation: the one that made the motion
    # (its local rotation may still differ, by the free twist of a single-child parent)
    true_pose, _ = forward_kinematics(rig, rotations, locations)
    targets = rig.bone_targets()
    for bone in range(rig.num_bones):
        rest = rig.joints_rest[targets[bone]] - rig.heads[bone]
        directions = rest / np.linalg.norm(rest, axis=1, keepdims=True)
        if len(rest) >= 2 and np.linalg.svd(directions, compute_uv=False)[1] > 0.1:  # well-posed
            np.testing.assert_allclose(ik_pose[:, bone], true_pose[:, bone], atol=1e-4)


def test_single_child_bones_turn_without_twist():
    rng = np.random.default_rng(5)
    rig = random_rig(rng, 6, "chain")
    _, _, joints = random_motion(rng, rig, frames=2)
    rotations, _ = inverse_kinematics(rig, joints)
    for bone in range(1, rig.num_bones):  # in a chain every bone has exactly one target
        target = rig.bone_targets()[bone]
        rest_dir = rig.rest_matrices[bone, :3, :3].T @ (rig.joints_rest[target[0]] - rig.heads[bone])
        axis = Rotation.from_quat(rotations[:, bone], scalar_first=True).as_rotvec()
        # the shortest arc turns about an axis perpendicular to the bone's own direction
        np.testing.assert_allclose(axis @ rest_dir, 0, atol=1e-9)


def test_quaternions_stay_in_one_hemisphere_over_time():
    rng = np.random.default_rng(6)
    rig = random_rig(rng, 8, "tree")
    t = np.linspace(0, 2 * np.pi, 40)
    # a full turn about a fixed axis crosses the hemisphere boundary of q and -q
    spin = Rotation.from_rotvec(np.outer(t, [0, 0, 1])).as_quat(scalar_first=True)
    rotations = np.tile(np.array([1.0, 0, 0, 0]), (40, rig.num_bones, 1))
    rotations[:, 0] = spin
    _, joints = forward_kinematics(rig, rotations)
    ik_rot, _ = inverse_kinematics(rig, joints)
    assert (np.sum(ik_rot[1:] * ik_rot[:-1], axis=-1) > 0).all()
    assert ik_rot[0, :, 0].min() >= 0


def test_resample_keeps_duration_and_interpolates():
    angles = np.linspace(0, 1.6, 17)  # 1 s at 16 fps, turning steadily about X
    rot = Rotation.from_rotvec(np.outer(angles, [1, 0, 0])).as_quat(scalar_first=True)[:, None]
    loc = np.stack([angles, 2 * angles, 0 * angles], axis=1)[:, None]
    new_rot, new_loc = resample(rot, loc, 16, 24)
    assert new_rot.shape == (25, 1, 4) and new_loc.shape == (25, 1, 3)
    expected = np.linspace(0, 1.6, 25)
    np.testing.assert_allclose(Rotation.from_quat(new_rot[:, 0], scalar_first=True).as_rotvec()[:, 0], expected, atol=1e-9)
    np.testing.assert_allclose(new_loc[:, 0, 1], 2 * expected, atol=1e-12)
    same_rot, same_loc = resample(rot, loc, 16, 16)
    np.testing.assert_allclose(same_rot, rot, atol=1e-12)
    np.testing.assert_allclose(same_loc, loc)
    assert resample(rot, loc, 16, 30)[0].shape[0] == 31  # 16 intervals of 1/16 s = 30 of 1/30 s
    with pytest.raises(ValueError, match="positive"):
        resample(rot, loc, 16, 0)


def test_resample_follows_a_smooth_motion_between_the_source_frames():
    # a swing of 60 degrees and a bob, one period a second: piecewise-linear resampling at 24 fps
    # would miss the motion by up to 1.2 degrees between the 16 fps frames and jolt at each of them
    def swing(t):
        return np.radians(60) * np.sin(2 * np.pi * t)

    source, target = np.arange(17) / 16, np.arange(25) / 24
    rot = Rotation.from_rotvec(np.outer(swing(source), [0, 0, 1])).as_quat(scalar_first=True)[:, None]
    loc = np.stack([0 * source, 0 * source, 0.3 * np.sin(2 * np.pi * source)], axis=1)[:, None]
    new_rot, new_loc = resample(rot, loc, 16, 24)
    angle = Rotation.from_quat(new_rot[:, 0], scalar_first=True).as_rotvec()[:, 2]
    assert np.degrees(np.abs(angle - swing(target))).max() < 0.3
    assert np.abs(new_loc[:, 0, 2] - 0.3 * np.sin(2 * np.pi * target)).max() < 0.3 * 0.01
