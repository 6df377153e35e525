"""The add-on's rig snapshot against world-space truth read from Blender itself."""

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from animax_addon.core.rig import BODY_JOINTS, MAX_JOINTS, Rig  # noqa: E402
from animax_addon.snapshot import (  # noqa: E402
    SnapshotError, choice_summary, participating_bones, rig_from_armature,
)
from backend.data.blender_build import build_armature, build_creature  # noqa: E402
from backend.data.rig_world import FAMILIES  # noqa: E402


@pytest.fixture(autouse=True)
def empty():
    bpy.ops.wm.read_factory_settings(use_empty=True)


def _creature(family, seed=5):
    obj = build_creature(FAMILIES[family](np.random.default_rng(seed)), family)
    obj.location = (0.7, -1.5, 2.0)
    obj.rotation_euler = (0.4, -0.3, 2.1)
    obj.scale = (2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    return obj


def _world_truth(obj, names):
    """Heads, tails and rotation parts of rest matrices in world space, straight from bpy."""
    m = obj.matrix_world
    bones = [obj.data.bones[n] for n in names]
    heads = np.array([m @ b.head_local for b in bones])
    tails = np.array([m @ b.tail_local for b in bones])
    rotations = np.array([np.array(m @ b.matrix_local)[:3, :3] / 2.0 for b in bones])
    return heads, tails, rotations


@pytest.mark.parametrize("family", ["biped", "quadruped", "chest"])
def test_snapshot_is_the_world_space_rest_pose(family):
    obj = _creature(family)
    rig = rig_from_armature(obj, max_joints=MAX_JOINTS)  # every bone, past the default budget too
    assert sorted(rig.bone_names) == sorted(obj.data.bones.keys())
    heads, tails, rotations = _world_truth(obj, rig.bone_names)
    size = rig.bounding_sphere()[1]
    np.testing.assert_allclose(rig.heads, heads, atol=1e-5 * size)
    np.testing.assert_allclose(rig.tails, tails, atol=1e-5 * size)
    np.testing.assert_allclose(rig.joints_rest, np.concatenate([heads, tails[rig.leaves]]), atol=1e-5 * size)
    np.testing.assert_allclose(rig.rest_matrices[:, :3, :3], rotations, atol=1e-4)
    np.testing.assert_allclose(rig.rest_matrices[:, :3, 3], heads, atol=1e-5 * size)
    for bone in rig.bones:
        blender_parent = obj.data.bones[bone.name].parent
        assert bone.parent == (blender_parent.name if blender_parent else None)
    # world-space bones are twice as long as the armature's: the scale was applied
    source = FAMILIES[family](np.random.default_rng(5)).rig
    order = [source.bone_index[n] for n in rig.bone_names]
    np.testing.assert_allclose(rig.lengths, 2 * source.lengths[order], rtol=1e-5)


def test_non_deform_bones_are_skipped_and_their_children_reparented():
    obj = _creature("biped")
    spine = [b.name for b in obj.data.bones if b.name.startswith("spine")]
    for name in spine:  # the whole spine chain: the neck and arms climb up to the hips
        obj.data.bones[name].use_deform = False
    rig = rig_from_armature(obj)
    assert not set(spine) & set(rig.bone_names)
    parents = {b.name: b.parent for b in rig.bones}
    assert parents["neck"] == parents["upper_arm.L"] == parents["upper_arm.R"] == "hips"
    assert parents["shin.L"] == "thigh.L" and parents["hips"] is None
    # the re-parented bones still sit where Blender has them
    heads, _, rotations = _world_truth(obj, rig.bone_names)
    np.testing.assert_allclose(rig.heads, heads, atol=1e-5)
    np.testing.assert_allclose(rig.rest_matrices[:, :3, :3], rotations, atol=1e-4)
    assert all(b.deform for b in rig.bones)


def test_bone_collection_and_selection_options():
    obj = _creature("quadruped")
    legs = obj.data.collections.new("Legs")
    front = [b.name for b in obj.data.bones if b.name.startswith("front_")]
    for name in front:
        legs.assign(obj.data.bones[name])
    rig = rig_from_armature(obj, bones="COLLECTION", collection="Legs")
    assert sorted(rig.bone_names) == sorted(front)
    assert rig.parents[rig.bone_index["front_thigh.L"]] == -1  # its spine parent is not in the collection
    assert rig.bones[rig.bone_index["front_foot.L"]].parent == "front_shin.L"

    picked = ["neck", "head", "tail.01"]
    for pose_bone in obj.pose.bones:
        pose_bone.select = pose_bone.name in picked
    assert participating_bones(obj, "SELECTED") == [n for n in obj.data.bones.keys() if n in picked]
    rig = rig_from_armature(obj, bones="SELECTED")
    assert {b.name: b.parent for b in rig.bones} == {"neck": None, "head": "neck", "tail.01": None}


def _errors(obj, **kwargs):
    with pytest.raises(SnapshotError) as info:
        rig_from_armature(obj, **kwargs)
    return str(info.value)


def test_errors_say_what_to_do():
    obj = _creature("quadruped")
    bpy.ops.mesh.primitive_cube_add()
    assert "select an armature" in _errors(bpy.context.active_object)
    assert "select an armature" in _errors(None)
    assert "choose one of" not in _errors(obj, bones="COLLECTION", collection="Nope")
    assert "no bone collection 'Nope' (it has: none); pick one" in _errors(obj, bones="COLLECTION", collection="Nope")
    obj.data.collections.new("Empty")
    assert "'Empty' of 'quadruped' is empty" in _errors(obj, bones="COLLECTION", collection="Empty")
    for pose_bone in obj.pose.bones:
        pose_bone.select = False
    assert "no bones of 'quadruped' are selected; select bones in Pose Mode" in _errors(obj, bones="SELECTED")
    assert "unknown bones option 'ALL'" in _errors(obj, bones="ALL")
    for bone in obj.data.bones:  # no deform bones: the default choice takes from all bones
        bone.use_deform = False
    assert rig_from_armature(obj, max_joints=MAX_JOINTS).bone_names == obj.data.bones.keys()
    for bone in obj.data.bones:
        bone.use_deform = True
    bare = bpy.data.objects.new("Bare", bpy.data.armatures.new("Bare"))
    assert _errors(bare) == "'Bare' has no bones; add bones in Edit Mode or pick another armature"

    obj.scale = (2.0, 2.0, 2.5)
    bpy.context.view_layer.update()
    assert "non-uniform scale; apply the scale" in _errors(obj)
    obj.scale = (-2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    assert "negative (mirroring) or zero scale" in _errors(obj)
    obj.scale = (2.0, 2.0, 2.0)

    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    assert "in Edit Mode; switch to Object or Pose Mode" in _errors(obj)
    bpy.ops.object.mode_set(mode="OBJECT")


def test_too_many_joints_are_sampled_by_default_and_refused_for_a_collection_or_selection():
    bones = [{"name": f"b{i}", "parent": f"b{i - 1}" if i else None,
              "head": [0, 0, i * 0.1], "tail": [0, 0, (i + 1) * 0.1]} for i in range(70)]
    obj = build_armature(Rig.from_dict({"bones": bones}, max_joints=None), "Long")
    rig = rig_from_armature(obj)  # the default: the chain sampled, its ends kept
    assert rig.num_joints == BODY_JOINTS and rig.bone_names[0] == "b0" and rig.bone_names[-1] == "b69"
    group = obj.data.collections.new("Many")
    for bone in obj.data.bones:
        group.assign(bone)
    message = _errors(obj, bones="COLLECTION", collection="Many")  # the user's choice is kept exactly
    assert "'Long' has 71 joints with these bones (70 bones plus 1 leaf tails)" in message
    assert f"at most {BODY_JOINTS}" in message and message.endswith("choose a smaller bone collection or 'Selected bones'")
    for pose_bone in obj.pose.bones:
        pose_bone.select = True
    assert _errors(obj, bones="SELECTED").endswith("select fewer bones")


def test_default_choice_refused_only_where_nothing_fits_says_what_to_do():
    bones = [{"name": "root", "parent": None, "head": [0, 0, 0], "tail": [0, 0, 1]}]
    bones += [{"name": f"spike{i}", "parent": "root", "head": [0, 0, 1], "tail": [np.cos(i), np.sin(i), 2]}
              for i in range(40)]  # 40 leaves from one bone: no chain to sample
    obj = build_armature(Rig.from_dict({"bones": bones}, max_joints=None), "Urchin")
    assert _errors(obj) == (
        "'Urchin' cannot be animated as a whole: even its body alone (roots, branching bones and leaves) has "
        f"81 joints, more than the {BODY_JOINTS} AnimaX tells apart; choose 'Selected bones' or a bone collection "
        "with the bones to animate")
    assert choice_summary(obj) == (_errors(obj), True)  # the panel shows the refusal before Animate
