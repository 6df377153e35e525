"""Rigs re-rested in a pose of their own, as artists model rigs in many poses (a chest modelled
open, a dog modelled crouching): the evaluation's ``heldout-rests`` split. A laptop rests open where
every procedural chest rests closed, so a model that saw only closed chests learns *open* as "away
from the template", which is backwards for a rig that rests open.
"""

from __future__ import annotations

import numpy as np

from animax_addon.core.rig import Rig
from backend.reconstruction.kinematics import bone_ends, forward_kinematics

from .motions import FPS, MOTIONS, applicable
from .rig_world import Creature


def rest_in_pose(creature: Creature, rotations: np.ndarray) -> Creature:
    """``creature`` rebuilt with the pose ``rotations`` (B, 4) of its bones as its rest pose.

    The roots keep their rest, so the rig keeps its place and faces the front camera. Names,
    parents, lengths, rolls and roles stay.
    """
    rig = creature.rig
    rotations = np.array(rotations, dtype=np.float64)
    rotations[rig.parents < 0] = (1.0, 0.0, 0.0, 0.0)
    heads, tails = bone_ends(rig, forward_kinematics(rig, rotations[None])[0][0])
    data = rig.to_dict()
    for entry, head, tail in zip(data["bones"], heads, tails):
        entry["head"], entry["tail"] = head.tolist(), tail.tolist()
    return Creature(creature.family, Rig.from_dict(data), creature.roles)


def varied_rest(creature: Creature, rng, frames: int = 17, fps: int = FPS) -> Creature:
    """``creature`` re-rested in a random frame of one of its own motions (a chest modelled open,
    a dog modelled crouching). Spin is left out: it turns the root alone, which the new rest undoes."""
    names = [m for m in applicable(creature) if m != "spin"]
    rotations, _ = MOTIONS[names[int(rng.integers(len(names)))]](creature, rng, frames, fps)
    return rest_in_pose(creature, rotations[int(rng.integers(frames))])
