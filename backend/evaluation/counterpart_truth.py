"""The truth of a motion on rigs the rig world did not make (Rigify's, a glTF character's), which
have no procedural motion of their own: their training counterpart's true motion, carried onto them
as the worker carries a generated one (``reconstruction.retarget``)."""

from __future__ import annotations

import numpy as np

from animax_addon.core.rig import Rig
from backend.data.motions import FPS, MOTIONS
from backend.data.rig_world import Creature
from backend.reconstruction.kinematics import forward_kinematics
from backend.reconstruction.reconstruct import Reconstruction
from backend.reconstruction.retarget import retarget, retarget_motion


def counterpart_truth(rig: Rig, creature: Creature, counterparts: np.ndarray, motion: str, seed: int,
                      frames: int, rotation: np.ndarray | None = None) -> np.ndarray:
    """(frames, J, 3): the true ``motion`` (drawn from ``seed``) of ``creature`` at the model's frame
    rate, carried onto ``rig`` by ``retarget``; ``counterparts``, ``rotation`` as ``retarget`` takes them."""
    rotations, locations = MOTIONS[motion](creature, np.random.default_rng(seed), frames, FPS)
    return retarget(rig, rotations, locations, creature.rig, counterparts, rotation)


def counterpart_motion(rig: Rig, creature: Creature, counterparts: np.ndarray, motion: str, seed: int,
                       frames: int, rotation: np.ndarray | None = None) -> Reconstruction:
    """The true ``motion`` of ``creature`` carried onto ``rig``'s bones as the worker carries a
    reconstructed one (``retarget_motion``, every joint seen), at the model's frame rate: what a
    perfect generator would give the rig; arguments as for :func:`counterpart_truth`."""
    source = creature.rig
    rotations, locations = MOTIONS[motion](creature, np.random.default_rng(seed), frames, FPS)
    joints = forward_kinematics(source, rotations, locations)[1]
    seen = np.ones(joints.shape[:2])
    truth = Reconstruction(joints, rotations, locations, seen, np.zeros_like(seen), joints,
                           np.full((1, *joints.shape[:2], 2), np.nan), list(source.joint_names),
                           source.bone_names, int(source.roots[0]))
    return retarget_motion(rig, truth, source, counterparts, rotation)
