"""The motion skeleton: which bones AnimaX animates when a rig has more than it can tell apart.

Pose maps carry at most ``MAX_JOINTS`` joint colours, while real rigs have 20-230 deform bones
(Rigify's human metarig 159, its wolf 190). The deform bones are chosen first; past the limit,
whole groups of bones are left out in this order, each only while the rest is still over:

1. mechanism bones (Rigify's MCH-/ORG-/tweak names, IK, pole and target bones);
2. twist bones (their only motion is a twist about their own axis, which pose maps cannot show);
3. face bones (eyes, lids, brows, lips, jaw, cheeks, nose, ears, tongue, teeth, chin, ...);
4. finger and toe-digit bones (thumb, index, middle, ring, pinky, palm);
5. hair and cloth bones (hair, mane, ponytail, skirt, cape, jiggle bones, VRoid's ``J_Sec_``):
   physics usually moves them, and their many leaves would take a joint each;
6. very short bones (shorter than ``SHORT_FRACTION`` of the rig's size);
7. then long chains are sampled: each keeps its first and last bones and evenly spaced ones
   between, the longest chains giving up bones first.

A group is kept whole where leaving it out would leave fewer than two bones. Bones left out keep
their rest pose; the chosen ones stay exact because a chosen bone's parent in the snapshot is its
nearest chosen ancestor. Names are matched case-insensitively on their word parts
(``DEF-thigh.L``, ``f_index.01.L``, ``mixamorig:LeftHandIndex1``, ``LeftHand``), so Rigify,
Mixamo and the common glTF / Unity names are covered. bpy-free: the add-on and the tests use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .rig import MAX_JOINTS, tree_depths

SHORT_FRACTION = 0.02
"""A bone shorter than this fraction of the rig's largest extent counts as very short."""

LEFT_OUT = ("mechanism", "twist", "face", "finger", "hair/cloth", "very short", "chain")
"""Why a bone was left out, in the order the groups are tried; ``MotionSkeleton.reasons`` indexes it."""

_WORDS = (
    {"mch", "org", "tweak", "ik", "pole", "target", "tgt", "helper"},
    {"twist", "roll"},
    {"face", "facial", "eye", "eyes", "eyeball", "eyelid", "lid", "lids", "brow", "brows", "eyebrow",
     "lash", "lashes", "eyelash", "lip", "lips", "mouth", "jaw", "cheek", "cheeks", "nose", "nostril",
     "ear", "ears", "tongue", "teeth", "tooth", "chin", "forehead", "temple", "beak"},
    {"finger", "fingers", "thumb", "index", "middle", "ring", "pinky", "pinkie", "palm", "digit",
     "carpal", "metacarpal"},
    {"hair", "mane", "ponytail", "braid", "bangs", "skirt", "cape", "cloak", "cloth", "ribbon", "jiggle",
     "physics", "sec"},
)
# Word parts: "mixamorig:LeftHandIndex1" -> mixamorig, left, hand, index, 1; "MCH-IKTarget" -> mch, ik, target
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


class SkeletonError(ValueError):
    """No choice of bones fits; the message says how many joints the smallest choice still has."""


def name_words(name: str) -> set[str]:
    """The lower-case word parts of a bone name."""
    return {w.lower() for w in _WORD.findall(name)}


def named_group(name: str) -> int:
    """The first group of ``LEFT_OUT`` that a bone's name puts it in, -1 for none (a body bone)."""
    words = name_words(name)
    return next((i for i, group in enumerate(_WORDS) if words & group), -1)


@dataclass(frozen=True)
class MotionSkeleton:
    """The choice: ``chosen`` (B,) bones take part; ``reasons`` (B,) is the index into ``LEFT_OUT``
    of why a candidate was left out, -1 for chosen bones and for bones that were never candidates
    (non-deform bones of a rig that has deform bones)."""

    chosen: np.ndarray
    reasons: np.ndarray
    num_candidates: int
    num_joints: int
    deform: bool  # the candidates were the deform bones (rather than all bones)

    def summary(self) -> str | None:
        """A line for the panel saying what was left out; None where every candidate takes part."""
        left_out = [LEFT_OUT[i] for i in np.unique(self.reasons[self.reasons >= 0])]
        if not left_out:
            return None
        groups = [g for g in left_out if g != "chain"]
        parts = []
        if groups:
            parts.append(", ".join(groups[:-1]) + (" and " if len(groups) > 1 else "") + groups[-1] + " bones")
        if "chain" in left_out:
            parts.append("some bones of long chains")
        kind = "deform bones" if self.deform else "bones"
        return (f"Body: {int(self.chosen.sum())} of {self.num_candidates} {kind}; "
                f"{' and '.join(parts)} keep their rest")


