"""Characters that do not stand upright on Z in the world, with real Blender rigs: an armature
object turned as a whole is seen in its own frame (same cameras, templates and motion as unturned),
a rest pose lying down in its data and in the scene is told, and the benchmark's rigs are neither
turned nor told."""

import math
import re
from types import SimpleNamespace

import bpy
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animax_addon import templates
from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import render_pose_maps
from animax_addon.panels import _upright
from animax_addon.snapshot import rig_from_armature, upright_frame, upright_warning
from backend.data.blender_build import build_creature
from backend.data.rig_world import FAMILIES
from backend.evaluation.bench_rigs import bench_rigs, create_metarig
from backend.reconstruction.kinematics import forward_kinematics
from backend.reconstruction.reconstruct import reconstruct

SIZE = 64  # RGB templates
POSE_SIZE = 128  # pose maps


def biped(family: str = "biped"):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = build_creature(FAMILIES[family](np.random.default_rng(3)), "Hero")
    bpy.context.view_layer.update()
    return obj


def turn_object(obj, euler_deg, location=(0.0, 0.0, 0.0), scale=1.0):
    obj.rotation_euler = [math.radians(a) for a in euler_deg]
    obj.location, obj.scale = location, (scale,) * 3
    bpy.context.view_layer.update()


def lay_down_in_data(obj, euler_deg):
    """Model the character turned: the turn applied to the armature and its mesh (Ctrl+A > Rotation)."""
    turn_object(obj, euler_deg)
    for other in bpy.context.scene.objects:
        other.select_set(True)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.transform_apply(location=False, rotation=True, scale=False)
    bpy.context.view_layer.update()


def views(obj):
    """The snapshot, its cameras as Animate places them, RGB templates and pose-map templates."""
    rig = rig_from_armature(obj)
    cameras = templates.camera_rig(obj, rig, POSE_SIZE)
    rgb = templates.render_templates(obj, cameras, SIZE)
    pose = render_pose_maps(cameras, rig.joints_rest[None], rig.joint_parents)[:, 0]
    return rig, cameras, rgb, pose


def differing(a, b) -> float:
    """The fraction of pixels that differ by more than a few levels."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > 8).mean())


def test_an_armature_object_turned_as_a_whole_is_seen_and_animated_as_unturned():
    obj = biped()
    rig0, cameras0, rgb0, pose0 = views(obj)
    local0 = np.linalg.inv(np.array(obj.matrix_world)) @ cameras0.blender_matrices_world()
    # What the world's axes showed: lying-down templates, far from the upright ones (before the frame)
    turn_object(obj, (90, 0, 30), location=(1.0, -2.0, 0.5), scale=1.5)
    rig = rig_from_armature(obj)
    world_cameras = make_camera_rig(*rig.bounding_sphere(), SIZE)
    assert differing(templates.render_templates(obj, world_cameras, SIZE), rgb0) > 0.03  # 0.066 measured

    frame = upright_frame(obj)
    assert frame.warning is None and frame.evidence == "legs and feet"
    rig, cameras, rgb, pose = views(obj)
    local = np.linalg.inv(np.array(obj.matrix_world)) @ cameras.blender_matrices_world()
    local[:, :3, :3] *= 1.5  # the object's scale, which the inverse took from the cameras' axes
    np.testing.assert_allclose(local, local0, atol=1e-5)  # the cameras, relative to the rig
    assert cameras.radius == pytest.approx(1.5 * cameras0.radius, rel=1e-5)
    np.testing.assert_allclose(cameras.plucker_rays(), cameras0.plucker_rays(), atol=1e-12)
    assert differing(rgb, rgb0) < 0.003  # the same renders, up to an edge pixel's rounding
    assert differing(pose, pose0) < 0.003

    # The motion comes back in the rig's own terms: the same rotations and root location, whose
    # joints the turned object then carries
    rng = np.random.default_rng(0)
    rotations = Rotation.from_rotvec(rng.normal(0, 0.25, (3, rig.num_bones, 3))).as_quat()[..., [3, 0, 1, 2]]
    locations = np.zeros((3, rig.num_bones, 3))
    locations[:, rig.roots[0]] = [0.0, 0.0, 0.1]
    results, truths = [], []
    for snapshot, placed in ((rig0, cameras0), (rig, cameras)):
        _, joints = forward_kinematics(snapshot, rotations, locations * (placed.radius / cameras0.radius))
        results.append(reconstruct(snapshot, placed, render_pose_maps(placed, joints, snapshot.joint_parents)))
        truths.append(joints)
    unturned, turned = results
    np.testing.assert_allclose(np.abs(np.einsum("tbi,tbi->tb", turned.rotations, unturned.rotations)), 1, atol=1e-3)
    np.testing.assert_allclose(turned.root_translation / 1.5, unturned.root_translation, atol=2e-3)
    for result, truth, placed in zip(results, truths, (cameras0, cameras)):  # and both are the motion drawn
        assert np.linalg.norm(result.joints - truth, axis=-1).mean() < 0.01 * placed.radius


class Layout:
    """The panel's layout calls that ``_upright`` makes, recorded."""

    def __init__(self):
        self.labels, self.alert = [], False

    def box(self):
        return self

    def column(self, align=False):
        return self

    def label(self, text="", icon="NONE"):
        self.labels.append(text)


