"""Retargeting a training creature's motion onto another rig (how the worker animates rigs the rig
world did not make, and their truth in the benchmarks), checked against forward kinematics."""

import numpy as np

from animax_addon.core.rig import Bone, Rig
from backend.data.joint_colours import counterpart
from backend.data.motions import FPS, MOTIONS
from backend.data.rig_world import FAMILIES
from backend.evaluation.counterpart_truth import counterpart_truth
from backend.reconstruction.kinematics import forward_kinematics
from backend.reconstruction.reconstruct import Reconstruction
from backend.reconstruction.retarget import retarget, retarget_motion


def true_joints(creature, motion, seed=0, frames=17):
    return forward_kinematics(creature.rig, *MOTIONS[motion](creature, np.random.default_rng(seed), frames, FPS))[1]


def test_a_creature_retargeted_onto_itself_moves_as_it_does():
    creature = FAMILIES["quadruped"](np.random.default_rng(3))
    rotations, locations = MOTIONS["walk"](creature, np.random.default_rng(0), 17, FPS)
    joints = forward_kinematics(creature.rig, rotations, locations)[1]
    same = retarget(creature.rig, rotations, locations, creature.rig, np.arange(creature.rig.num_joints))
    np.testing.assert_allclose(same, joints, atol=1e-9)


def test_another_rig_keeps_its_bones_and_follows_the_creature():
    rng = np.random.default_rng(11)
    target = FAMILIES["biped"](rng).rig
    order = rng.permutation(target.num_bones)  # listed in another order, as Blender may list them
    target = Rig([target.bones[i] for i in order])
    creature, counterparts = counterpart(target)
    assert creature.family == "biped" and (counterparts >= 0).all()
    moved = counterpart_truth(target, creature, counterparts, "jump", seed=0, frames=17)
    parents = target.joint_parents
    child = np.flatnonzero(parents >= 0)
    lengths = np.linalg.norm(moved[:, child] - moved[:, parents[child]], axis=-1)
    rest = np.linalg.norm(target.joints_rest[child] - target.joints_rest[parents[child]], axis=-1)
    np.testing.assert_allclose(lengths, np.broadcast_to(rest, lengths.shape), rtol=1e-9)
    jump = true_joints(creature, "jump")
    rise = (jump[:, :, 2].min(axis=1).max() - jump[0, :, 2].min()) / creature.rig.bounding_sphere()[1]
    moved_rise = (moved[:, :, 2].min(axis=1).max() - moved[0, :, 2].min()) / target.bounding_sphere()[1]
    assert rise > 0.05 and abs(moved_rise - rise) < 0.25 * rise  # it jumps as high, for its size


def with_toes(rig: Rig) -> Rig:
    """``rig`` with a toe below each foot, bones no training biped has."""
    toes = [Bone(f"toe{i}", b.name, b.tail, tuple(np.add(b.tail, (0.0, -0.08, 0.0))))
            for i, b in enumerate(b for b in rig.bones if b.name.startswith("foot"))]
    return Rig(list(rig.bones) + toes)


def test_a_reconstruction_is_carried_onto_the_rig_by_its_bones():
    """The worker's step: the creature's reconstructed joints, retargeted, posed by IK on the rig's
    bones. Bones with counterparts reach their retargeted joints; a toe the creature lacks keeps its
    rest below its foot; each joint's confidence is its counterpart's."""
    creature = FAMILIES["biped"](np.random.default_rng(7))
    target = with_toes(FAMILIES["biped"](np.random.default_rng(8)).rig)
    _, counterparts = counterpart(target)
    toes = np.array([name.startswith("toe") and name.endswith(".tail") for name in target.joint_names])
    assert toes.sum() == 2
    assert (counterparts[toes] < 0).all() and (counterparts[~toes] >= 0).all()
    rotations, locations = MOTIONS["wave"](creature, np.random.default_rng(0), 17, FPS)
    _, joints = forward_kinematics(creature.rig, rotations, locations)
    frames, count = joints.shape[:2]
    confidence = np.random.default_rng(1).uniform(0.5, 1.0, (frames, count))
    motion = Reconstruction(joints, rotations, locations, confidence, np.zeros((frames, count)), joints,
                            np.zeros((4, frames, count, 2)), list(creature.rig.joint_names),
                            creature.rig.bone_names, int(creature.rig.roots[0]))
    carried = retarget_motion(target, motion, creature.rig, counterparts, rest_prior=0.5)
    assert carried.rotations.shape == (frames, target.num_bones, 4)
    assert carried.joint_names == list(target.joint_names)
    wanted = retarget(target, rotations, locations, creature.rig, counterparts)
    radius = target.bounding_sphere()[1]
    assert np.linalg.norm(carried.joints - wanted, axis=-1)[:, ~toes].max() < 0.02 * radius
    np.testing.assert_array_equal(carried.confidence[:, ~toes], confidence[:, counterparts[~toes]])
    assert (carried.confidence[:, toes] == 0).all() and np.isnan(carried.reprojection_error[:, toes]).all()
    # a toe turns with its foot: no rotation of its own
    toe_bones = [target.bone_names.index(name) for name in ("toe0", "toe1")]
    turn = 2 * np.degrees(np.arccos(np.clip(np.abs(carried.rotations[:, toe_bones, 0]), 0, 1)))
    assert turn.max() < 2.0


def test_a_carried_motion_is_low_passed_when_asked():
    """``rotation_smoothing`` calms the rig's bones as ``reconstruct``'s does the creature's."""
    from scipy.spatial.transform import Rotation

    from backend.evaluation.motion_metrics import angular_acceleration

    creature = FAMILIES["quadruped"](np.random.default_rng(4))
    target = FAMILIES["quadruped"](np.random.default_rng(5)).rig
    _, counterparts = counterpart(target)
    rotations, locations = MOTIONS["walk"](creature, np.random.default_rng(0), 17, FPS)
    shake = Rotation.from_rotvec(np.random.default_rng(2).normal(0, 0.08, (rotations[..., 0].size, 3)))
    shaken = (Rotation.from_quat(rotations.reshape(-1, 4), scalar_first=True) * shake).as_quat(
        scalar_first=True).reshape(rotations.shape)
    joints = forward_kinematics(creature.rig, shaken, locations)[1]
    frames, count = joints.shape[:2]
    motion = Reconstruction(joints, shaken, locations, np.ones((frames, count)), np.zeros((frames, count)), joints,
                            np.zeros((4, frames, count, 2)), list(creature.rig.joint_names),
                            creature.rig.bone_names, int(creature.rig.roots[0]))
    raw = retarget_motion(target, motion, creature.rig, counterparts)
    calm = retarget_motion(target, motion, creature.rig, counterparts, rotation_smoothing=1.0)
    assert angular_acceleration(calm.rotations, FPS) < 0.6 * angular_acceleration(raw.rotations, FPS)
    np.testing.assert_allclose(np.linalg.norm(calm.rotations, axis=-1), 1.0, atol=1e-9)
