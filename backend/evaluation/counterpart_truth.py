"""The truth of a motion on rigs the rig world did not make (Rigify's, a glTF character's), which
have no procedural motion of their own: their training counterpart's true motion, carried onto them
as the worker carries a generated one (``reconstruction.retarget``)."""

from __future__ import annotations

import numpy as np

from animax_addon.core.rig import Rig
from backend.data.motions import FPS, MOTIONS
from backend.data.rig_world import Creature
from backend.reconstruction.retarget import retarget


def counterpart_truth(rig: Rig, creature: Creature, counterparts: np.ndarray, motion: str, seed: int,
                      frames: int, rotation: np.ndarray | None = None) -> np.ndarray:
    """(frames, J, 3): the true ``motion`` (drawn from ``seed``) of ``creature`` at the model's frame
    rate, carried onto ``rig`` by ``retarget``; ``counterparts``, ``rotation`` as ``retarget`` takes them."""
    rotations, locations = MOTIONS[motion](creature, np.random.default_rng(seed), frames, FPS)
    return retarget(rig, rotations, locations, creature.rig, counterparts, rotation)
