"""The RGB template renders: the character's rest pose seen by each camera of the rig.

The same renders of the posed character at given frames make the RGB videos of training samples
built from real assets (``backend/data/assets.py``), so templates and videos look alike.

Workbench in a temporary scene that links the armature and the meshes it deforms, so nothing
the user owns changes: their scene, render settings, selection and active object stay as they
were, and every data-block made here (scene, camera, world, images) is removed afterwards,
also when rendering fails.
"""

from __future__ import annotations

import os
import tempfile

import bpy
import mathutils
import numpy as np

from .core.cameras import CameraRig, blender_lens_mm, make_camera_rig
from .core.rig import sphere_around
from .core.templates_style import TEMPLATE_BACKGROUND

_RENDER_RESULT = "Render Result"


class TemplateError(ValueError):
    """Templates that cannot be rendered; the message says what the user can change."""


def deformed_meshes(obj) -> list:
    """Renderable meshes that move with the armature: an Armature modifier on it, or parented."""

    def follows(other) -> bool:
        if any(m.type == "ARMATURE" and m.object == obj for m in other.modifiers):
            return True
        parent = other.parent
        while parent is not None:
            if parent == obj:
                return True
            parent = parent.parent
        return False

    return [o for o in bpy.data.objects if o.type == "MESH" and not o.hide_render and follows(o)]


FRAMING_EXCESS = 1.25
"""How much larger than the rest mesh's sphere the joints' sphere may be before the mesh frames the
cameras instead (see ``framing_sphere``)."""


def rest_mesh_sphere(obj, rotation=None) -> tuple[np.ndarray, float] | None:
    """Centre and radius (world space) of a sphere around the vertices of the meshes ``obj``
    deforms, in its rest pose and with their modifiers applied; None where it deforms none.
    The centre is their bounding box's in the frame ``rotation`` (world from frame)."""
    meshes = deformed_meshes(obj)
    if not meshes:
        return None
    pose_position = obj.data.pose_position
    points = []
    try:
        obj.data.pose_position = "REST"
        bpy.context.view_layer.update()
        depsgraph = bpy.context.evaluated_depsgraph_get()
        for mesh_obj in meshes:
            evaluated = mesh_obj.evaluated_get(depsgraph)
            mesh = evaluated.to_mesh()
            try:
                local = np.empty(3 * len(mesh.vertices), dtype=np.float64)
                mesh.vertices.foreach_get("co", local)
                world = np.array(evaluated.matrix_world, dtype=np.float64)
                points.append(local.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3])
            finally:
                evaluated.to_mesh_clear()
    finally:
        obj.data.pose_position = pose_position
        bpy.context.view_layer.update()
    points = np.concatenate(points)
    if not len(points):
        return None
    return sphere_around(points, rotation)


def framing_sphere(obj, rig, rotation=None) -> tuple[np.ndarray, float]:
    """The sphere the cameras frame (``core.cameras.make_camera_rig``): the rest joints', as in
    training, unless the bones reach far past the mesh (a glTF import whose leaf tails sit metres
    from the character), where the joints' sphere would leave the mesh a few pixels wide; then
    the rest mesh's. Centred in the character's upright frame (``rotation``, world from upright;
    ``snapshot.upright_frame``'s where None), so a rig turned as a whole is framed alike."""
    if rotation is None:
        from .snapshot import upright_frame

        rotation = upright_frame(obj).rotation
    joints = rig.bounding_sphere(rotation)
    mesh = rest_mesh_sphere(obj, rotation)
    if mesh is not None and joints[1] > FRAMING_EXCESS * mesh[1]:
        return mesh
    return joints


def camera_rig(obj, rig, size: int, frame=None) -> CameraRig:
    """The cameras of ``obj``'s templates: the product's four views around ``framing_sphere``,
    placed in the character's upright frame (``frame``: a ``core.upright.UprightFrame``;
    ``snapshot.upright_frame(obj)`` where None), so the templates show it standing."""
    if frame is None:
        from .snapshot import upright_frame

        frame = upright_frame(obj)
    return make_camera_rig(*framing_sphere(obj, rig, frame.rotation), size, rotation=frame.rotation)


