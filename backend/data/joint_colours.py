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

from .rig_world import FAMILIES, TRAIN_FAMILIES, Creature

REFERENCE_SEEDS = 64
"""Creatures drawn of each training family as references: enough to draw every joint tree a
family draws (a snake's 8-20 segments, a quadruped's 2-3 spine and 2-4 tail bones, ...)."""

BONE_WEIGHT = 0.5
"""Weight of the parent-to-joint vector against the joint's position in the matching cost."""

DEPTH_WEIGHT = 1.0
"""Weight of the joint's relative depth in the tree: keeps a chain's joints in chain order."""

UNSHARED_COST = 1.0
"""Cost of a joint that only one of the two rigs has, in bounding-sphere radii."""

MIDLINE_FRACTION = 0.04
"""A bone end within this fraction of the rig's largest extent from the plane of symmetry is on
the midline (Rigify's shoulders start there, its arms and legs do not)."""


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


@lru_cache(maxsize=4)
def _references(families: tuple[str, ...]) -> tuple[tuple[str, int, str, np.ndarray], ...]:
    """(family, seed, joint tree's shape, matching features) of each reference creature of ``families``."""
    references = []
    for family in families:
        for seed in range(REFERENCE_SEEDS):
            rig = FAMILIES[family](np.random.default_rng(seed)).rig
            references.append((family, seed, _shape(rig.joint_parents), _normalised(rig)))
    return tuple(references)


def _is_training_tree(shape: str, families: tuple[str, ...]) -> bool:
    """Whether a joint tree of ``shape`` (``_shape``) is that of a creature of ``families``."""
    return any(reference[2] == shape for reference in _references(tuple(families)))


