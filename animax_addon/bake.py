"""Put a generated motion on the controls of a rig whose deform bones are driven by constraints.

On a generated rig (Rigify, Auto-Rig Pro, ...) the deform bones follow mechanism bones through
constraints, and those follow the controls an animator keys: keys on the deform bones have no
effect. Here, as Blender's visual bake does, the motion is moved onto the controls: each control
follows a temporary proxy (an Empty placed, frame by frame, where the motion puts the control:
rigidly with the snapshot bone it drives), the rig is evaluated with its own constraints, and the
controls' resulting local transforms are keyed into a new Action. The proxies and the temporary
constraints are removed; the user's selection, mode, active object and other Actions are not
touched.

Which controls: from each driven snapshot bone the pose's sources are followed (constraint
targets in the rig, and the parent unless a constraint replaces the whole transform) up to the
first *control*: a visible, non-deforming bone that no constraint poses and whose rotation is
not locked (Rigify's tweak bones turn about one axis only, so the walk passes them on to the FK
controls). Limb switches (Rigify's ``IK_FK``) are set to FK, and keyed so in the new Action, so
that the FK chain drives the mesh. Controls above the keyed ones (Rigify's torso and root) are
keyed at rest, so that the new Action plays the same whatever pose another Action left them in.
"""

from __future__ import annotations

import re

import bpy
import mathutils
import numpy as np

from .action import _matrices, rotation_keys, write_channels

POSE_CONSTRAINTS = frozenset({
    "COPY_LOCATION", "COPY_ROTATION", "COPY_TRANSFORMS", "DAMPED_TRACK", "LOCKED_TRACK", "TRACK_TO",
    "STRETCH_TO", "IK", "SPLINE_IK", "CHILD_OF", "ARMATURE", "ACTION", "TRANSFORM", "PIVOT",
    "FOLLOW_PATH", "CLAMP_TO", "SHRINKWRAP", "FLOOR",
})
"""Constraints that set a bone's location or rotation (scale and limit constraints do not move the
motion's joints)."""

FK_SWITCHES = {"IK_FK": 1.0}
"""Custom properties of pose bones that switch a limb between IK and FK, and their FK value
(Rigify's limbs: 0 is IK, 1 is FK)."""

_TRANSFORM = re.compile(r'pose\.bones\["((?:[^"\\]|\\.)*)"\]\.(location|rotation_\w+|scale)$')
_ACTIVE = 1e-6  # a constraint below this influence does nothing
_MOVES = 1e-5  # a control's location is keyed where it moves more than this (armature units)


def _pose_constraints(obj, name: str):
    """The enabled pose-setting constraints of bone ``name``, with the influence drivers gave them."""
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).pose.bones[name].constraints
    return [(c, e.influence) for c, e in zip(obj.pose.bones[name].constraints, evaluated)
            if c.type in POSE_CONSTRAINTS and not e.mute and e.influence > _ACTIVE]


def driven_bones(obj, names: list[str]) -> list[str]:
    """The bones of ``names`` whose pose constraints or drivers set, on the bone or above it."""
    animation = obj.animation_data
    with_drivers = set()
    for curve in animation.drivers if animation else ():
        found = _TRANSFORM.match(curve.data_path)
        if found and not curve.mute:
            with_drivers.add(found.group(1).replace('\\"', '"').replace("\\\\", "\\"))
    driven = []
    for name in names:
        bone = obj.pose.bones[name]
        while bone is not None and bone.name not in with_drivers and not _pose_constraints(obj, bone.name):
            bone = bone.parent
        if bone is not None:
            driven.append(name)
    return driven


def _sources(obj, name: str) -> list[str]:
    """The rig's bones that set bone ``name``'s pose: constraint targets, and the parent unless a
    constraint replaces the whole transform in world space (which also overrides those before it)."""
    bone = obj.pose.bones[name]
    sources = [bone.parent.name] if bone.parent else []
    for constraint, influence in _pose_constraints(obj, name):
        if (constraint.type == "COPY_TRANSFORMS" and influence > 1 - _ACTIVE and constraint.mix_mode == "REPLACE"
                and constraint.owner_space == constraint.target_space == "WORLD"):
            sources = []
        pairs = (("target", "subtarget"), ("pole_target", "pole_subtarget"))  # the IK constraint's pole too
        for target, subtarget in ((getattr(constraint, t, None), getattr(constraint, s, "")) for t, s in pairs):
            if target == obj and subtarget in obj.pose.bones:
                sources.append(subtarget)
        for target in getattr(constraint, "targets", ()):  # the Armature constraint
            if target.target == obj and target.subtarget in obj.pose.bones:
                sources.append(target.subtarget)
    return sources