def _srgb_to_linear(value: int) -> float:
    c = value / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _setup_scene(scene, size: int) -> None:
    """Flat grey background, studio light, material colours, exact 8-bit output."""
    render = scene.render
    render.engine = "BLENDER_WORKBENCH"
    render.resolution_x = render.resolution_y = size
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    render.film_transparent = False
    render.dither_intensity = 0.0  # dither noise would break the exact background grey
    render.use_compositing = render.use_sequencer = False
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    render.image_settings.color_depth = "8"
    render.image_settings.compression = 0  # a temp file read once: speed over size
    view = scene.view_settings
    view.view_transform = "Standard"  # so the world grey comes out as exactly TEMPLATE_BACKGROUND
    view.look = "None"
    view.exposure, view.gamma = 0.0, 1.0
    scene.display_settings.display_device = "sRGB"
    shading = scene.display.shading
    shading.light = "STUDIO"
    shading.color_type = "MATERIAL"
    shading.show_object_outline = shading.show_cavity = shading.show_shadows = False
    shading.show_xray = False
    scene.world.color = [_srgb_to_linear(v) for v in TEMPLATE_BACKGROUND]


def _read_png(path: str, size: int) -> np.ndarray:
    image = bpy.data.images.load(path)
    try:
        pixels = np.empty(size * size * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    # byte images give value / 255; Blender's rows run bottom to top
    rgb = np.rint(pixels.reshape(size, size, 4)[::-1, :, :3] * 255)
    return rgb.astype(np.uint8)


def render_templates(obj, cameras: CameraRig, size: int, frames=None) -> np.ndarray:
    """(V, size, size, 3) uint8 sRGB renders of ``obj``'s rest pose from each camera.

    With ``frames`` (scene frames, fractions allowed): the posed character at each of them,
    (V, T, size, size, 3), as the object's animation puts it there.
    """
    meshes = deformed_meshes(obj)
    if not meshes:
        raise TemplateError(
            f"'{obj.name}' deforms no visible mesh, so there is nothing to show the model; "
            "skin a mesh to it (Armature modifier) or make its mesh renderable"
        )
    cameras = cameras.resized(size, size)
    had_render_result = _RENDER_RESULT in bpy.data.images
    user_scene = bpy.context.scene
    user_frame, user_subframe = user_scene.frame_current, user_scene.frame_subframe
    pose_position = obj.data.pose_position
    made = []  # (collection, data-block), removed in reverse order
    try:
        obj.data.pose_position = "REST" if frames is None else "POSE"
        scene = bpy.data.scenes.new("AnimaX templates")
        made.append((bpy.data.scenes, scene))
        scene.world = bpy.data.worlds.new("AnimaX templates")
        made.append((bpy.data.worlds, scene.world))
        camera_data = bpy.data.cameras.new("AnimaX templates")
        made.append((bpy.data.cameras, camera_data))
        camera = bpy.data.objects.new("AnimaX templates", camera_data)
        made.append((bpy.data.objects, camera))
        for o in [obj, camera, *meshes]:
            scene.collection.objects.link(o)
        scene.camera = camera
        scene.frame_current = bpy.context.scene.frame_current
        _setup_scene(scene, size)
        camera_data.sensor_fit = "AUTO"
        camera_data.sensor_width = 36.0
        camera_data.lens = blender_lens_mm(cameras.focal_px, size)
        distance = float(np.linalg.norm(cameras.positions, axis=1).max()) * cameras.radius
        camera_data.clip_start, camera_data.clip_end = 1e-3 * distance, 10 * distance
        renders = []  # (T, V, size, size, 3)
        with tempfile.TemporaryDirectory(prefix="animax_templates_") as folder:
            scene.render.filepath = os.path.join(folder, "view.png")
            for time in [None] if frames is None else [float(f) for f in frames]:
                if time is not None:
                    # Renders show the pose the user's scene evaluated (the temporary scene's own
                    # frame does not move the armature), so step the user's scene; restored below.
                    user_scene.frame_set(int(np.floor(time)), subframe=time - np.floor(time))
                views = []
                for matrix in cameras.blender_matrices_world():
                    camera.matrix_world = mathutils.Matrix(matrix.tolist())
                    bpy.ops.render.render(write_still=True, scene=scene.name)
                    views.append(_read_png(scene.render.filepath, size))
                renders.append(np.stack(views))
        return renders[0] if frames is None else np.stack(renders, axis=1)
    finally:
        if frames is not None:
            user_scene.frame_set(user_frame, subframe=user_subframe)
        for collection, block in reversed(made):
            collection.remove(block)
        if not had_render_result and _RENDER_RESULT in bpy.data.images:
            bpy.data.images.remove(bpy.data.images[_RENDER_RESULT])
        obj.data.pose_position = pose_position
