"""Our bpy-free maths against Blender itself (the real bpy module, headless).

Rest matrices with roll, forward kinematics of pose-bone quaternions and locations, inverse
kinematics applied to a real armature, and the Blender <-> OpenCV camera conversion.
"""

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402

from animax_addon.core.cameras import blender_lens_mm, make_camera_rig  # noqa: E402
from animax_addon.core.rig import Rig  # noqa: E402
from backend.reconstruction.kinematics import forward_kinematics, inverse_kinematics  # noqa: E402
from blender_rigs import build_armature, empty_scene, pose_armature  # noqa: E402
from synthetic import random_motion, random_rig  # noqa: E402


def test_rest_matrices_match_blender_including_degenerate_directions():
    rng = np.random.default_rng(1)
    directions = [[0, -1, 0], [1e-5, -1, 0], [0, -1, 3e-3], [0.05, -1, 0.02], [0, 1, 0], [0, 0, 1], [1, 0, 0]]
    directions += list(rng.normal(size=(40, 3)))
    bones = []
    for i, d in enumerate(directions):
        head = rng.normal(size=3)
        tail = head + np.asarray(d, float) / np.linalg.norm(d) * rng.uniform(0.1, 2)
        bones.append({"name": f"b{i}", "parent": None, "head": list(head), "tail": list(tail),
                      "roll": float(rng.uniform(-3, 3))})
    rig = Rig.from_dict({"bones": bones}, max_joints=None)
    empty_scene()
    obj = build_armature(rig)
    blender = np.array([np.array(obj.data.bones[b.name].matrix_local) for b in rig.bones])
    np.testing.assert_allclose(rig.rest_matrices, blender, atol=2e-5)


@pytest.mark.parametrize("shape", ["chain", "fan", "tree"])
def test_forward_kinematics_matches_blender_pose_bones(shape):
    rng = np.random.default_rng(2)
    rig = random_rig(rng, 12, shape)
    rotations, locations, joints = random_motion(rng, rig, frames=3, amplitude=1.5)
    locations[:] = rng.normal(0, 0.3, locations.shape)  # every bone may carry a location
    ours, joints = forward_kinematics(rig, rotations, locations)
    empty_scene()
    obj = build_armature(rig)
    for t in range(3):
        blender = pose_armature(obj, rig, rotations[t], locations[t])
        np.testing.assert_allclose(ours[t], blender, atol=2e-5)
        tails = np.array([obj.pose.bones[rig.bones[b].name].tail for b in rig.joint_bones[rig.joint_is_tail]])
        np.testing.assert_allclose(joints[t, rig.joint_is_tail], tails, atol=2e-5)


@pytest.mark.parametrize("shape", ["chain", "fan", "tail", "tree"])
def test_inverse_kinematics_poses_a_real_armature(shape):
    rng = np.random.default_rng(3)
    rig = random_rig(rng, 15, shape)
    _, _, joints = random_motion(rng, rig, frames=4, amplitude=1.2)
    rotations, locations = inverse_kinematics(rig, joints)
    empty_scene()
    obj = build_armature(rig)
    for t in range(4):
        pose_armature(obj, rig, rotations[t], locations[t])
        heads = np.array([obj.pose.bones[b.name].head for b in rig.bones])
        tails = np.array([obj.pose.bones[rig.bones[b].name].tail for b in rig.joint_bones[rig.joint_is_tail]])
        np.testing.assert_allclose(np.concatenate([heads, tails]), joints[t], atol=1e-5)


def test_camera_rig_projects_like_a_blender_camera():
    rng = np.random.default_rng(4)
    center, radius, size = np.array([0.3, -0.2, 1.1]), 1.7, 200
    cameras = make_camera_rig(center, radius, size)
    points = center + rng.normal(0, 0.5, (20, 3)) * radius
    ours, depth = cameras.project(cameras.to_normalized(points))
    empty_scene()
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = size
    data = bpy.data.cameras.new("cam")
    data.lens = blender_lens_mm(cameras.focal_px, size)
    data.sensor_width = 36.0
    cam = bpy.data.objects.new("cam", data)
    scene.collection.objects.link(cam)
    import mathutils

    for view, matrix in enumerate(cameras.blender_matrices_world()):
        cam.matrix_world = mathutils.Matrix(matrix.tolist())
        ndc = np.array([world_to_camera_view(scene, cam, mathutils.Vector(p)) for p in points])
        pixels = np.stack([ndc[:, 0] * size - 0.5, (1 - ndc[:, 1]) * size - 0.5], axis=1)
        np.testing.assert_allclose(ours[view], pixels, atol=1e-3)
        np.testing.assert_allclose(depth[view] * radius, ndc[:, 2], rtol=1e-6)
