"""Rig snapshot: an armature's bones in rest pose, the joints AnimaX tracks, and its JSON form.

Bones follow Blender's edit-bone conventions in armature space (metres): a bone's local Y axis
runs from head to tail and its roll turns the X/Z axes about Y. Joints are the heads of all bones
in bone order, then the tails of the leaf bones in bone order, so that leaf bones get a rotation
too. This module is bpy-free: the add-on, the worker and the tests all use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_JOINTS = 64
"""Palette size: the number of distinct joint colours a pose map can carry."""

BODY_JOINTS = 28
"""The joints a model tells apart by default: the most of any rig it is trained on (the procedural
quadrupeds'), so that no joint takes a palette colour training never drew. A rig past it is
animated through its body (``core.skeleton``); a worker's welcome may announce another limit.
A lower budget lifts what the tiny VAE keeps of Rigify's metarigs (``benchmarks/joint_budget.py``)
but thins the procedural rigs the model reads best (docs/quality.md)."""

MIN_BONE_LENGTH = 1e-6
"""Blender itself deletes bones shorter than this; a bone needs a direction to have a rotation."""


class RigError(ValueError):
    """A rig snapshot that cannot be used; the message names the bone and the problem."""


@dataclass(frozen=True)
class Bone:
    name: str
    parent: str | None
    head: tuple[float, float, float]
    tail: tuple[float, float, float]
    roll: float = 0.0
    deform: bool = True


def _vector(value, what: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise RigError(f"{what} must be a list of 3 numbers, got {value!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise RigError(f"{what} must be a list of 3 numbers, got {value!r}")
    if not all(math.isfinite(v) for v in value):
        raise RigError(f"{what} is not finite: {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _bone_from_dict(index: int, entry) -> Bone:
    if not isinstance(entry, dict):
        raise RigError(f"bone #{index} must be an object with name, parent, head and tail")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise RigError(f"bone #{index} needs a non-empty string 'name'")
    for key in ("head", "tail"):
        if key not in entry:
            raise RigError(f"bone '{name}' has no '{key}'")
    parent = entry.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise RigError(f"bone '{name}': 'parent' must be a bone name or null, got {parent!r}")
    roll = entry.get("roll", 0.0)
    if not isinstance(roll, (int, float)) or isinstance(roll, bool) or not math.isfinite(roll):
        raise RigError(f"bone '{name}': 'roll' must be a finite number of radians, got {roll!r}")
    deform = entry.get("deform", True)
    if not isinstance(deform, bool):
        raise RigError(f"bone '{name}': 'deform' must be true or false, got {deform!r}")
    return Bone(
        name=name,
        parent=parent,
        head=_vector(entry["head"], f"bone '{name}': 'head'"),
        tail=_vector(entry["tail"], f"bone '{name}': 'tail'"),
        roll=float(roll),
        deform=deform,
    )


def bone_rest_matrices(heads: np.ndarray, tails: np.ndarray, rolls: np.ndarray) -> np.ndarray:
    """Armature-space rest matrices (..., 4, 4) of bones, as Blender's ``Bone.matrix_local``.

    Port of Blender's ``vec_roll_to_mat3_normalized``: the rotation that takes +Y to the bone's
    direction along the shortest arc, then the roll about that direction. Near -Y Blender uses a
    series expansion, and exactly at -Y a flip about Z; both are reproduced so that rolls match.
    """
    heads = np.asarray(heads, dtype=np.float64)
    direction = np.asarray(tails, dtype=np.float64) - heads
    nor = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    x, y, z = nor[..., 0], nor[..., 1], nor[..., 2]
    theta = 1.0 + y
    theta_alt = x * x + z * z
    safe, critical_sq = 6.1e-3, 2.5e-4**2
    regular = (theta > safe) | (theta_alt > critical_sq)
    theta = np.where(theta > safe, theta, theta_alt * 0.5 + theta_alt * theta_alt * 0.125)
    theta = np.where(regular, theta, 1.0)  # avoids 0/0 where the flip branch is taken anyway
    b = np.empty(nor.shape[:-1] + (3, 3))
    b[..., 0, 0] = 1.0 - x * x / theta
    b[..., 1, 0] = -x
    b[..., 2, 0] = -x * z / theta
    b[..., 0, 1] = x
    b[..., 1, 1] = y
    b[..., 2, 1] = z
    b[..., 0, 2] = -x * z / theta
    b[..., 1, 2] = -z
    b[..., 2, 2] = 1.0 - z * z / theta
    b[~regular] = np.diag([-1.0, -1.0, 1.0])
    matrices = np.zeros(nor.shape[:-1] + (4, 4))
    matrices[..., :3, :3] = axis_angle_matrices(nor, np.asarray(rolls, dtype=np.float64)) @ b
    matrices[..., :3, 3] = heads
    matrices[..., 3, 3] = 1.0
    return matrices


def axis_angle_matrices(axes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) about unit ``axes`` (..., 3) by ``angles`` (...) radians."""
    x, y, z = axes[..., 0], axes[..., 1], axes[..., 2]
    c, s = np.cos(angles), np.sin(angles)
    t = 1.0 - c
    return np.stack(
        [
            np.stack([t * x * x + c, t * x * y - s * z, t * x * z + s * y], axis=-1),
            np.stack([t * x * y + s * z, t * y * y + c, t * y * z - s * x], axis=-1),
            np.stack([t * x * z - s * y, t * y * z + s * x, t * z * z + c], axis=-1),
        ],
        axis=-2,
    )


def sphere_around(points: np.ndarray, rotation: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Centre and radius of a sphere around ``points`` (N, 3): the centre of their bounding box in
    the frame ``rotation`` (world from frame; the world's axes where None), so that points turned
    as a whole get the same sphere, turned with them."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if rotation is None:
        center = (points.min(axis=0) + points.max(axis=0)) / 2
    else:
        rotation = np.asarray(rotation, dtype=np.float64)
        local = points @ rotation
        center = rotation @ ((local.min(axis=0) + local.max(axis=0)) / 2)
    return center, float(np.linalg.norm(points - center, axis=1).max())


def tree_depths(parents: np.ndarray) -> np.ndarray:
    """Depth of each node of a forest given by parent indices (-1 for a root); -1 on a cycle."""
    depth = np.where(parents < 0, 0, -1)
    for level in range(1, len(parents) + 1):
        todo = (depth < 0) & (depth[np.maximum(parents, 0)] == level - 1)
        if not todo.any():
            break
        depth[todo] = level
    return depth


class Rig:
    """A validated rig snapshot with the index arrays the geometry works on.

    Attributes (B bones, J joints):
        bones: the bones in file order.
        parents: (B,) index of each bone's parent, -1 for a root.
        heads, tails: (B, 3) rest positions; rolls: (B,) radians.
        leaves: (B,) True for bones without children.
        joint_bones: (J,) the bone whose head (or, for the leaf tails, tail) each joint is.
        joint_parents: (J,) the joint drawn as each joint's parent, -1 for root heads.
        joint_names: bone name for a head, ``<bone>.tail`` for a leaf tail.
        joints_rest: (J, 3) rest positions of the joints.
        levels: bone indices grouped by depth, roots first (for root-to-leaf passes).
        rest_matrices: (B, 4, 4) armature-space rest matrices (Blender's ``matrix_local``).
    """

    def __init__(self, bones: list[Bone], max_joints: int | None = MAX_JOINTS):
        if not bones:
            raise RigError("the rig has no bones")
        self.bones = tuple(bones)
        index: dict[str, int] = {}
        for i, bone in enumerate(bones):
            if bone.name in index:
                raise RigError(f"bone name '{bone.name}' appears twice")
            index[bone.name] = i
        self.bone_index = index
        parents = np.full(len(bones), -1, dtype=np.int64)
        for i, bone in enumerate(bones):
            if bone.parent is not None:
                if bone.parent not in index:
                    raise RigError(f"bone '{bone.name}' has unknown parent '{bone.parent}'")
                if bone.parent == bone.name:
                    raise RigError(f"bone '{bone.name}' is its own parent")
                parents[i] = index[bone.parent]
        self.parents = parents
        self.heads = np.array([b.head for b in bones], dtype=np.float64)
        self.tails = np.array([b.tail for b in bones], dtype=np.float64)
        self.rolls = np.array([b.roll for b in bones], dtype=np.float64)
        lengths = np.linalg.norm(self.tails - self.heads, axis=1)
        for i in np.flatnonzero(lengths < MIN_BONE_LENGTH):
            raise RigError(f"bone '{bones[i].name}' has zero length (head equals tail)")
        self.lengths = lengths
        self.levels = self._depth_levels()

        self.leaves = np.ones(len(bones), dtype=bool)
        self.leaves[parents[parents >= 0]] = False
        leaf_ids = np.flatnonzero(self.leaves)
        n_bones = len(bones)
        self.joint_bones = np.concatenate([np.arange(n_bones), leaf_ids])
        self.joint_is_tail = np.concatenate([np.zeros(n_bones, bool), np.ones(len(leaf_ids), bool)])
        self.joint_parents = np.concatenate([parents, leaf_ids])
        self.joint_names = [b.name for b in bones] + [f"{bones[i].name}.tail" for i in leaf_ids]
        self.joints_rest = np.concatenate([self.heads, self.tails[leaf_ids]])
        if max_joints is not None and self.num_joints > max_joints:
            raise RigError(
                f"the rig has {self.num_joints} joints ({n_bones} bones plus {len(leaf_ids)} leaf "
                f"tails) but the model tells at most {max_joints} apart; animate fewer bones "
                "(a bone collection or a selection)"
            )
        self.rest_matrices = bone_rest_matrices(self.heads, self.tails, self.rolls)

    def _depth_levels(self) -> list[np.ndarray]:
        if not (self.parents < 0).any():
            raise RigError(f"the bones form a cycle (no root bone): {self.bones[0].name} ...")
        depth = tree_depths(self.parents)
        for i in np.flatnonzero(depth < 0):
            raise RigError(f"bone '{self.bones[i].name}' is part of a parent cycle")
        return [np.flatnonzero(depth == d) for d in range(depth.max() + 1)]

    # --- sizes and names -------------------------------------------------------------------
    @property
    def num_bones(self) -> int:
        return len(self.bones)

    @property
    def num_joints(self) -> int:
        return len(self.joint_bones)

    @property
    def bone_names(self) -> list[str]:
        return [b.name for b in self.bones]

    @property
    def roots(self) -> np.ndarray:
        return np.flatnonzero(self.parents < 0)

    def subset(self, kept) -> "Rig":
        """The rig of the bones ``kept`` (indices or a (B,) mask), in their order, each parented to
        its nearest kept ancestor: the other bones held at rest, a kept bone's rotation relative to
        rest is the same in both rigs."""
        kept = np.asarray(kept)
        kept = np.flatnonzero(kept) if kept.dtype == bool else np.unique(kept)
        if not len(kept):
            raise RigError("no bones were kept")
        inside = np.zeros(self.num_bones, dtype=bool)
        inside[kept] = True
        bones = []
        for i in kept:
            parent = self.parents[i]
            while parent >= 0 and not inside[parent]:
                parent = self.parents[parent]
            bones.append(Bone(self.bones[i].name, None if parent < 0 else self.bones[parent].name,
                              self.bones[i].head, self.bones[i].tail, self.bones[i].roll, self.bones[i].deform))
        return Rig(bones, max_joints=None)

    # --- normalised rig space --------------------------------------------------------------
    def bounding_sphere(self, rotation: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Centre and radius of a sphere around all rest joints (centre of their bounding box, in
        the frame ``rotation``: world from frame, the character's upright frame for the cameras;
        the world's axes by default)."""
        return sphere_around(self.joints_rest, rotation)

    # --- the joint graph -------------------------------------------------------------------
    def bone_targets(self) -> list[np.ndarray]:
        """For each bone, the joints that move rigidly with it apart from its head.

        These are the heads of its child bones and, for a leaf, its own tail: the vectors from
        the bone's head to them fix the bone's rotation.
        """
        targets: list[list[int]] = [[] for _ in self.bones]
        for j, parent in enumerate(self.joint_parents):
            if parent >= 0:
                targets[self.joint_bones[parent]].append(j)
        return [np.array(t, dtype=np.int64) for t in targets]

    def rigid_pairs(self) -> np.ndarray:
        """(P, 2) joint pairs whose distance no pose can change.

        All pairs among a bone's head and its targets (the targets move rigidly with the bone):
        the bone lengths, and the distances between sibling heads that a plain bone-length term
        would leave free.
        """
        pairs = []
        for bone, targets in enumerate(self.bone_targets()):
            group = np.concatenate([[bone], targets])
            a, b = np.triu_indices(len(group), k=1)
            pairs.append(np.stack([group[a], group[b]], axis=1))
        return np.concatenate(pairs).astype(np.int64)

    # --- JSON ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data, max_joints: int | None = MAX_JOINTS) -> "Rig":
        if not isinstance(data, dict) or "bones" not in data:
            raise RigError("a rig must be a JSON object with a 'bones' list")
        if not isinstance(data["bones"], list):
            raise RigError("'bones' must be a list")
        bones = [_bone_from_dict(i, entry) for i, entry in enumerate(data["bones"])]
        return cls(bones, max_joints=max_joints)

    def to_dict(self) -> dict:
        return {
            "bones": [
                {
                    "name": b.name,
                    "parent": b.parent,
                    "head": list(b.head),
                    "tail": list(b.tail),
                    "roll": b.roll,
                    "deform": b.deform,
                }
                for b in self.bones
            ]
        }

    @classmethod
    def load(cls, path: str | Path, max_joints: int | None = MAX_JOINTS) -> "Rig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RigError(f"rig file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RigError(f"cannot read rig file {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RigError(f"rig file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, max_joints=max_joints)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
