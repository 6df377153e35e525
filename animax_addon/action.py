"""Write a generated motion as a new Action of keyframes on the armature's pose bones.

Keys are LINEAR: dense keys (one per frame) then play back exactly what the worker produced,
and thinned keys stay within the thinning tolerance between frames, which Bezier handles would
not promise (an auto-clamped curve overshoots the straight line it replaces). Animators can
switch the interpolation afterwards. Blender 5.0 layered Actions: one slot for the object, one
layer with one keyframe strip, and the F-Curves in that slot's channelbag.
"""

from __future__ import annotations

import bpy
import numpy as np

from .core.keys import keep_keys

_LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value


def _curves(channelbag, bone: str, prop: str, values: np.ndarray, frames: np.ndarray, keep: np.ndarray):
    path = f'pose.bones["{bpy.utils.escape_identifier(bone)}"].{prop}'
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
    hemisphere per bone over time, at the scene's frame rate. ``root_translation``: (T, 3) the
    root pose bone's location against the world-space rig snapshot; divided here by the
    object's uniform scale to give Blender's pose location. ``thin_tolerance``: drop keys that
    linear interpolation reproduces within it (quaternion components together per bone; for the
    root location, in the armature's own units).
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
    locations = root_translation / scale
    keys = frame_start + np.arange(frames, dtype=np.float64)

    action = bpy.data.actions.new(name)  # Blender appends .001 etc. rather than reuse a name
    slot = action.slots.new(id_type="OBJECT", name=obj.name)
    strip = action.layers.new("AnimaX").strips.new(type="KEYFRAME")
    channelbag = strip.channelbags.new(slot)
    for b, bone in enumerate(bone_names):
        keep = keep_keys(rotations[:, b], thin_tolerance)
        _curves(channelbag, bone, "rotation_quaternion", rotations[:, b], keys, keep)
        obj.pose.bones[bone].rotation_mode = "QUATERNION"
    _curves(channelbag, root_bone, "location", locations, keys, keep_keys(locations, thin_tolerance))

    animation = obj.animation_data or obj.animation_data_create()
    if animation.action is not None:
        animation.action.use_fake_user = True  # stays in the file and in the Action menu
    animation.action = action
    animation.action_slot = slot
    return action
