"""Procedural creatures (``rig_world``) as real Blender armatures with one skinned mesh.

Needs ``bpy``: the add-on tests, examples and the demo import it; the GPU machine (no bpy) never
does. The mesh is a capsule around each bone, weighted fully to that bone, so that Workbench
renders of the rest pose look like the bpy-free training renderer's capsules.
"""

from __future__ import annotations

import bpy
import numpy as np

from animax_addon.core.rig import Rig
from backend.data.rig_world import FAMILIES, Creature

FAMILY_COLORS = {
    "biped": (0.80, 0.55, 0.40),
    "quadruped": (0.85, 0.45, 0.15),
    "bird": (0.25, 0.45, 0.80),
    "snake": (0.30, 0.65, 0.25),
    "many_legged": (0.45, 0.30, 0.60),
    "chest": (0.55, 0.35, 0.15),
    "laptop": (0.60, 0.62, 0.65),
    "lamp": (0.85, 0.75, 0.20),
    "robot_arm": (0.90, 0.50, 0.10),
}
"""Linear RGB of each family's material (Workbench shows ``Material.diffuse_color``)."""

RADIUS_PER_LENGTH = 0.2
RADIUS_RANGE = (0.015, 0.06)
"""Capsule radius: a fraction of the bone's length, clamped to this fraction of the rig's size,
so that long bones are not balloons and tiny ones (a hand, a handle) still show."""

_SEGMENTS, _CAP_RINGS = 10, 3  # around the bone; latitude rings per hemispherical cap


def build_armature(rig: Rig, name: str, collection=None, connect: bool = True) -> bpy.types.Object:
    """An armature object at the origin whose bones are exactly ``rig``'s, linked to ``collection``.

    ``connect``: set ``use_connect`` where a bone's head is its parent's tail, as an animator's
    rig would (Blender then ignores a connected bone's location). Uses Edit Mode, so the new
    object becomes the active one.
    """
    collection = bpy.context.scene.collection if collection is None else collection
    armature = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, armature)
    collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    for bone in rig.bones:
        edit = armature.edit_bones.new(bone.name)
        edit.head, edit.tail, edit.roll = bone.head, bone.tail, bone.roll
        edit.use_deform = bone.deform
    for i, bone in enumerate(rig.bones):
        parent = rig.parents[i]
        if parent >= 0:
            edit = armature.edit_bones[bone.name]
            edit.parent = armature.edit_bones[bone.parent]
            edit.use_connect = connect and bool(np.allclose(rig.heads[i], rig.tails[parent], atol=1e-7))
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def _capsule(length: float, radius: float) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Vertices (N, 3) and faces of a capsule along +Y from 0 to ``length`` (bone space)."""
    # latitudes from the head's pole to the tail's; the equator appears twice, once per cap
    lat = np.linspace(-np.pi / 2, 0, _CAP_RINGS + 1)[1:]
    lat = np.concatenate([lat, -lat[::-1]])
    lon = np.linspace(0, 2 * np.pi, _SEGMENTS, endpoint=False)
    ring_y = radius * np.sin(lat) + np.where(np.arange(len(lat)) < _CAP_RINGS, 0.0, length)
    ring_r = radius * np.cos(lat)
    rings = np.stack(
        [
            ring_r[:, None] * np.cos(lon)[None],
            np.broadcast_to(ring_y[:, None], (len(lat), _SEGMENTS)),
            ring_r[:, None] * np.sin(lon)[None],
        ],
        axis=-1,
    ).reshape(-1, 3)
    poles = np.array([[0.0, -radius, 0.0], [0.0, length + radius, 0.0]])
    verts = np.concatenate([rings, poles])
    n_rings, first_pole = len(lat), len(rings)
    faces: list[tuple[int, ...]] = []
    for r in range(n_rings - 1):
        for s in range(_SEGMENTS):
            a, b = r * _SEGMENTS + s, r * _SEGMENTS + (s + 1) % _SEGMENTS
            faces.append((a, a + _SEGMENTS, b + _SEGMENTS, b))  # normals outward
    last = (n_rings - 1) * _SEGMENTS
    for s in range(_SEGMENTS):
        t = (s + 1) % _SEGMENTS
        faces.append((first_pole, s, t))
        faces.append((first_pole + 1, last + t, last + s))
    return verts, faces


def _skin_mesh(heads: np.ndarray, lengths: np.ndarray, axes: np.ndarray, size: float,
               name: str) -> tuple[bpy.types.Mesh, list[np.ndarray]]:
    """A capsule around each bone (heads (B, 3), lengths (B,), rest axes (B, 3, 3) with Y along the
    bone) in armature space, and each bone's vertex indices; ``size`` scales the radius limits."""
    radii = np.clip(RADIUS_PER_LENGTH * lengths, *(np.array(RADIUS_RANGE) * size))
    verts, faces, groups = [], [], []
    offset = 0
    for b in range(len(heads)):
        local, bone_faces = _capsule(lengths[b], radii[b])
        # bone space -> armature space through the rest matrix (Y along the bone, roll included)
        verts.append(local @ axes[b].T + heads[b])
        faces += [tuple(i + offset for i in f) for f in bone_faces]
        groups.append(np.arange(offset, offset + len(local)))
        offset += len(local)
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(np.concatenate(verts).tolist(), [], faces)
    mesh.shade_smooth()
    mesh.validate()
    return mesh, groups