def test_a_rest_lying_down_in_its_data_and_in_the_scene_is_told_and_seen_standing():
    obj = biped()
    _, _, rgb0, pose0 = views(obj)
    lay_down_in_data(obj, (-90, 0, 0))  # modelled on its back, feet towards -Y
    frame = upright_frame(obj)
    assert frame.warning.startswith("'Hero' lies on its back in its rest pose and in the scene (its legs point "
                                    "along -Y)")
    assert "to the rotation X 90°, Y 0°, Z 0°" in frame.warning
    # the panel says it before Animate
    layout = Layout()
    _upright(layout, obj, SimpleNamespace(region=None))
    assert layout.alert and layout.labels[0] == "Not upright"
    assert " ".join(layout.labels[1:]) == frame.warning
    # and the cameras still show it standing, as the model knows characters
    _, _, rgb, pose = views(obj)
    assert differing(rgb, rgb0) < 0.003 and differing(pose, pose0) < 0.003

    # doing what it says: stood up by its object, nothing more to tell, the same templates
    advised = re.search(r"X (-?\d+)°, Y (-?\d+)°, Z (-?\d+)°", frame.warning).groups()
    obj.rotation_euler = [math.radians(float(v)) for v in advised]
    bpy.context.view_layer.update()
    assert upright_warning(obj) is None  # the panel's cached line noticed the new rotation
    np.testing.assert_allclose(upright_frame(obj).rotation, np.eye(3), atol=1e-6)
    _, _, rgb, pose = views(obj)
    assert differing(rgb, rgb0) < 0.003 and differing(pose, pose0) < 0.003


def test_a_rest_modelled_facing_x_is_seen_from_its_front():
    obj = biped("quadruped")
    _, _, rgb0, pose0 = views(obj)
    lay_down_in_data(obj, (0, 0, 90))  # modelled facing +X: nothing to tell, the cameras turn with it
    frame = upright_frame(obj)
    assert frame.warning is None
    np.testing.assert_allclose(frame.rotation, Rotation.from_euler("z", 90, degrees=True).as_matrix(), atol=1e-6)
    _, _, rgb, pose = views(obj)
    assert differing(rgb, rgb0) < 0.003 and differing(pose, pose0) < 0.003


def _metarig(module: str):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return create_metarig(bpy, module)


def test_the_benchmark_rigs_stand_as_they_are_and_are_never_told():
    """Procedural families (snakes, lamps, chests and laptops too), Rigify metarigs and their glTF
    round trips: their cameras stay exactly where they were, also turned as a whole."""
    builds = [rig.build for rig in bench_rigs().values()]
    builds += [lambda bpy, m=m: _metarig(m) for m in ("Animals.bird", "Animals.shark")]  # the other metarigs
    seen = 0
    for build in builds:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        obj = build(bpy)
        frame = upright_frame(obj)
        assert frame.warning is None, obj.name
        assert np.array_equal(frame.rotation, np.eye(3)), obj.name
        turn_object(obj, (90, 0, 45))
        turned = upright_frame(obj)
        assert turned.warning is None, obj.name
        np.testing.assert_allclose(turned.rotation, np.array(obj.matrix_world)[:3, :3], atol=1e-6)
        seen += frame.evidence != "none"
    assert seen == 13  # read by their legs: 4 procedural families, the 6 metarigs, 2 glTF round trips, the bird


def test_a_y_up_import_stood_up_by_its_object_is_seen_standing():
    """An FBX import: the rest pose lies in the armature's data (Y up) and the object's rotation
    stands it up in the scene; seen as it stands, nothing told."""
    obj = biped()
    _, _, rgb0, pose0 = views(obj)
    lay_down_in_data(obj, (-90, 0, 0))
    turn_object(obj, (90, 0, 0))
    frame = upright_frame(obj)
    assert frame.warning is None
    np.testing.assert_allclose(frame.rotation, np.eye(3), atol=1e-6)
    _, _, rgb, pose = views(obj)
    assert differing(rgb, rgb0) < 0.003 and differing(pose, pose0) < 0.003
