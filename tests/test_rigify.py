"""The default bone choice on every Rigify metarig that ships with Blender, built with bpy here.

Rigify's metarigs have 29 to 190 deform bones; AnimaX's models tell at most ``BODY_JOINTS`` joints apart,
so for the large ones the snapshot takes the body alone (``core.skeleton``). Bones left out keep
their rest pose, which is exact for the chosen joints: forward kinematics of the snapshot puts
them where Blender does.
"""

import time
from pathlib import Path
from types import SimpleNamespace

import bpy  # noqa: I001 - bpy first: it puts addon_utils on the path
import addon_utils
import mathutils
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animax_addon.core.rig import BODY_JOINTS
from animax_addon.panels import _default_choice
from animax_addon.snapshot import default_choice, rig_from_armature
from backend.evaluation.bench_rigs import create_metarig
from backend.reconstruction.kinematics import forward_kinematics

SIDES = ("L", "R")


def _sided(*names):
    return [f"{n}.{s}" for n in names for s in SIDES]


# per metarig: bones the choice must keep (the body) and bones it must leave out (face, fingers, ...)
METARIGS = {
    "Basic.basic_human": (
        ["spine", "spine.003", "spine.004", "spine.006", *_sided("upper_arm", "forearm", "hand", "thigh", "shin",
                                                                   "foot", "toe")],
        _sided("breast", "pelvis", "heel.02")),
    "Basic.basic_quadruped": (
        ["spine", "spine.004", "spine.008", "spine.011", *_sided("front_thigh", "front_shin", "thigh", "shin", "foot")],
        _sided("breast", "pelvis")),
    "human": (
        ["spine", "spine.001", "spine.003", "spine.004", "spine.006", *_sided("shoulder", "upper_arm", "forearm",
                                                                                "hand", "thigh", "shin", "foot")],
        ["face", "jaw", "nose", "tongue", *_sided("eye", "ear", "lid.T", "f_index.01", "thumb.01", "palm.01",
                                                  "f_pinky.03", "breast", "heel.02")]),
    "Animals.bird": (
        ["spine", "spine.003", "spine.006", "head", *_sided("Wing", "Wing.002", "thigh", "shin")],
        ["beak.001.T", *_sided("eye", "t_index.001", "t_thumb.002", "tongue.001")]),
    "Animals.cat": (
        ["spine", "spine.003", "tail.004", *_sided("upper_arm", "forearm", "thigh", "shin", "foot")],
        ["face", "jaw", *_sided("eye", "ear", "f_index.001", "r_ring.002")]),
    "Animals.horse": (
        ["spine.001", "skull", "tail.005",
         *_sided("upper_arm", "forearm", "f_hoof", "thigh", "lower_leg", "hind_foot", "r_hoof")],
        ["jaw", "mane_base.01", "mane_top.06", *_sided("eye", "ear", "skull")]),
    "Animals.shark": (
        ["spine", "spine.003", "spine.007", *_sided("side_fin"), "top_fin"], ["jaw", *_sided("eye")]),
    "Animals.wolf": (
        ["spine", "spine.004", "spine.008", "spine.011", *_sided("front_thigh", "front_shin", "thigh", "shin", "foot")],
        ["face", "jaw", *_sided("eye", "ear", "f_index.01", "r_pinky.03", "breast")]),
}


@pytest.fixture(scope="module", autouse=True)
def rigify():
    yield
    addon_utils.disable("rigify", default_set=True)


@pytest.fixture(autouse=True)
def empty():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if "rigify" not in bpy.context.preferences.addons:  # a factory reset disables add-ons
        addon_utils.enable("rigify", default_set=True, handle_error=None)


def metarig(name: str):
    """Rigify's metarig ``name`` (a module of rigify.metarigs), built as Rigify's Add menu does."""
    return create_metarig(bpy, name)


def test_every_shipped_metarig_is_covered():
    import rigify.metarigs

    folder = Path(rigify.metarigs.__file__).parent
    found = {".".join(p.relative_to(folder).with_suffix("").parts) for p in folder.rglob("*.py")}
    assert found - {"__init__", "Animals.__init__", "Basic.__init__"} == set(METARIGS)


@pytest.mark.parametrize("name", METARIGS)
def test_default_choice_is_the_body_and_fits(name):
    obj = metarig(name)
    body, left_out = METARIGS[name]
    deform = [b.name for b in obj.data.bones if b.use_deform]
    rig = rig_from_armature(obj)  # the panel's default: no refusal
    assert rig.num_joints <= BODY_JOINTS
    assert set(body) <= set(rig.bone_names) <= set(deform)
    assert not set(left_out) & set(rig.bone_names)
    summary = default_choice(obj).summary()
    if left_out:
        assert summary.startswith(f"Body: {rig.num_bones} of {len(deform)} deform bones; ")
    else:  # small enough: every deform bone, and no line in the panel
        assert rig.bone_names == deform and summary is None


