"""Retargeting a training creature's true motion onto another rig (the truth of rigs the rig world
did not make), checked against forward kinematics."""

import numpy as np

from animax_addon.core.rig import Rig
from backend.data.joint_colours import counterpart
from backend.data.motions import FPS, MOTIONS
from backend.data.rig_world import FAMILIES
from backend.evaluation.retarget import counterpart_truth, retarget
from backend.reconstruction.kinematics import forward_kinematics


def true_joints(creature, motion, seed=0, frames=17):
    return forward_kinematics(creature.rig, *MOTIONS[motion](creature, np.random.default_rng(seed), frames, FPS))[1]


def test_a_creature_retargeted_onto_itself_moves_as_it_does():
    creature = FAMILIES["quadruped"](np.random.default_rng(3))
    joints = true_joints(creature, "walk")
    same = retarget(creature.rig, joints, creature, np.arange(creature.rig.num_joints))
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
