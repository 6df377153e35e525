"""Real Blender armatures from rig snapshots, for tests that compare our maths with Blender's."""

from __future__ import annotations

import bpy
import numpy as np

from animax_addon.core.rig import Rig
from backend.data import blender_build


def empty_scene() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def build_armature(rig: Rig, name: str = "Rig") -> bpy.types.Object:
    """An armature object at the origin whose edit bones are exactly ``rig``'s bones.

    Bones stay unconnected, so that every bone's pose location takes effect as in our FK.
    """
    return blender_build.build_armature(rig, name, connect=False)


def pose_armature(obj: bpy.types.Object, rig: Rig, rotations: np.ndarray, locations: np.ndarray) -> np.ndarray:
    """Set one frame's pose (B, 4) / (B, 3) on the pose bones; return Blender's pose matrices (B, 4, 4)."""
    for i, bone in enumerate(rig.bones):
        pose_bone = obj.pose.bones[bone.name]
        pose_bone.rotation_mode = "QUATERNION"
        pose_bone.rotation_quaternion = rotations[i]
        pose_bone.location = locations[i]
    bpy.context.view_layer.update()
    return np.array([np.array(obj.pose.bones[b.name].matrix) for b in rig.bones])
