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
7. side leaves: a leaf bone beside a sibling that goes on (Rigify's breast and pelvis bones beside
   the spine and thighs), or, where all of a bone's children are leaves, one that does not start
   at its parent's tail (the heel beside the toe, the cheeks of a skull). Each leaf costs two
   joints (its head and tail) and shows little of the body's motion;
8. then long chains are thinned: roots, branching bones and leaves stay; bones on the body's plane of
   symmetry (spine, neck, tail) go before those of paired limbs (which go in mirrored pairs), and
   among them, those whose heads the chain would miss least (a bent knee stays; straight chains
   thin out evenly).

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

SPAN_WEIGHT = 0.05
"""Chain sampling: how much a dropped bone's span counts beside how far its head is off that span."""

MIDLINE_FRACTION = 0.03
"""A head within this fraction of the rig's size from its plane of symmetry is on the midline."""

CONNECTED_FRACTION = 0.01
"""A child starts at its parent's tail when the gap is under this fraction of the parent's length."""

LEFT_OUT = ("mechanism", "twist", "face", "finger", "hair/cloth", "very short", "side-leaf", "chain")
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
    groups = [named == i for i in range(len(_WORDS))] + [lengths < SHORT_FRACTION * size, None]
    for reason, group in enumerate(groups):
        if _count_joints(chosen, ancestors) <= max_joints:
            break
        if group is None:  # side leaves depend on what is still chosen
            group = _side_leaves(chosen, ancestors, depth, heads, tails)
        if (chosen & ~group).sum() < 2:
            continue  # leaving this group out would leave no skeleton to animate
        reasons[chosen & group] = reason
        chosen &= ~group

    excess = _count_joints(chosen, ancestors) - max_joints
    if excess > 0:
        kept = _thin_chains(chosen, ancestors, depth, heads, tails, excess, ends)
        if kept is None:
            smallest = _count_joints(chosen & _chain_ends(chosen, ancestors, depth), ancestors)
            raise SkeletonError(
                f"even its body alone (roots, branching bones and leaves) has {smallest} joints, more than "
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


def _nearest_chosen_parent(chosen: np.ndarray, ancestors: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Each bone's parent in the snapshot: its nearest (deepest) chosen ancestor, -1 for none."""
    chosen_above = ancestors & chosen[None, :]
    return np.where(chosen_above.any(axis=1), np.where(chosen_above, depth[None, :], -1).argmax(axis=1), -1)


def _side_leaves(chosen, ancestors, depth, heads, tails) -> np.ndarray:
    """Chosen leaf bones beside a sibling that goes on (see module doc, group 7)."""
    parent = _nearest_chosen_parent(chosen, ancestors, depth)
    leaf = chosen & ~ancestors[chosen].any(axis=0)
    has = parent >= 0
    gap = np.full(len(chosen), np.inf)
    gap[has] = np.linalg.norm(heads[has] - tails[parent[has]], axis=1)
    reach = np.linalg.norm(tails - heads, axis=1)
    connected = has & (gap <= CONNECTED_FRACTION * reach[np.maximum(parent, 0)])
    side = np.zeros(len(chosen), dtype=bool)
    for p in np.unique(parent[chosen & has]):
        children = np.flatnonzero(chosen & (parent == p))
        leaves = children[leaf[children]]
        if len(leaves) < len(children):  # a sibling goes on: every leaf beside it is a side leaf
            side[leaves] = True
        else:  # all leaves: those that do not continue the parent (all, where none does)
            side[leaves[~connected[leaves]]] = True
    return side


def _interior(chosen: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Chosen bones that can go without changing a leaf or a branch: a chosen parent and one chosen child."""
    children = np.bincount(parent[chosen & (parent >= 0)], minlength=len(chosen))
    return chosen & (parent >= 0) & (children == 1)


def _chain_ends(chosen: np.ndarray, ancestors: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Chosen bones that chain thinning keeps: roots, branching bones and leaves."""
    return chosen & ~_interior(chosen, _nearest_chosen_parent(chosen, ancestors, depth))


def _thin_chains(chosen, ancestors, depth, heads, tails, excess: int, ends: np.ndarray) -> np.ndarray | None:
    """The chosen bones less ``excess`` (or, for a mirrored pair, one more) bones from within chains;
    None if chains are too short.

    Each bone dropped from within a chain removes exactly one joint (its head) and changes no leaf.
    Bones go one at a time (see module doc, group 8): a bone of a paired limb (its head off the
    plane of symmetry x = centre of ``ends``, the candidates' heads and tails) only once no bone
    on the plane is left to drop, and together with its mirror image, so that left and right stay
    alike; first the one whose head the chain misses least: its distance from the line between
    the joints before and after it, plus a little of that line's length.
    """
    size = float(np.ptp(ends, axis=0).max())
    centre = 0.5 * (ends[:, 0].min() + ends[:, 0].max())
    limb = np.abs(heads[:, 0] - centre) > MIDLINE_FRACTION * size
    flip = np.array([-1.0, 1.0, 1.0])
    mirrored = np.concatenate([heads, tails], axis=1) * np.tile(flip, 2) + np.tile([2 * centre, 0, 0], 2)
    gaps = np.linalg.norm(mirrored[:, None] - np.concatenate([heads, tails], axis=1)[None], axis=2)
    mirror = np.where(limb & (gaps.min(axis=1) < MIDLINE_FRACTION * size), gaps.argmin(axis=1), -1)
    kept = chosen.copy()
    while excess > 0:
        parent = _nearest_chosen_parent(kept, ancestors, depth)
        droppable = _interior(kept, parent)
        inner = np.flatnonzero(droppable)
        if not len(inner):
            return None
        child = np.array([np.flatnonzero(kept & (parent == i))[0] for i in inner])
        before, at, after = heads[parent[inner]], heads[inner], heads[child]
        span = after - before
        length = np.linalg.norm(span, axis=1)
        along = np.clip(np.einsum("ij,ij->i", at - before, span) / np.maximum(length, 1e-12) ** 2, 0.0, 1.0)
        miss = np.linalg.norm(before + along[:, None] * span - at, axis=1)
        bone = inner[np.argmin(miss + SPAN_WEIGHT * length + size * limb[inner])]
        kept[bone] = False
        excess -= 1
        twin = mirror[bone]
        if twin >= 0 and twin != bone and droppable[twin]:  # at worst one joint under the budget
            kept[twin] = False
            excess -= 1
    return kept