def add_skin(armature: bpy.types.Object, color: tuple[float, float, float], bone_names: list[str] | None = None,
             collection=None) -> bpy.types.Object:
    """A capsule mesh skinned to ``bone_names`` (default: the deform bones) of ``armature``, each
    capsule weighted fully to its bone (Armature modifier, parented); returns the mesh object."""
    collection = bpy.context.scene.collection if collection is None else collection
    bones = armature.data.bones
    names = [b.name for b in bones if b.use_deform] if bone_names is None else list(bone_names)
    if not names:
        raise ValueError(f"'{armature.name}' has no bones to skin")
    heads = np.array([bones[n].head_local for n in names], dtype=np.float64)
    tails = np.array([bones[n].tail_local for n in names], dtype=np.float64)
    axes = np.array([np.array(bones[n].matrix_local)[:3, :3] for n in names])
    points = np.concatenate([heads, tails])
    size = float(np.linalg.norm(points - (points.min(axis=0) + points.max(axis=0)) / 2, axis=1).max())
    mesh, groups = _skin_mesh(heads, np.linalg.norm(tails - heads, axis=1), axes, size, f"{armature.name}_mesh")
    material = bpy.data.materials.new(f"{armature.name}_skin")
    material.diffuse_color = (*color, 1.0)
    mesh.materials.append(material)
    body = bpy.data.objects.new(f"{armature.name}_mesh", mesh)
    collection.objects.link(body)
    body.parent = armature
    for name, indices in zip(names, groups):
        body.vertex_groups.new(name=name).add(indices.tolist(), 1.0, "REPLACE")
    body.modifiers.new("Armature", "ARMATURE").object = armature
    return body


def build_creature(creature: Creature, name: str, collection=None) -> bpy.types.Object:
    """The creature as an armature plus one mesh skinned to it (Armature modifier, parented).

    Returns the armature object, at the origin, linked to ``collection`` (default: the scene's).
    """
    armature = build_armature(creature.rig, name, collection)
    add_skin(armature, FAMILY_COLORS[creature.family], creature.rig.bone_names, collection)
    return armature


def build_sample_scene(seed: int = 0, family: str = "quadruped") -> bpy.types.Object:
    """Add a creature of ``family`` at the origin of the current scene (nothing is reset)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    creature = FAMILIES[family](np.random.default_rng(seed))
    return build_creature(creature, family.replace("_", " ").title().replace(" ", ""))