def test_human_metarig_leaves_face_and_fingers_at_rest_and_says_so():
    obj = metarig("human")
    assert default_choice(obj).summary() == "Body: 23 of 159 deform bones; face, finger and side-leaf bones keep their rest"
    rig = rig_from_armature(obj)
    parents = {b.name: b.parent for b in rig.bones}
    assert parents["hand.L"] == "forearm.L" and parents["spine.004"] == "spine.003"
    assert rig.leaves[rig.bone_index["hand.L"]]  # its fingers left out: the hand gets a tail joint


def long_tail(obj, parent: str, count: int) -> None:
    """``count`` more connected deform bones in a chain from ``parent``'s head, backwards and down."""
    bpy.ops.object.mode_set(mode="EDIT")
    bones = obj.data.edit_bones
    previous = bones[parent]
    head = previous.head.copy()
    for i in range(count):
        bone = bones.new(f"tail.{i:03d}")
        bone.head, bone.tail = head, head + mathutils.Vector((0.0, 0.06, -0.01 * (i % 3)))
        bone.parent, bone.use_connect = previous, i > 0
        previous, head = bone, bone.tail.copy()
    bpy.ops.object.mode_set(mode="OBJECT")


@pytest.mark.parametrize("name", [*METARIGS, "human with a 40-bone tail"])
def test_pose_of_the_chosen_bones_lands_where_forward_kinematics_says(name):
    if name == "human with a 40-bone tail":  # bones left out between chosen ones: every other tail bone
        obj = metarig("human")
        long_tail(obj, "spine", 40)
    else:
        obj = metarig(name)
    obj.location, obj.rotation_euler = (0.3, -0.5, 0.2), (0.2, 0.1, 0.7)
    bpy.context.view_layer.update()
    rig = rig_from_armature(obj)
    if name == "human with a 40-bone tail":
        tail = [n for n in rig.bone_names if n.startswith("tail.")]
        assert rig.num_joints <= BODY_JOINTS and tail[-1] == "tail.039" and len(tail) < 40
        assert rig.bones[rig.bone_index["tail.039"]].parent in rig.bone_names  # gaps bridged
    rng = np.random.default_rng(7)
    rotations = Rotation.from_rotvec(rng.normal(0, 0.5, (rig.num_bones, 3))).as_quat(scalar_first=True)
    locations = np.zeros((rig.num_bones, 3))
    locations[rig.roots] = rng.normal(0, 0.1, (len(rig.roots), 3))
    for bone, rotation, location in zip(rig.bones, rotations, locations):
        pose_bone = obj.pose.bones[bone.name]  # bones left out stay at rest
        pose_bone.rotation_mode = "QUATERNION"
        pose_bone.rotation_quaternion, pose_bone.location = rotation, location
    bpy.context.view_layer.update()

    _, joints = forward_kinematics(rig, rotations[None], locations[None])
    world = obj.matrix_world
    heads = [world @ obj.pose.bones[b.name].head for b in rig.bones]
    tails = [world @ obj.pose.bones[rig.bones[i].name].tail for i in np.flatnonzero(rig.leaves)]
    blender = np.array(heads + tails)
    size = rig.bounding_sphere()[1]
    assert np.abs(blender - rig.joints_rest).max() > 0.1 * size  # the pose moved the joints
    np.testing.assert_allclose(joints[0], blender, atol=1e-5 * size)


def test_panel_shows_the_choice_and_draws_from_the_cache():
    obj = metarig("human")

    class Layout:  # records what the panel draws
        def __init__(self):
            self.labels, self.alert = [], False

        def column(self, align=False):
            return self

        def label(self, text="", icon="NONE"):
            self.labels.append(text)

    context = SimpleNamespace(region=None)
    layout = Layout()
    _default_choice(layout, obj, context)
    assert " ".join(layout.labels) == default_choice(obj).summary() and not layout.alert
    times = []
    for _ in range(20):
        start = time.perf_counter()
        _default_choice(Layout(), obj, context)
        times.append(time.perf_counter() - start)
    assert min(times) < 1e-3  # draw runs on every redraw

    for bone in obj.data.bones:  # the face stops deforming: the cache notices
        if bone.parent and bone.parent.name == "face" or bone.name == "face":
            for b in [bone, *bone.children_recursive]:
                b.use_deform = False
    layout = Layout()
    _default_choice(layout, obj, context)
    assert " ".join(layout.labels) == "Body: 23 of 67 deform bones; finger and side-leaf bones keep their rest"
