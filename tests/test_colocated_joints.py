"""Rigs whose child bones start at their parent's head: a body with eight tentacles from one point.

Such a joint gives its parent bone no direction; reconstruction must still give every bone a
finite rotation and reproduce the motion (it crashed on zero-norm quaternions).
"""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import render_pose_maps
from animax_addon.core.rig import Rig
from backend.reconstruction.kinematics import forward_kinematics, inverse_kinematics
from backend.reconstruction.reconstruct import reconstruct
from synthetic import random_motion


def octopus(segments: int = 2, stacked: bool = False, second_root: bool = False) -> Rig:
    """A body bone pointing up and eight tentacle chains that all start at the body's head.

    ``stacked``: each tentacle's second segment starts at the first one's head too (a zero-length
    offset inside a chain). ``second_root``: an eye bone with its own lid, not parented to the body.
    """
    centre = np.array([0.0, 0.0, 0.5])
    bones = [dict(name="body", parent=None, head=list(centre), tail=[0.0, 0.0, 1.2])]
    for k in range(8):
        angle = 2 * np.pi * k / 8
        step = 0.4 * np.array([np.cos(angle), np.sin(angle), -0.3])
        parent, head = "body", centre
        for s in range(segments):
            name = f"tentacle{k}.{s}"
            bones.append(dict(name=name, parent=parent, head=list(head), tail=list(head + step)))
            parent = name
            if not (stacked and s == 0):
                head = head + step
    if second_root:
        bones.append(dict(name="eye", parent=None, head=[0.3, -0.3, 1.0], tail=[0.3, -0.5, 1.0]))
        bones.append(dict(name="lid", parent="eye", head=[0.3, -0.3, 1.0], tail=[0.3, -0.3, 1.2]))
    return Rig.from_dict({"bones": bones})


RIGS = {
    "tentacles from the body's head": dict(),
    "segments stacked on one head": dict(stacked=True),
    "two roots, three segments": dict(segments=3, second_root=True),
}


@pytest.mark.parametrize("layout", sorted(RIGS))
def test_inverse_kinematics_gives_finite_rotations_that_pose_the_joints(layout):
    rig = octopus(**RIGS[layout])
    rotations, locations, joints = random_motion(np.random.default_rng(1), rig, frames=4, amplitude=1.5)
    ik_rot, ik_loc = inverse_kinematics(rig, joints)
    assert np.isfinite(ik_rot).all()
    np.testing.assert_allclose(np.linalg.norm(ik_rot, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(forward_kinematics(rig, ik_rot, ik_loc)[1], joints, atol=1e-9)
    np.testing.assert_allclose(ik_loc, locations, atol=1e-9)


def test_a_body_turn_lands_on_the_body_bone():
    """The body's own targets say nothing about its turn; its tentacles do, and they are at rest."""
    rig = octopus()
    turn = Rotation.from_rotvec(np.outer(np.linspace(0, 1.2, 5), [0.3, 0.5, 0.8])).as_quat(scalar_first=True)
    rotations = np.tile([1.0, 0.0, 0.0, 0.0], (5, rig.num_bones, 1))
    rotations[:, rig.bone_index["body"]] = turn
    _, joints = forward_kinematics(rig, rotations)
    ik_rot, _ = inverse_kinematics(rig, joints)
    np.testing.assert_allclose(ik_rot, rotations, atol=1e-9)


@pytest.mark.parametrize("layout", sorted(RIGS))
def test_reconstruction_from_true_pose_maps(layout):
    rig = octopus(**RIGS[layout])
    _, _, truth = random_motion(np.random.default_rng(2), rig, frames=3)
    centre, radius = rig.bounding_sphere()
    cameras = make_camera_rig(centre, radius, 320)
    result = reconstruct(rig, cameras, render_pose_maps(cameras, truth, rig.joint_parents))
    assert np.isfinite(result.rotations).all() and np.isfinite(result.joints).all()
    error = np.linalg.norm(result.joints - truth, axis=-1) / radius
    # the round-trip tests' bound on clean maps (test_round_trip.py)
    assert error.mean() <= 0.01, f"MPJPE {100 * error.mean():.2f}% of the rig radius"
    # joints that start at one point stay at one point
    for joint, parent in enumerate(rig.joint_parents):
        if parent >= 0 and np.allclose(rig.joints_rest[joint], rig.joints_rest[parent]):
            gap = np.linalg.norm(result.triangulated[:, joint] - result.triangulated[:, parent], axis=-1)
            assert gap.max() / radius <= 1e-3