def choose_bones(names, parents, heads, tails, deform, max_joints: int = MAX_JOINTS) -> MotionSkeleton:
    """Choose the bones that take part (see module doc).

    ``names`` (B,) bone names; ``parents`` (B,) parent index, -1 for a root; ``heads``, ``tails``
    (B, 3) rest positions; ``deform`` (B,) deform flags. Raises ``SkeletonError`` where even the
    smallest choice has more than ``max_joints`` joints.
    """
    parents = np.asarray(parents, dtype=np.int64)
    deform = np.asarray(deform, dtype=bool)
    heads, tails = np.asarray(heads, dtype=np.float64), np.asarray(tails, dtype=np.float64)
    depth = tree_depths(parents)
    if (depth < 0).any():
        raise SkeletonError(f"bone '{names[int(np.argmax(depth < 0))]}' is part of a parent cycle")
    ancestors = _ancestor_matrix(parents, depth)
    chosen = deform.copy() if deform.any() else np.ones(len(parents), dtype=bool)
    candidates = chosen.copy()
    reasons = np.full(len(parents), -1, dtype=np.int64)

    named = np.array([named_group(n) for n in names], dtype=np.int64)
    lengths = np.linalg.norm(tails - heads, axis=1)
    ends = np.concatenate([heads[candidates], tails[candidates]])
    size = float((ends.max(axis=0) - ends.min(axis=0)).max()) if len(ends) else 0.0
    groups = [named == i for i in range(len(_WORDS))] + [lengths < SHORT_FRACTION * size]
    for reason, group in enumerate(groups):
        if _count_joints(chosen, ancestors) <= max_joints:
            break
        if (chosen & ~group).sum() < 2:
            continue  # leaving this group out would leave no skeleton to animate
        reasons[chosen & group] = reason
        chosen &= ~group

    excess = _count_joints(chosen, ancestors) - max_joints
    if excess > 0:
        kept = _sample_chains(chosen, ancestors, depth, excess)
        if kept is None:
            smallest = _count_joints(chosen & _chain_ends(chosen, ancestors, depth), ancestors)
            raise SkeletonError(
                f"even its body alone (long chains cut to their ends) has {smallest} joints, more than "
                f"the {max_joints} AnimaX tells apart"
            )
        reasons[chosen & ~kept] = LEFT_OUT.index("chain")
        chosen = kept
    return MotionSkeleton(chosen, reasons, int(candidates.sum()), _count_joints(chosen, ancestors),
                          bool(deform.any()))


def _ancestor_matrix(parents: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(B, B) bool: ``[i, j]`` is True where bone j is a proper ancestor of bone i."""
    n = len(parents)
    ancestors = np.zeros((n, n), dtype=bool)
    rows, above = np.arange(n), parents.copy()
    for _ in range(int(depth.max(initial=0))):
        has = above >= 0
        ancestors[rows[has], above[has]] = True
        above = np.where(has, parents[np.maximum(above, 0)], -1)
    return ancestors


def _count_joints(chosen: np.ndarray, ancestors: np.ndarray) -> int:
    """Joints of the chosen bones: every head, plus the tail of each bone without a chosen descendant."""
    has_descendant = ancestors[chosen].any(axis=0)
    return int(chosen.sum() + (chosen & ~has_descendant).sum())


def _chains(chosen: np.ndarray, ancestors: np.ndarray, depth: np.ndarray):
    """Each chosen bone's chain (the index of its first bone) and its position along it.

    A chain is a run of chosen bones each of which has exactly one chosen child; it ends at a
    leaf or a branching bone, and the next chains start at the branching bone's children.
    """
    chosen_above = ancestors & chosen[None, :]
    levels = chosen_above.sum(axis=1)  # depth among the chosen bones only
    # the snapshot's parent: the nearest (deepest) chosen ancestor
    parent = np.where(chosen_above.any(axis=1), np.where(chosen_above, depth[None, :], -1).argmax(axis=1), -1)
    children = np.bincount(parent[chosen & (parent >= 0)], minlength=len(chosen))
    starts = chosen & ((parent < 0) | (children[np.maximum(parent, 0)] != 1))
    at_or_above = (ancestors | np.eye(len(chosen), dtype=bool)) & starts[None, :]
    first = np.where(at_or_above, depth[None, :], -1).argmax(axis=1)
    return first, levels - levels[first]


def _chain_ends(chosen: np.ndarray, ancestors: np.ndarray, depth: np.ndarray) -> np.ndarray:
    first, position = _chains(chosen, ancestors, depth)
    length = np.bincount(first[chosen], minlength=len(chosen))
    return chosen & ((position == 0) | (position == length[first] - 1))


def _sample_chains(chosen, ancestors, depth, excess: int) -> np.ndarray | None:
    """The chosen bones less ``excess`` bones from within chains; None if chains are too short.

    Each bone dropped from within a chain removes exactly one joint (a head) and changes no leaf.
    Chains longer than a cap keep ``cap`` bones, the cap the largest that drops enough; where that
    drops more than needed, the longest of the cut chains keep one bone more.
    """
    first, position = _chains(chosen, ancestors, depth)
    length = np.bincount(first[chosen], minlength=len(chosen))
    firsts = np.flatnonzero(length)
    lengths = length[firsts]
    caps = np.arange(2, lengths.max() + 1)
    dropped = np.maximum(lengths[None, :] - caps[:, None], 0).sum(axis=1)
    if not len(caps) or dropped[0] < excess:
        return None
    fits = dropped >= excess
    cap = caps[fits].max()
    keep = np.minimum(lengths, cap)
    cut = np.flatnonzero(lengths > cap)
    keep[cut[np.argsort(-lengths[cut], kind="stable")[: dropped[fits][-1] - excess]]] += 1
    keep_of = np.zeros(len(chosen), dtype=np.int64)
    keep_of[firsts] = keep
    n, k = length[first].astype(np.float64), keep_of[first]
    sampled = n > k
    # evenly spaced positions round(j * step), j = 0..k-1: position p is one of them exactly
    # when rounding p back to its nearest j lands on p again
    step = np.where(sampled, (n - 1) / np.maximum(k - 1, 1), 1.0)
    on_grid = np.rint(np.rint(position / step) * step) == position
    return chosen & (~sampled | on_grid)