def _fit(features: np.ndarray, reference: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cost and (rows, cols) of the least-cost assignment of joints ``features`` to ``reference``."""
    cost = cdist(features, reference)
    rows, cols = linear_sum_assignment(cost)
    unshared = abs(len(features) - len(reference))
    return (cost[rows, cols].sum() + UNSHARED_COST * unshared) / max(len(features), len(reference)), rows, cols


@lru_cache(maxsize=4)
def cast(families: tuple[str, ...]) -> frozenset[tuple[str, int]]:
    """(family, seed) of the model's cast: for each joint tree a family of ``families`` draws, its most
    typical reference (least mean matching cost to the others of that tree). A model trained with a
    share of its clips on the cast (``train run --cast-share``) animates every rig as one of these few
    creatures, which it has seen do every motion, instead of the nearest of hundreds it saw once each
    (``worker.model_body``; docs/quality.md)."""
    members: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
    for family, seed, shape, features in _references(tuple(families)):
        members.setdefault((family, shape), []).append((seed, features))
    chosen = set()
    for (family, _), group in members.items():
        costs = [sum(_fit(a, b)[0] for _, b in group) for _, a in group]
        chosen.add((family, group[int(np.argmin(costs))][0]))
    return frozenset(chosen)


def _best(features: np.ndarray, shape: str, families: tuple[str, ...],
          cast_only: bool = False) -> tuple[float, str, int, np.ndarray, np.ndarray]:
    """The reference of ``families`` (of their ``cast`` alone with ``cast_only``) that fits joints of
    ``features`` best: (mean cost, family, seed, rows, cols) of the assignment. A training creature's
    tree, whatever the order of its joints (``shape``), is matched among its kind."""
    references = _references(tuple(families))
    if cast_only:
        members = cast(tuple(families))
        references = tuple(r for r in references if (r[0], r[1]) in members)
    candidates = [r for r in references if r[2] == shape] or references
    best = None
    for family, seed, _, reference in candidates:
        score, rows, cols = _fit(features, reference)
        if best is None or score < best[0]:
            best = (float(score), family, seed, rows, cols)
    return best


def _assignment(rig: Rig, rotation: np.ndarray | None, families: tuple[str, ...],
                cast_only: bool = False) -> tuple[float, str, int, np.ndarray]:
    """(mean cost, family, seed) of the reference (of the cast with ``cast_only``) that fits ``rig``
    best, and for each of the rig's joints the reference's joint it is assigned (-1 for none)."""
    score, family, seed, rows, cols = _best(_normalised(rig, rotation), _shape(rig.joint_parents), families,
                                            cast_only)
    joints = np.full(rig.num_joints, -1, dtype=np.int64)
    joints[rows] = cols
    return score, family, seed, joints


def match(rig: Rig, rotation: np.ndarray | None = None,
          families: tuple[str, ...] = TRAIN_FAMILIES) -> tuple[str, np.ndarray, float]:
    """The training family whose reference fits ``rig`` best, the palette index of each of its
    joints (J,) and the mean matching cost. ``rotation``: the character's upright frame, as the
    cameras' (``CameraRig.rotation``); ``families``: those the model was trained on."""
    score, family, _, index = _assignment(rig, rotation, families)
    spare = np.setdiff1d(np.arange(MAX_JOINTS), index)
    index[index < 0] = spare[: int((index < 0).sum())]
    return family, index, score


def counterpart(rig: Rig, rotation: np.ndarray | None = None, families: tuple[str, ...] = TRAIN_FAMILIES,
                cast_only: bool = False) -> tuple[Creature, np.ndarray]:
    """The training creature that fits ``rig`` best (what :func:`match` draws it as; with
    ``cast_only``, the member of the model's :func:`cast` that does) and, for each of the rig's
    joints, the creature's joint it matches (-1 where it has none); arguments as for :func:`match`."""
    _, family, seed, joints = _assignment(rig, rotation, families, cast_only)
    return FAMILIES[family](np.random.default_rng(seed)), joints


@lru_cache(maxsize=16)
def _spread(family: str, families: tuple[str, ...]) -> float:
    """The largest mean matching cost (``_best``) of ``family``'s creatures of seeds no reference is
    drawn from: how far from every reference a creature of the family may be."""
    costs = []
    for seed in range(REFERENCE_SEEDS, 2 * REFERENCE_SEEDS):
        rig = FAMILIES[family](np.random.default_rng(seed)).rig
        costs.append(_best(_normalised(rig), _shape(rig.joint_parents), families)[0])
    return max(costs)


def is_training_creature(rig: Rig, rotation: np.ndarray | None = None,
                         families: tuple[str, ...] = TRAIN_FAMILIES) -> bool:
    """Whether matching cannot tell ``rig`` from a creature of ``families``: its joint tree is one of
    theirs (whatever the order of its joints), and it fits the nearest reference no worse than that
    family's own creatures do; arguments as for :func:`match`. A procedural biped is one; Rigify's
    humans, of the biped's tree once reduced (:func:`training_body`), are not: their proportions and
    rest pose lie outside what the model was trained on."""
    if not _is_training_tree(_shape(rig.joint_parents), families):
        return False
    score, family, _, _ = _assignment(rig, rotation, families)
    return score <= _spread(family, tuple(families))


def _mirrors(heads: np.ndarray, tails: np.ndarray, midline: float) -> np.ndarray:
    """(B,) each bone's mirror image across the plane x = 0 (-1 for none, and for bones on the
    plane), from upright rest positions."""
    ends = np.concatenate([heads, tails], axis=1)
    flipped = ends * np.tile([-1.0, 1.0, 1.0], 2)
    gaps = np.linalg.norm(flipped[:, None] - ends[None], axis=2)
    off = np.maximum(np.abs(heads[:, 0]), np.abs(tails[:, 0])) >= midline
    return np.where(off & (gaps.min(axis=1) < midline), gaps.argmin(axis=1), -1)


def _droppable(body: Rig, kept: np.ndarray, heads: np.ndarray, tails: np.ndarray, midline: float) -> np.ndarray:
    """(B,) the rig's bones :func:`training_body` may leave out next, of ``body`` (its ``kept``
    bones, as ``Rig.subset`` parents them): a chain's end (a leaf, its parent's only child), a bone
    inside a chain on the midline, a limb's root that starts on the midline (a clavicle, a scapula)."""
    index = np.flatnonzero(kept)
    parent = body.parents
    children = np.bincount(parent[parent >= 0], minlength=body.num_bones)
    on, to = np.abs(heads[index, 0]) < midline, np.abs(tails[index, 0]) < midline
    safe = np.maximum(parent, 0)
    end = (children == 0) & (children[safe] == 1)
    inner = on & to & (children == 1)
    limb_root = on & ~to & on[safe]
    droppable = np.zeros(len(kept), dtype=bool)
    droppable[index[(parent >= 0) & (end | inner | limb_root)]] = True
    return droppable


def training_body(rig: Rig, rotation: np.ndarray | None = None,
                  families: tuple[str, ...] = TRAIN_FAMILIES) -> np.ndarray:
    """(B,) bool: the bones the model animates, the rest held at their rest pose.

    The model learnt the joint trees of its training creatures; a rig's body often has bones
    none of them has (Rigify's shoulders, toes and two-bone neck), whose joints it was never
    trained to move. Such bones are left out, one (or a mirrored pair) at a time, while that
    brings the rig nearer its best reference (:func:`match`'s mean cost): the end of a chain,
    a bone inside a chain on the midline, or a limb's root that starts on the midline. A rig of
    a training creature's tree is kept whole. ``rotation``, ``families``: as for :func:`match`."""
    kept = np.ones(rig.num_bones, dtype=bool)
    if _is_training_tree(_shape(rig.joint_parents), families):
        return kept
    centre, radius = rig.bounding_sphere(rotation)
    frame = np.eye(3) if rotation is None else rotation
    heads, tails = ((points - centre) @ frame / max(radius, 1e-9) for points in (rig.heads, rig.tails))
    midline = MIDLINE_FRACTION * float(np.ptp(np.concatenate([heads, tails]), axis=0).max())
    mirror = _mirrors(heads, tails, midline)

    def fit(mask: np.ndarray) -> tuple[float, Rig]:
        body = rig.subset(mask)
        return _best(_normalised(body, rotation), _shape(body.joint_parents), families)[0], body

    score, body = fit(kept)
    while kept.sum() > 2:
        trials = []
        for bone in np.flatnonzero(_droppable(body, kept, heads, tails, midline)):
            trial = kept.copy()
            trial[[bone, mirror[bone]] if mirror[bone] >= 0 else bone] = False
            trials.append((*fit(trial), bone, trial))
        if not trials:
            break
        best, best_body, _, trial = min(trials, key=lambda t: (t[0], t[2]))
        if best >= score - 1e-6:
            break
        score, body, kept = best, best_body, trial
    return kept


def joint_colours(rig: Rig, rotation: np.ndarray | None = None,
                  families: tuple[str, ...] = TRAIN_FAMILIES) -> np.ndarray:
    """(J, 3) uint8: the colour each joint of ``rig`` is drawn in, for the model and for reading
    its pose maps back; ``rotation``, ``families`` as for :func:`match`."""
    return palette(MAX_JOINTS)[match(rig, rotation, families)[1]]