def is_control(obj, name: str) -> bool:
    """A bone an animator keys: visible, not deforming, posed by no constraint, free to turn."""
    bone = obj.pose.bones[name]
    visible = not bone.bone.hide and (not bone.bone.collections or any(c.is_visible for c in bone.bone.collections))
    return visible and not any(bone.lock_rotation) and not bone.bone.use_deform and not _pose_constraints(obj, name)


def find_controls(obj, names: list[str], rest: np.ndarray) -> dict[str, str]:
    """{control: the bone of ``names`` it follows} for the controls that drive ``names``.

    A control reached from several bones follows the nearest in the walk, then the one whose rest
    ends (``rest``: (B, 2, 3) heads and tails in world space, in ``names`` order) lie closest to
    its own: an upper arm's FK control follows the upper arm, not its twist segment.
    """
    world = np.array(obj.matrix_world)
    best: dict[str, tuple] = {}
    for i, name in enumerate(names):
        seen, frontier, depth = {name}, [name], 0
        while frontier:
            depth += 1
            found = []
            for bone in frontier:
                for source in _sources(obj, bone):
                    if source in seen:
                        continue
                    seen.add(source)
                    if is_control(obj, source):
                        ends = obj.data.bones[source]
                        ends = np.array([world[:3, :3] @ np.array(v) + world[:3, 3]
                                         for v in (ends.head_local, ends.tail_local)])
                        # either way round: Rigify's hips controls point down the spine
                        rank = (depth, float(min(np.linalg.norm(ends - rest[i], axis=-1).sum(),
                                                 np.linalg.norm(ends[::-1] - rest[i], axis=-1).sum())))
                        if source not in best or rank < best[source][0]:
                            best[source] = (rank, name)
                    else:
                        found.append(source)
            frontier = found
    return {control: name for control, (_, name) in best.items()}


def _world_poses(rig, bone_names, rotations, root_bone, root_translation) -> np.ndarray:
    """(T, B, 4, 4) world matrices of the snapshot's bones (``rig.bone_names`` order) in the motion."""
    order = [bone_names.index(name) for name in rig.bone_names]
    frames = len(rotations)
    basis = np.tile(np.eye(4), (frames, rig.num_bones, 1, 1))
    basis[..., :3, :3] = _matrices(np.asarray(rotations, dtype=np.float64)[:, order])
    basis[:, rig.bone_index[root_bone], :3, 3] = root_translation
    parent_rest = np.where((rig.parents >= 0)[:, None, None], rig.rest_matrices[np.maximum(rig.parents, 0)], np.eye(4))
    local = np.linalg.solve(parent_rest, rig.rest_matrices) @ basis
    pose = np.empty_like(local)
    for level in rig.levels:  # roots first: each parent is posed before its children
        parents = rig.parents[level]
        pose[:, level] = local[:, level] if parents[0] < 0 else pose[:, parents] @ local[:, level]
    return pose


def _root_of(rig, bone: int) -> int:
    while rig.parents[bone] >= 0:
        bone = rig.parents[bone]
    return bone


def _continuous(quaternions: np.ndarray) -> np.ndarray:
    """(T, K, 4) quaternions on one hemisphere per bone over time (q and -q are the same turn)."""
    out = quaternions.copy()
    for t in range(1, len(out)):
        out[t] *= np.where(np.einsum("ki,ki->k", out[t], out[t - 1]) < 0, -1.0, 1.0)[:, None]
    return out


