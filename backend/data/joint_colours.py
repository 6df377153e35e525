"""The palette colour each joint of a rig is drawn in: that of its counterpart in a training rig.

Training draws joint k of a procedural creature in palette colour k, and each family lists its
bones in one order, so the model learns what a colour means: colour 6 marks a biped's left elbow
and a quadruped's left front knee (of two spine bones). A rig from elsewhere (Rigify, a glTF
character) lists its bones in its own order, and drawn by that order every colour lands on a part
the model never saw it on (the model then draws maps of about half the joint confidence,
docs/quality.md). So each joint takes the colour of the joint it matches in the training rig
that fits the whole rig best.

Matching is in normalised rest space (bounding-sphere centre at the origin, radius 1), in the
character's upright frame (Z up, facing -Y, as training rigs stand), against creatures of every training family (the
references). A joint's cost against a reference joint is the distance between them, plus half
the distance between the bones that end at them (a hand's tip is not taken for the wrist beside
it), plus the difference of their depths in the tree over the deepest (a chain keeps its order).
Where the rig's joint tree is that of a reference, whatever the order of its joints (a training
creature as Blender lists its bones, arms before legs), only such references are tried, and
the creature is drawn exactly as training drew it. Otherwise the reference of least mean cost
wins, a joint that only one of the two rigs has costing one radius; the rig's joints it has no
counterpart for take the colours it leaves unused.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from animax_addon.core.pose_maps import palette
from animax_addon.core.rig import MAX_JOINTS, Rig, tree_depths

from .rig_world import FAMILIES, TRAIN_FAMILIES

REFERENCE_SEEDS = 64
"""Creatures drawn of each training family as references: enough to draw every joint tree a
family draws (a snake's 8-20 segments, a quadruped's 2-3 spine and 2-4 tail bones, ...)."""

BONE_WEIGHT = 0.5
"""Weight of the parent-to-joint vector against the joint's position in the matching cost."""

DEPTH_WEIGHT = 1.0
"""Weight of the joint's relative depth in the tree: keeps a chain's joints in chain order."""

UNSHARED_COST = 1.0
"""Cost of a joint that only one of the two rigs has, in bounding-sphere radii."""


def _normalised(rig: Rig, rotation: np.ndarray | None = None) -> np.ndarray:
    """(J, 7): rest positions and parent-to-joint vectors in bounding-sphere units, in the
    character's upright frame ``rotation`` (world from frame; the world's axes where None), and
    the joint's depth in the tree over the deepest joint's."""
    center, radius = rig.bounding_sphere(rotation)
    points = (rig.joints_rest - center) @ (np.eye(3) if rotation is None else rotation) / max(radius, 1e-9)
    parents = rig.joint_parents
    bones = np.where((parents >= 0)[:, None], points - points[np.maximum(parents, 0)], 0.0)
    depth = tree_depths(parents).astype(np.float64)
    depth /= max(depth.max(), 1.0)
    return np.concatenate([points, BONE_WEIGHT * bones, DEPTH_WEIGHT * depth[:, None]], axis=1)


def _shape(parents: np.ndarray) -> str:
    """The joint tree's shape, whatever the joints' order: equal for two trees exactly when
    one is the other with its joints renumbered (the canonical form of rooted trees)."""
    children: list[list[int]] = [[] for _ in parents]
    for joint, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(joint)

    def form(joint: int) -> str:
        return "(" + "".join(sorted(form(child) for child in children[joint])) + ")"

    return "".join(sorted(form(root) for root in np.flatnonzero(parents < 0)))


@lru_cache(maxsize=1)
def _references() -> tuple[tuple[str, str, np.ndarray], ...]:
    """(family, joint tree's shape, matching features) of each reference creature."""
    references = []
    for family in TRAIN_FAMILIES:
        for seed in range(REFERENCE_SEEDS):
            rig = FAMILIES[family](np.random.default_rng(seed)).rig
            references.append((family, _shape(rig.joint_parents), _normalised(rig)))
    return tuple(references)


def match(rig: Rig, rotation: np.ndarray | None = None) -> tuple[str, np.ndarray, float]:
    """The training family whose reference fits ``rig`` best, the palette index of each of its
    joints (J,) and the mean matching cost. ``rotation``: the character's upright frame, as the
    cameras' (``CameraRig.rotation``)."""
    features = _normalised(rig, rotation)
    # A training creature's tree, whatever the order of its joints: match among its kind.
    shape = _shape(rig.joint_parents)
    candidates = [r for r in _references() if r[1] == shape] or _references()
    best = None
    for family, _, reference in candidates:
        cost = cdist(features, reference)
        rows, cols = linear_sum_assignment(cost)
        unshared = abs(len(features) - len(reference))
        score = (cost[rows, cols].sum() + UNSHARED_COST * unshared) / max(len(features), len(reference))
        if best is None or score < best[0]:
            best = (score, family, rows, cols)
    score, family, rows, cols = best
    index = np.full(len(features), -1, dtype=np.int64)
    index[rows] = cols
    spare = np.setdiff1d(np.arange(MAX_JOINTS), cols)
    index[index < 0] = spare[: int((index < 0).sum())]
    return family, index, float(score)


def joint_colours(rig: Rig, rotation: np.ndarray | None = None) -> np.ndarray:
    """(J, 3) uint8: the colour each joint of ``rig`` is drawn in, for the model and for reading
    its pose maps back; ``rotation`` as for :func:`match`."""
    return palette(MAX_JOINTS)[match(rig, rotation)[1]]
