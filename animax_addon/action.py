"""Write a generated motion as a new Action of keyframes on the armature's pose bones.

Keys are LINEAR: dense keys (one per frame) then play back exactly what the worker produced,
and thinned keys stay within the thinning tolerance between frames, which Bezier handles would
not promise (an auto-clamped curve overshoots the straight line it replaces). Animators can
switch the interpolation afterwards. Blender 5.0 layered Actions: one slot for the object, one
layer with one keyframe strip, and the F-Curves in that slot's channelbag.

Each bone is keyed in the rotation mode it already has (quaternion, an Euler order, axis-angle):
changing a bone's mode would change how the user's other Actions of the rig play back. The
conversions are NumPy (Blender's Python has no SciPy) and keep every channel continuous over time.
"""

from __future__ import annotations

import bpy
import numpy as np

from .core.keys import keep_keys

_LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
EULER_ORDERS = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")
_DEGENERATE = 1e-9
"""Below this, an Euler triple's outer axes line up (gimbal lock: the cos of the middle angle)
and an axis-angle's axis is undefined (the length of the quaternion's vector part)."""


def _matrices(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices of (..., 4) quaternions (w, x, y, z)."""
    w, x, y, z = np.moveaxis(rotations / np.linalg.norm(rotations, axis=-1, keepdims=True), -1, 0)
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1).reshape(rotations.shape[:-1] + (3, 3))


def _euler_pair(rotations: np.ndarray, order: str) -> np.ndarray:
    """(2, ..., 3) both (X, Y, Z) Euler triples in Blender's ``order`` of (..., 4) quaternions.

    Blender's ``mat3_normalized_to_eulo2``: order "IJK" turns about I first, then J, then K
    (matrix = K @ J @ I); the second triple is the first with the middle angle mirrored
    (180° - b) and the outer two turned by 180°. In gimbal lock both are the same.
    """
    i, j, k = ("XYZ".index(axis) for axis in order)
    m = _matrices(rotations)
    cy = np.hypot(m[..., i, i], m[..., j, i])
    locked = cy < _DEGENERATE
    pair = np.empty((2,) + m.shape[:-1])
    for triple, sign in zip(pair, (1.0, -1.0)):
        triple[..., i] = np.where(locked, np.arctan2(-m[..., j, k], m[..., j, j]),
                                  np.arctan2(sign * m[..., k, j], sign * m[..., k, k]))
        triple[..., j] = np.arctan2(-m[..., k, i], sign * cy)
        triple[..., k] = np.where(locked, 0.0, np.arctan2(sign * m[..., j, i], sign * m[..., i, i]))
    odd = (j - i) % 3 == 2  # XZY, YXZ, ZYX: odd permutations of XYZ, whose angles change sign
    return -pair if odd else pair


def euler_keys(rotations: np.ndarray, orders: list[str]) -> np.ndarray:
    """(T, B, 3) Euler angles (X, Y, Z) of (T, B, 4) quaternions, bone b in Blender's ``orders[b]``.

    Continuous over time as ``Quaternion.to_euler(order, euler_compat)`` makes them: of the two
    triples of each frame, each angle is moved by whole turns to within 180° of the previous
    frame's, and the triple that then lies closer is kept. The first frame starts from rest. A
    motion that pitches past 90° about the middle axis thus stays on one smooth path.
    """
    pairs = np.empty((2,) + rotations.shape[:-1] + (3,))
    orders = np.asarray(orders)
    for order in set(orders.tolist()):
        pairs[:, :, orders == order] = _euler_pair(rotations[:, orders == order], order)
    angles = np.empty(pairs.shape[1:])
    previous = np.zeros(pairs.shape[2:])
    bones = np.arange(pairs.shape[2])
    for t in range(len(angles)):  # each frame depends on the one before: a loop over frames only
        pair = pairs[:, t] + 2 * np.pi * np.round((previous - pairs[:, t]) / (2 * np.pi))
        closer = np.abs(pair - previous).sum(axis=-1).argmin(axis=0)
        previous = angles[t] = pair[closer, bones]
    return angles


def axis_angle_keys(rotations: np.ndarray) -> np.ndarray:
    """(T, B, 4) Blender axis-angle (angle, x, y, z) of (T, B, 4) quaternions, continuous over time.

    Near rest the axis is undefined: the last defined axis is kept (the first one before it). The
    axis is flipped, and the angle with it, wherever it would turn by more than 90° from the
    previous frame's, and the angle is unwrapped to whole turns.
    """
    w, v = rotations[..., 0], rotations[..., 1:]
    length = np.linalg.norm(v, axis=-1)
    defined = length > _DEGENERATE
    axes = np.divide(v, length[..., None], out=np.zeros_like(v), where=defined[..., None])
    frames, bones = length.shape
    last = np.maximum.accumulate(np.where(defined, np.arange(frames)[:, None], -1), axis=0)
    axes = axes[np.where(last >= 0, last, defined.argmax(axis=0)), np.arange(bones)]
    axes[:, ~defined.any(axis=0)] = (0.0, 1.0, 0.0)  # a bone that never turns: Blender's default axis
    turn = np.einsum("tbi,tbi->tb", axes[1:], axes[:-1]) < 0
    axes[1:] *= np.cumprod(np.where(turn, -1.0, 1.0), axis=0)[..., None]
    angles = np.unwrap(2 * np.arctan2(np.einsum("tbi,tbi->tb", v, axes), w), axis=0)
    return np.concatenate([angles[..., None], axes], axis=-1)


def rotation_keys(rotations: np.ndarray, modes: list[str]) -> list[tuple[str, np.ndarray]]:
    """Per bone, the pose-bone property its ``mode`` keys and the (T, C) values of ``rotations``."""
    keys: list = [("rotation_quaternion", rotations[:, b]) for b in range(len(modes))]
    euler = [b for b, mode in enumerate(modes) if mode in EULER_ORDERS]
    if euler:
        angles = euler_keys(rotations[:, euler], [modes[b] for b in euler])
        for column, b in enumerate(euler):
            keys[b] = ("rotation_euler", angles[:, column])
    axis_angle = [b for b, mode in enumerate(modes) if mode == "AXIS_ANGLE"]
    if axis_angle:
        values = axis_angle_keys(rotations[:, axis_angle])
        for column, b in enumerate(axis_angle):
            keys[b] = ("rotation_axis_angle", values[:, column])
    return keys


def _curves(channelbag, bone: str, prop: str, values: np.ndarray, frames: np.ndarray, keep: np.ndarray):
    # a custom property ('["IK_FK"]') is subscripted, a built-in one an attribute
    path = f'pose.bones["{bpy.utils.escape_identifier(bone)}"]{"" if prop.startswith("[") else "."}{prop}'
    count = int(keep.sum())
    for index in range(values.shape[1]):
        curve = channelbag.fcurves.new(path, index=index, group_name=bone)
        curve.keyframe_points.add(count)
        co = np.stack([frames[keep], values[keep, index]], axis=1).astype(np.float32)
        curve.keyframe_points.foreach_set("co", co.ravel())
        curve.keyframe_points.foreach_set("interpolation", np.full(count, _LINEAR, dtype=np.int32))
        curve.update()


def write_action(
    obj,
    name: str,
    bone_names: list[str],
    rotations: np.ndarray,
    root_bone: str,
    root_translation: np.ndarray,
    frame_start: int = 1,
    thin_tolerance: float = 0.0,
):
    """A new Action on ``obj`` with the motion; returns it. The previous Action gets a fake user.

    ``rotations``: (T, B, 4) quaternions (w, x, y, z) relative to rest in pose-bone space, one
    hemisphere per bone over time, at the scene's frame rate; each bone is keyed in its own
    rotation mode, which stays as it is. ``root_translation``: (T, 3) the root pose bone's
    location against the world-space rig snapshot; divided here by the object's uniform scale to
    give Blender's pose location. ``thin_tolerance``: drop keys that linear interpolation
    reproduces within it (a bone's keyed rotation components together: quaternion components,
    Euler or axis-angle radians; for the root location, in the armature's own units). The
    Action's own frame range is the keyed one, so the scene's frame range can stay the user's.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    root_translation = np.asarray(root_translation, dtype=np.float64)
    frames = len(rotations)
    if rotations.shape != (frames, len(bone_names), 4) or root_translation.shape != (frames, 3):
        raise ValueError(
            f"rotations {rotations.shape} and root translation {root_translation.shape} do not match "
            f"{len(bone_names)} bones over {frames} frames"
        )
    missing = [n for n in [*bone_names, root_bone] if n not in obj.pose.bones]
    if missing:
        raise ValueError(f"'{obj.name}' has no bones {missing}; was the armature edited during the run?")
    scale = np.linalg.norm(np.array(obj.matrix_world)[:3, :3], axis=0).mean()
    modes = [obj.pose.bones[bone].rotation_mode for bone in bone_names]
    channels = [(bone, prop, values) for bone, (prop, values) in zip(bone_names, rotation_keys(rotations, modes))]
    channels.append((root_bone, "location", root_translation / scale))
    return write_channels(obj, name, channels, frame_start, thin_tolerance)


def write_channels(obj, name: str, channels: list, frame_start: int = 1, thin_tolerance: float = 0.0):
    """A new Action on ``obj`` keying ``channels`` from ``frame_start``; returns it (see ``write_action``).

    ``channels``: (pose bone, property, (T, C) values) triples, the values already in the
    property's own convention (e.g. from ``rotation_keys``); the property may be a custom one,
    written ``'["name"]'``. The previous Action gets a fake user.
    """
    frames = len(channels[0][2])
    keys = frame_start + np.arange(frames, dtype=np.float64)

    action = bpy.data.actions.new(name)  # Blender appends .001 etc. rather than reuse a name
    action.use_frame_range = True
    action.frame_start, action.frame_end = keys[0], keys[-1]
    slot = action.slots.new(id_type="OBJECT", name=obj.name)
    strip = action.layers.new("AnimaX").strips.new(type="KEYFRAME")
    channelbag = strip.channelbags.new(slot)
    for bone, prop, values in channels:
        _curves(channelbag, bone, prop, values, keys, keep_keys(values, thin_tolerance))

    animation = obj.animation_data or obj.animation_data_create()
    if animation.action is not None:
        animation.action.use_fake_user = True  # stays in the file and in the Action menu
    animation.action = action
    animation.action_slot = slot
    return action
