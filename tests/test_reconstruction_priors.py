"""What the reconstruction does with generated pose maps' doubt: the rest prior and the low-pass."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animax_addon.core.rig import Rig
from backend.evaluation.motion_metrics import flip_share, rotation_steps_deg
from backend.reconstruction.kinematics import forward_kinematics, inverse_kinematics, smooth_rotations
from synthetic import random_motion, random_rig


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(2 * np.arccos(np.abs(np.sum(a * b, axis=-1)).clip(0, 1)))


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_fully_seen_joints_are_reproduced_whatever_the_prior(shape):
    rng = np.random.default_rng(3)
    rig = random_rig(rng, 8, shape)
    _, _, joints = random_motion(rng, rig, 6)
    solved, solved_loc = inverse_kinematics(rig, joints, np.ones(joints.shape[:2]), rest_prior=4.0)
    _, again = forward_kinematics(rig, solved, solved_loc)
    assert np.abs(again - joints).max() < 1e-3 * np.ptp(rig.joints_rest)


def test_unseen_joints_keep_their_bone_at_rest_and_seen_ones_still_turn_theirs():
    rng = np.random.default_rng(4)
    rig = random_rig(rng, 8, "chain")
    _, _, joints = random_motion(rng, rig, 5, amplitude=1.0)
    noisy = joints + rng.normal(0, 0.3, joints.shape)  # joints placed anywhere, as a confused detector does
    doubt = np.ones(joints.shape[:2])
    doubt[:, rig.num_bones // 2:] = 0.0  # the chain's far half was not seen
    solved, _ = inverse_kinematics(rig, noisy, doubt, rest_prior=2.0)
    free, _ = inverse_kinematics(rig, noisy, doubt, rest_prior=0.0)
    identity = np.array([1.0, 0, 0, 0])
    far = [b for b in range(rig.num_bones) if all(t >= rig.num_bones // 2 for t in rig.bone_targets()[b])]
    assert far  # the test checks something
    assert _angles_deg(solved[:, far], identity).max() < 1.0  # at rest: the noise did not turn them
    assert _angles_deg(free[:, far], identity).mean() > 20.0  # without the prior the noise does
    near = [b for b in range(rig.num_bones) if all(t < rig.num_bones // 2 for t in rig.bone_targets()[b])]
    assert np.allclose(solved[:, near], free[:, near])  # fully seen: the prior changes nothing


def test_smoothing_removes_a_one_frame_flip_and_keeps_a_steady_turn():
    angles = np.linspace(0, 60, 17)
    steady = Rotation.from_euler("x", angles[:, None], degrees=True).as_quat(scalar_first=True)[:, None]
    spiked = steady.copy()
    spiked[8, 0] = Rotation.from_euler("x", [[150.0]], degrees=True).as_quat(scalar_first=True)  # a swap
    assert flip_share(spiked) > 0
    smoothed = smooth_rotations(np.concatenate([spiked, steady], axis=1), 1.0)
    assert flip_share(smoothed) == 0.0
    assert rotation_steps_deg(smoothed).max() < 10.0
    inner = slice(2, -2)  # the ends are held by the filter's border
    assert _angles_deg(smoothed[inner, 1], steady[inner, 0]).max() < 0.5
    assert _angles_deg(smoothed[inner, 0], steady[inner, 0]).max() < 3.0  # the median took a neighbour's
    assert np.array_equal(smooth_rotations(spiked, 0.0), spiked)


def _quadruped_like_rig() -> Rig:
    """Rigify's quadruped layout: the root's children are the tail, behind it, and the spine, ahead
    of it, nearly on one line through its head; the legs hang from the spine's bones."""
    bones = [{"name": "pelvis", "parent": None, "head": [0, 0.2, 1.0], "tail": [0, 0.0, 1.0]},
             {"name": "tail", "parent": "pelvis", "head": [0, 0.7, 0.95], "tail": [0, 1.2, 0.9]},
             {"name": "spine", "parent": "pelvis", "head": [0, 0.0, 1.0], "tail": [0, -0.6, 1.0]},
             {"name": "chest", "parent": "spine", "head": [0, -0.6, 1.0], "tail": [0, -0.9, 1.2]}]
    for side, x in (("L", 0.15), ("R", -0.15)):
        for name, parent, y in (("thigh", "spine", -0.05), ("arm", "chest", -0.65)):
            bones.append({"name": f"{name}.{side}", "parent": parent, "head": [x, y, 0.95], "tail": [x, y, 0.5]})
            bones.append({"name": f"shin_{name}.{side}", "parent": f"{name}.{side}", "head": [x, y, 0.5],
                          "tail": [x, y, 0.0]})
    return Rig.from_dict({"bones": bones})


def test_widened_targets_keep_a_noisy_body_from_rolling_about_its_spine():
    rig = _quadruped_like_rig()
    rng = np.random.default_rng(7)
    frames = 12
    truth = np.tile([1.0, 0.0, 0.0, 0.0], (frames, rig.num_bones, 1))
    truth[:, 0] = Rotation.from_euler("z", np.linspace(0, 60, frames)[:, None], degrees=True).as_quat(scalar_first=True)
    legs = [rig.bone_index[f"{n}.{s}"] for n in ("thigh", "arm") for s in "LR"]
    swing = Rotation.from_euler("x", 25 * np.sin(np.linspace(0, 2 * np.pi, frames))[:, None], degrees=True)
    truth[:, legs] = swing.as_quat(scalar_first=True)[:, None]
    _, joints = forward_kinematics(rig, truth)
    noisy = joints + rng.normal(0, 0.02, joints.shape)  # 1% of the rig's size, as generated joints wander
    seen = np.full(joints.shape[:2], 0.9)
    narrow, _ = inverse_kinematics(rig, noisy, seen, rest_prior=0.5)
    wide, _ = inverse_kinematics(rig, noisy, seen, rest_prior=0.5, widen_thin_targets=True)
    assert _angles_deg(narrow[:, 0], truth[:, 0]).max() > 30.0  # the tail and spine alone roll it over
    assert _angles_deg(wide[:, 0], truth[:, 0]).max() < 10.0
    # the clean motion is still reproduced exactly by the plain fit
    clean, locations = inverse_kinematics(rig, joints)
    np.testing.assert_allclose(forward_kinematics(rig, clean, locations)[1], joints, atol=1e-6)