def bake_to_controls(obj, name: str, rig, bone_names: list[str], rotations: np.ndarray, root_bone: str,
                     root_translation: np.ndarray, frame_start: int = 1, thin_tolerance: float = 0.0):
    """A new Action on ``obj`` with the motion on its controls; returns (Action, keyed controls).

    Arguments as ``action.write_action``, with ``rig`` the world-space snapshot the motion was made
    for. Returns (None, []) where no control drives the snapshot's bones.
    """
    scene = bpy.context.scene
    switches = {(bone.name, key): bone[key] for bone in obj.pose.bones for key in FK_SWITCHES if key in bone}
    animation = obj.animation_data
    previous = (animation.action, animation.action_slot) if animation else (None, None)
    frame = scene.frame_current, scene.frame_subframe
    proxies, constraints, held = [], [], []
    try:
        # the rig is evaluated without the user's Action, its limbs in FK
        if animation:
            animation.action = None
        for (bone, key), _ in switches.items():
            obj.pose.bones[bone][key] = FK_SWITCHES[key]
        obj.update_tag()
        bpy.context.view_layer.update()
        rest = np.stack([rig.heads, rig.tails], axis=1)
        follows = find_controls(obj, rig.bone_names, rest)
        if not follows:
            return None, []
        controls = [c for c in obj.pose.bones.keys() if c in follows]  # the rig's bone order
        # controls above those (Rigify's torso and root) are keyed at rest, so that the new Action
        # plays the same whatever pose another Action left them in
        carriers = []
        for control in controls:
            bone = obj.pose.bones[control].parent
            while bone is not None:
                if bone.name not in follows and bone.name not in carriers and is_control(obj, bone.name):
                    carriers.append(bone.name)
                bone = bone.parent
        for carrier in carriers:
            held.append((carrier, obj.pose.bones[carrier].matrix_basis.copy()))
            obj.pose.bones[carrier].matrix_basis = mathutils.Matrix.Identity(4)
        world = np.array(obj.matrix_world)
        poses = _world_poses(rig, bone_names, rotations, root_bone, root_translation)
        for control in controls:
            proxy = bpy.data.objects.new(f"AnimaX proxy {control}", None)
            scene.collection.objects.link(proxy)
            proxies.append(proxy)
            # Only the root bone's tree is placed by the motion; the snapshot's other roots (a
            # generated rig's shoulders and thighs hang from mechanism bones) have no location, so
            # their controls take the turn and stay where the rig's own chain puts them
            placed = _root_of(rig, rig.bone_index[follows[control]]) == rig.bone_index[root_bone]
            follow = obj.pose.bones[control].constraints.new("COPY_TRANSFORMS" if placed else "COPY_ROTATION")
            follow.name = "AnimaX bake"
            follow.target = proxy
            constraints.append((control, follow))
        # each control moves rigidly with the bone it follows: pose = bone pose @ bone rest^-1 @ control rest
        offsets = np.stack([np.linalg.solve(rig.rest_matrices[rig.bone_index[follows[c]]],
                                            world @ np.array(obj.data.bones[c].matrix_local)) for c in controls])
        targets = poses[:, [rig.bone_index[follows[c]] for c in controls]] @ offsets
        local = np.empty((len(rotations), len(controls), 4, 4))
        for t in range(len(rotations)):
            for proxy, target in zip(proxies, targets[t]):
                proxy.matrix_world = mathutils.Matrix(target.tolist())
            bpy.context.view_layer.update()
            for k, control in enumerate(controls):
                bone = obj.pose.bones[control]
                local[t, k] = obj.convert_space(pose_bone=bone, matrix=bone.matrix, from_space="POSE",
                                                to_space="LOCAL")
    finally:
        for carrier, basis in held:
            obj.pose.bones[carrier].matrix_basis = basis
        for control, follow in constraints:
            obj.pose.bones[control].constraints.remove(follow)
        for proxy in proxies:
            bpy.data.objects.remove(proxy)
        for (bone, key), value in switches.items():
            obj.pose.bones[bone][key] = value
        if animation and previous[0] is not None:
            animation.action, animation.action_slot = previous
        scene.frame_set(frame[0], subframe=frame[1])

    quaternions = np.array([[mathutils.Matrix(m.tolist()).to_quaternion() for m in row] for row in local])
    modes = [obj.pose.bones[c].rotation_mode for c in controls]
    keys = rotation_keys(_continuous(quaternions), modes)
    channels = [(c, prop, values) for c, (prop, values) in zip(controls, keys)]
    for k, control in enumerate(controls):
        location = local[:, k, :3, 3]
        if not obj.data.bones[control].use_connect and np.abs(location).max() > _MOVES:
            channels.append((control, "location", location))
    rest = np.tile([1.0, 0.0, 0.0, 0.0], (len(rotations), len(carriers), 1))
    modes = [obj.pose.bones[c].rotation_mode for c in carriers]
    channels += [(c, prop, values) for c, (prop, values) in zip(carriers, rotation_keys(rest, modes))]
    channels += [(c, "location", np.zeros((len(rotations), 3))) for c in carriers]
    for bone, key in switches:
        channels.append((bone, f'["{key}"]', np.full((len(rotations), 1), FK_SWITCHES[key])))
    action = write_channels(obj, name, channels, frame_start, thin_tolerance)
    return action, controls + carriers
