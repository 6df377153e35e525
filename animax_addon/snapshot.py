"""The rig snapshot of an armature object: its rest pose in world space, as a core ``Rig``.

World space (the object's transform applied) so that the cameras, the worker's results and the
user's scene share one frame; the cameras are placed in the character's upright frame
(``upright_frame``), which the cameras carry as their normalisation's rotation. Only rigid
transforms with a uniform positive scale keep bone rotations meaningful, so other object
transforms are refused with a sentence saying what to do.
By default the deform bones take part, and past what AnimaX tells apart the body that
``core.skeleton`` chooses; a bone collection or the selected bones are taken exactly as given.
"""

from __future__ import annotations

import bpy
import mathutils
import numpy as np

from .core.rig import BODY_JOINTS, Bone, Rig, RigError
from .core.skeleton import MotionSkeleton, SkeletonError, choose_bones
from .core.upright import UprightFrame
from .core.upright import upright_frame as _upright_frame

BONE_OPTIONS = ("DEFORM", "COLLECTION", "SELECTED")

_NARROWER = {
    "COLLECTION": "choose a smaller bone collection or 'Selected bones'",
    "SELECTED": "select fewer bones",
}
_SCALE_TOLERANCE = 1e-4  # relative; object scales typed into the panel are exact to far better


class SnapshotError(ValueError):
    """An armature that cannot be snapshotted; the message says what the user can change."""


def _is_selected(obj, bone) -> bool:
    # Blender 5.0 keeps bone selection on pose bones; 4.x keeps it on the bone itself
    pose_bone = obj.pose.bones[bone.name]
    return pose_bone.select if hasattr(pose_bone, "select") else bone.select


def _ends_and_flags(bones) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    heads, tails = np.empty(3 * len(bones), np.float32), np.empty(3 * len(bones), np.float32)
    deform = np.empty(len(bones), dtype=bool)
    bones.foreach_get("head_local", heads)
    bones.foreach_get("tail_local", tails)
    bones.foreach_get("use_deform", deform)
    return heads.reshape(-1, 3), tails.reshape(-1, 3), deform


def default_choice(obj, max_joints: int = BODY_JOINTS) -> MotionSkeleton:
    """The 'Deform bones' choice: the deform bones, and past ``max_joints`` the body alone."""
    bones = obj.data.bones
    names = bones.keys()
    index = {name: i for i, name in enumerate(names)}
    parents = [index[b.parent.name] if b.parent else -1 for b in bones]
    try:
        return choose_bones(names, parents, *_ends_and_flags(bones), max_joints=max_joints)
    except SkeletonError as exc:
        raise SnapshotError(
            f"'{obj.name}' cannot be animated as a whole: {exc}; choose 'Selected bones' or a bone "
            "collection with the bones to animate"
        ) from None


_summaries: dict[str, tuple[bytes, str | None, bool]] = {}


def choice_summary(obj) -> tuple[str | None, bool]:
    """The panel's line about the default choice (None where every deform bone takes part), and
    whether it is a refusal.

    The panel draws it on every redraw, so it is kept per armature and made again only when a
    bone's name, ends or deform flag changed: reading the parents would cost more than the rest.
    A bone re-parented without moving keeps the old line until then; Animate always chooses afresh.
    """
    bones = obj.data.bones
    key = b"".join([repr(bones.keys()).encode(), *(a.tobytes() for a in _ends_and_flags(bones))])
    cached = _summaries.get(obj.name_full)
    if cached is None or cached[0] != key:
        try:
            cached = (key, default_choice(obj).summary(), False)
        except SnapshotError as exc:
            cached = (key, str(exc), True)
        _summaries[obj.name_full] = cached
    return cached[1], cached[2]


def _object_rotation(obj) -> np.ndarray:
    """The rotation of the object's world matrix (the nearest one where it is scaled unevenly)."""
    u, _, vt = np.linalg.svd(np.array(obj.matrix_world, dtype=np.float64)[:3, :3])
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:  # mirrored: refused by the snapshot; any rotation will do here
        rotation = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return rotation


def upright_frame(obj) -> UprightFrame:
    """The character's upright frame (``core.upright``): which way its rest pose has up and front,
    from its bones' names and rest ends and the object's rotation; the cameras are placed in it.
    Its ``warning`` tells a rest pose that lies down both in its own data and in the scene."""
    bones = obj.data.bones
    heads, tails, deform = _ends_and_flags(bones)
    return _upright_frame(bones.keys(), heads, tails, deform, _object_rotation(obj), obj.name)


_upright_warnings: dict[str, tuple[bytes, str | None]] = {}


def upright_warning(obj) -> str | None:
    """The panel's line where the rest pose is not upright (``upright_frame``'s warning), kept per
    armature like ``choice_summary`` and made again when a bone or the object's transform changed."""
    bones = obj.data.bones
    key = b"".join([repr(bones.keys()).encode(), *(a.tobytes() for a in _ends_and_flags(bones)),
                    np.array(obj.matrix_world, dtype=np.float64).tobytes(), obj.name.encode()])
    cached = _upright_warnings.get(obj.name_full)
    if cached is None or cached[0] != key:
        cached = (key, upright_frame(obj).warning)
        _upright_warnings[obj.name_full] = cached
    return cached[1]


