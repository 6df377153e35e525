"""Template renders: what the cameras see, and nothing of the user's changed afterwards."""

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from animax_addon import templates  # noqa: E402
from animax_addon.core.cameras import make_camera_rig  # noqa: E402
from animax_addon.core.templates_style import TEMPLATE_BACKGROUND  # noqa: E402
from animax_addon.snapshot import rig_from_armature, upright_frame  # noqa: E402
from backend.data.blender_build import build_creature  # noqa: E402
from backend.data.rig_world import FAMILIES  # noqa: E402

SIZE = 64


@pytest.fixture
def fox():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = build_creature(FAMILIES["quadruped"](np.random.default_rng(2)), "Fox")
    obj.location = (0.5, 1.0, 0.2)
    obj.rotation_euler = (0.0, 0.0, 0.4)
    obj.scale = (1.5,) * 3
    bpy.ops.mesh.primitive_cube_add(location=(30, 0, 0))  # the user's own object, out of view
    bpy.context.scene.frame_set(7)
    bpy.context.scene.render.resolution_x = 1234
    bpy.context.view_layer.update()
    rig = rig_from_armature(obj)
    return obj, rig, make_camera_rig(*rig.bounding_sphere(), size=256)


def _state(obj):
    """Everything render_templates could disturb: data-block names, settings, selection, pose."""
    scene = bpy.context.scene
    blocks = {
        attr: sorted(block.name for block in getattr(bpy.data, attr))
        for attr in dir(bpy.data)
        if isinstance(getattr(bpy.data, attr, None), bpy.types.bpy_prop_collection)
    }
    render, shading = scene.render, scene.display.shading
    settings = (render.engine, render.resolution_x, render.resolution_y, render.filepath, render.film_transparent,
                render.dither_intensity, render.image_settings.file_format, scene.view_settings.view_transform,
                shading.light, shading.color_type, scene.world, scene.camera)
    selection = sorted(o.name for o in bpy.context.view_layer.objects if o.select_get())
    return (blocks, settings, selection, bpy.context.view_layer.objects.active, scene, scene.frame_current,
            obj.data.pose_position, [tuple(p.rotation_quaternion) for p in obj.pose.bones])


def test_renders_show_the_character_where_the_cameras_see_it(fox):
    obj, rig, cameras = fox
    images = templates.render_templates(obj, cameras, SIZE)
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.uint8
    background = np.all(images == TEMPLATE_BACKGROUND, axis=-1)
    assert background[:, [0, -1]][:, :, [0, -1]].all()  # the corners
    assert 0.7 < background.mean() < 0.99
    # every bone's middle, projected by the (resized) cameras, lands on the character
    small = cameras.resized(SIZE, SIZE)
    middles = small.to_normalized((rig.heads + rig.tails) / 2)
    pixels, _ = small.project(middles)
    for v in range(4):
        for x, y in np.rint(pixels[v]).astype(int):
            assert not background[v, y - 1 : y + 2, x - 1 : x + 2].all(), (v, x, y)
    # and the character covers little beyond its bounding sphere's silhouette
    assert not (~background[:, :, :4]).any() and not (~background[:, :4]).any()
    # different views see different things
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(images[a].astype(int) - images[b]).mean() > 1.0


def test_rest_pose_is_rendered_and_nothing_of_the_users_changes(fox):
    obj, rig, cameras = fox
    rest = templates.render_templates(obj, cameras, SIZE)
    for pose_bone in obj.pose.bones:  # the user is mid-pose: the templates still show the rest pose
        pose_bone.rotation_mode = "QUATERNION"
        pose_bone.rotation_quaternion = (0.8, 0.6, 0.0, 0.0)
    obj.select_set(True)
    bpy.context.view_layer.update()
    before = _state(obj)
    posed = templates.render_templates(obj, cameras, SIZE)
    assert _state(obj) == before
    np.testing.assert_array_equal(posed, rest)


def test_a_failure_midway_leaves_nothing_behind(fox, monkeypatch):
    obj, rig, cameras = fox
    before = _state(obj)
    read = templates._read_png
    calls = []

    def fail_on_second(path, size):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return read(path, size)

    monkeypatch.setattr(templates, "_read_png", fail_on_second)
    with pytest.raises(RuntimeError, match="disk full"):
        templates.render_templates(obj, cameras, SIZE)
    assert len(calls) == 2 and _state(obj) == before


def test_an_armature_without_a_skinned_mesh_is_refused(fox):
    obj, rig, cameras = fox
    bpy.data.objects.remove(obj.children[0])
    with pytest.raises(templates.TemplateError, match="deforms no visible mesh, .*; skin a mesh to it"):
        templates.render_templates(obj, cameras, SIZE)


def test_cameras_frame_the_mesh_where_bones_reach_far_past_it(fox):
    obj, rig, _ = fox
    frame = upright_frame(obj).rotation  # the fox turned about Z: its spheres centred in its own axes
    center, radius = templates.framing_sphere(obj, rig)  # a skin that hugs its bones: the joints frame it
    assert np.array_equal(center, rig.bounding_sphere(frame)[0]) and radius == rig.bounding_sphere(frame)[1]
    mesh_center, mesh_radius = templates.rest_mesh_sphere(obj, frame)
    # a glTF import's leaf bone: its tail 20 radii above the character, no vertex on it
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    antenna = obj.data.edit_bones.new("antenna")
    antenna.parent = obj.data.edit_bones[rig.bones[rig.roots[0]].name]
    antenna.head, antenna.tail = (0.0, 0.0, 1.0), (0.0, 0.0, 1.0 + 20 * mesh_radius / 1.5)
    bpy.ops.object.mode_set(mode="OBJECT")
    pose_position = obj.data.pose_position
    obj.pose.bones[rig.bone_names[0]].rotation_mode = "XYZ"
    obj.pose.bones[rig.bone_names[0]].rotation_euler = (0.3, 0.0, 0.0)  # posed: framing takes the rest
    bpy.context.view_layer.update()
    long = rig_from_armature(obj)
    assert "antenna" in long.bone_names and long.bounding_sphere()[1] > 5 * mesh_radius
    center, radius = templates.framing_sphere(obj, long)
    np.testing.assert_allclose(center, mesh_center, atol=1e-6 * mesh_radius)
    assert radius == pytest.approx(mesh_radius)
    assert obj.data.pose_position == pose_position  # the user's pose setting is put back
