"""Variety of the training clips beyond what the rig world draws (training only; evaluation clips
never get it).

A model that saw each family in one rest pose, one bone order and a few nouns ties what it learnt
to that family. Three things break that tie:

- **Re-rested rigs** (:func:`varied_rest`): artists model rigs in many poses. A laptop rests open
  where every procedural chest rests closed, so a model that saw only closed chests learns *open*
  as "away from the template", which is backwards for a rig that rests open.
- **Extra bones** (:func:`with_extra_bones`): short static bones (spikes, antennae) at random
  places in the bone order. Joint colours follow the bone order, so these move every later
  joint's colour, and they bring rigs up to the palette's size: the largest training family has
  28 joints, so colours 28 and up were never trained, and a 33-joint many-legged rig's feet (its
  last joints) came out of the VAE in the wrong colour four times in five.
- **Generic nouns** (``GENERIC_NOUNS``): a prompt that names the rig "the creature" or "the toy"
  instead of "the chest". Every training prompt names its family, so the model may learn the
  motion from the noun; an unseen noun then loses it (the shipped model turns 4 of 10 laptops when
  asked with a chest's noun and none when asked with the laptop's; docs/quality.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from animax_addon.core.rig import MAX_JOINTS, Rig
from backend.reconstruction.kinematics import bone_ends, forward_kinematics

from .motions import FPS, GENERIC_NOUNS, MOTIONS, Clip, applicable, play, prompt, sample_creature
from .rig_world import Creature

EXTRA_BONE_PREFIX = "extra"


@dataclass(frozen=True)
class ClipVariety:
    """Shares of the training clips whose rig is re-rested (``rest``) or given extra bones
    (``extra_bones``), and whose prompt names the rig by a generic noun (``generic_nouns``). At 0
    nothing is drawn, so a seed's clips stay what they were."""

    rest: float = 0.0
    extra_bones: float = 0.0
    generic_nouns: float = 0.0

    def __post_init__(self):
        for name in ("rest", "extra_bones", "generic_nouns"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"ClipVariety.{name} is a share of the clips, from 0 to 1; got {share}")

    def apply(self, creature: Creature, rng, frames: int = 17, fps: int = FPS) -> Creature:
        if self.rest and rng.random() < self.rest:
            creature = varied_rest(creature, rng, frames, fps)
        if self.extra_bones and rng.random() < self.extra_bones:
            creature = with_extra_bones(creature, rng)
        return creature


def sample_training_clip(rng, frames: int = 17, families=None, motions=None, variety: ClipVariety = ClipVariety(),
                         fps: int = FPS) -> Clip:
    """``motions.sample_clip`` with ``variety`` applied to the creature before it moves, and to
    the prompt after."""
    creature = variety.apply(sample_creature(rng, families, motions), rng, frames, fps)
    clip = play(creature, rng, frames, motions, fps)
    if variety.generic_nouns and rng.random() < variety.generic_nouns:
        clip = replace(clip, prompt=prompt(creature, clip.motion, rng, GENERIC_NOUNS))
    return clip


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


def with_extra_bones(creature: Creature, rng, max_joints: int = MAX_JOINTS) -> Creature:
    """``creature`` with 1 to as many extra bones as the palette has room for, each a short leaf
    sprouting from a random point along a random non-leaf bone, in a random direction, placed
    anywhere after its parent in the bone order.

    Non-leaf parents only: a leaf's tail is a joint (a foot, a lid's edge), and a child would take
    it away. No motion has a role for the extra bones, so they stay still on their parents.
    """
    rig = creature.rig
    room = (max_joints - rig.num_joints) // 2  # an extra leaf adds its head and its tail
    bones = rig.to_dict()["bones"]
    parents = [entry["name"] for entry, leaf in zip(bones, rig.leaves) if not leaf]
    if room < 1 or not parents:
        return creature
    radius = rig.bounding_sphere()[1]
    for k in range(int(rng.integers(1, room + 1))):
        parent = parents[int(rng.integers(len(parents)))]
        at = next(i for i, entry in enumerate(bones) if entry["name"] == parent)
        head = np.add(bones[at]["head"], rng.uniform(0.2, 0.8) * np.subtract(bones[at]["tail"], bones[at]["head"]))
        direction = rng.normal(size=3)
        tail = head + rng.uniform(0.05, 0.2) * radius * direction / np.linalg.norm(direction)
        bones.insert(int(rng.integers(at + 1, len(bones) + 1)),
                     {"name": f"{EXTRA_BONE_PREFIX}.{k + 1:02d}", "parent": parent, "head": head.tolist(),
                      "tail": tail.tolist()})
    return Creature(creature.family, Rig.from_dict({"bones": bones}), creature.roles)