def participating_bones(obj, bones: str = "DEFORM", collection: str = "", max_joints: int = BODY_JOINTS) -> list[str]:
    """Names of the bones that take part, in the armature's bone order."""
    if obj is None or obj.type != "ARMATURE":
        what = "nothing" if obj is None else f"'{obj.name}' ({obj.type.lower()})"
        raise SnapshotError(f"AnimaX animates an armature, but {what} was given; select an armature")
    if obj.mode == "EDIT":
        raise SnapshotError(f"'{obj.name}' is in Edit Mode; switch to Object or Pose Mode first")
    armature = obj.data
    if not armature.bones:
        raise SnapshotError(f"'{obj.name}' has no bones; add bones in Edit Mode or pick another armature")
    if bones == "DEFORM":
        chosen = default_choice(obj, max_joints).chosen
        names = [name for name, taking_part in zip(armature.bones.keys(), chosen) if taking_part]
    elif bones == "COLLECTION":
        found = armature.collections_all.get(collection)
        if found is None:
            known = ", ".join(f"'{c.name}'" for c in armature.collections_all) or "none"
            raise SnapshotError(
                f"'{obj.name}' has no bone collection '{collection}' (it has: {known}); pick one of them"
            )
        members = {b.name for b in found.bones}
        names = [b.name for b in armature.bones if b.name in members]
        if not names:
            raise SnapshotError(
                f"bone collection '{collection}' of '{obj.name}' is empty; add bones to it or pick another"
            )
    elif bones == "SELECTED":
        names = [b.name for b in armature.bones if _is_selected(obj, b)]
        if not names:
            raise SnapshotError(f"no bones of '{obj.name}' are selected; select bones in Pose Mode")
    else:
        raise SnapshotError(f"unknown bones option {bones!r}; use one of {', '.join(BONE_OPTIONS)}")
    return names


def _uniform_scale(obj) -> float:
    """The object's uniform world scale; refuses non-uniform, sheared or mirrored transforms."""
    linear = np.array(obj.matrix_world, dtype=np.float64)[:3, :3]
    gram = linear.T @ linear
    scale = float(np.sqrt(np.trace(gram) / 3))
    if np.linalg.det(linear) <= 0:
        raise SnapshotError(
            f"'{obj.name}' has a negative (mirroring) or zero scale; apply the scale "
            "(Ctrl+A > Scale) or make it positive"
        )
    if np.abs(gram - scale**2 * np.eye(3)).max() > _SCALE_TOLERANCE * scale**2:
        raise SnapshotError(
            f"'{obj.name}' (or a parent) has a non-uniform scale; apply the scale (Ctrl+A > Scale) "
            "or give X, Y and Z the same scale"
        )
    return scale


def rig_from_armature(obj, bones: str = "DEFORM", collection: str = "", max_joints: int = BODY_JOINTS) -> Rig:
    """The rig snapshot of ``obj``'s rest pose in world space (see module doc); ``max_joints``: the
    most joints the model tells apart."""
    names = participating_bones(obj, bones, collection, max_joints)
    scale = _uniform_scale(obj)
    world = np.array(obj.matrix_world, dtype=np.float64)
    rotation = world[:3, :3] / scale
    taking_part = set(names)
    snapshot = []
    for name in names:
        bone = obj.data.bones[name]
        parent = bone.parent
        while parent is not None and parent.name not in taking_part:
            parent = parent.parent  # skip bones that do not take part: nearest one above
        head = world[:3, :3] @ np.array(bone.head_local) + world[:3, 3]
        tail = world[:3, :3] @ np.array(bone.tail_local) + world[:3, 3]
        # Blender's own matrix -> roll, so the snapshot's rest matrices are the world ones
        axes = rotation @ np.array(bone.matrix_local, dtype=np.float64)[:3, :3]
        _, roll = bpy.types.Bone.AxisRollFromMatrix(mathutils.Matrix(axes.tolist()))
        snapshot.append(
            Bone(
                name=name,
                parent=None if parent is None else parent.name,
                head=tuple(head.tolist()),
                tail=tuple(tail.tolist()),
                roll=float(roll),
                deform=bool(bone.use_deform),
            )
        )
    try:
        rig = Rig(snapshot, max_joints=None)
    except RigError as exc:
        raise SnapshotError(f"'{obj.name}' cannot be animated: {exc}") from None
    if rig.num_joints > max_joints:  # only a collection or a selection: the default choice fits
        raise SnapshotError(
            f"'{obj.name}' has {rig.num_joints} joints with these bones ({rig.num_bones} bones plus "
            f"{int(rig.leaves.sum())} leaf tails) but the model tells at most {max_joints} apart; "
            f"{_NARROWER[bones]}"
        )
    return rig
