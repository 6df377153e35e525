"""What the worker shows the model of a rig, and how the maps it draws become the rig's motion:
a training creature drawn as it is, any other rig through its training counterpart."""

from dataclasses import replace

import numpy as np
from scipy.spatial.transform import Rotation

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import palette, render_pose_maps
from animax_addon.core.rig import Bone, Rig
from backend.data.dataset import draw_clip
from backend.data.joint_colours import cast
from backend.data.motions import FPS, MOTIONS
from backend.data.render import render_rgb
from backend.data.rig_world import FAMILIES, TRAIN_FAMILIES
from backend.evaluation.counterpart_truth import counterpart_truth
from backend.model import TINY
from backend.reconstruction.kinematics import forward_kinematics
from backend.worker.jobs import scene_motion
from backend.worker.model_body import model_body

SIZE = 64
TURN = Rotation.from_euler("z", 90, degrees=True).as_matrix()  # the character faces +X in the world


def turned(rig: Rig) -> Rig:
    """``rig`` turned by ``TURN`` and moved away from the origin, as a scene may hold it."""
    return Rig([Bone(b.name, b.parent, tuple(TURN @ b.head + 3), tuple(TURN @ b.tail + 3)) for b in rig.bones])


def request_cameras(rig: Rig):
    return make_camera_rig(*rig.bounding_sphere(TURN), SIZE, rotation=TURN)


def test_a_model_trained_on_a_library_is_shown_the_rig_itself_with_the_requests_templates():
    rig = turned(FAMILIES["quadruped"](np.random.default_rng(500)).rig)
    cameras = request_cameras(rig)
    body = model_body(rig, cameras, replace(TINY, retargets=False))
    assert body.creature is None and body.kept.all() and body.drawn is body.rig and body.cameras is cameras
    mine = np.random.default_rng(0).integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8)
    rgb, pose = body.templates(mine)
    assert rgb is mine
    np.testing.assert_array_equal(pose, render_pose_maps(cameras, rig.joints_rest[None], rig.joint_parents,
                                                         palette(rig.num_joints))[:, 0])


def long_legged(rig: Rig) -> Rig:
    """``rig``, a biped, with legs twice as long below the hips."""
    hips = min(b.head[2] for b in rig.bones if b.name.startswith("thigh"))

    def down(point):
        return (point[0], point[1], hips - 2 * (hips - point[2]))

    return Rig([Bone(b.name, b.parent, *((down(b.head), down(b.tail)) if b.name.startswith(("thigh", "shin", "foot"))
                                           else (b.head, b.tail))) for b in rig.bones])


def test_a_training_creature_is_drawn_itself_and_one_of_other_proportions_as_its_counterpart():
    biped = FAMILIES["biped"](np.random.default_rng(500)).rig
    rig = turned(biped)
    cameras = request_cameras(rig)
    body = model_body(rig, cameras)
    assert body.creature is None and body.kept.all() and body.drawn is body.rig and body.cameras is cameras
    mine = np.zeros((4, SIZE, SIZE, 3), dtype=np.uint8)
    assert body.templates(mine)[0] is mine
    # the biped's tree, but legs no biped the model was trained on has
    rig = turned(long_legged(biped))
    body = model_body(rig, request_cameras(rig))
    assert body.kept.all() and body.creature.family == "biped"
    names = body.creature.rig.joint_names
    assert [names[j] for j in body.counterparts] == list(rig.joint_names)  # joint for joint


def test_another_rig_is_drawn_as_its_counterpart_creature_as_training_draws_it():
    rig = turned(FAMILIES["many_legged"](np.random.default_rng(500)).rig)  # a family never trained on
    cameras = request_cameras(rig)
    body = model_body(rig, cameras)
    assert body.creature is not None and body.drawn is body.creature.rig
    creature = body.creature.rig
    assert body.cameras.rotation.tolist() == np.eye(3).tolist()  # training creatures stand upright
    assert body.cameras.width == SIZE and body.cameras.num_views == cameras.num_views
    mine = np.zeros((4, SIZE, SIZE, 3), dtype=np.uint8)
    rgb, pose = body.templates(mine)
    assert rgb.shape == mine.shape and rgb.std() > 10  # the creature's capsules, not the request's picture
    np.testing.assert_array_equal(pose, render_pose_maps(body.cameras, creature.joints_rest[None],
                                                         creature.joint_parents)[:, 0])
    assert len(body.counterparts) == body.rig.num_joints


def test_the_counterparts_motion_is_keyed_on_the_rig():
    """The counterpart's true spin, drawn as the model would draw it and read back by the worker,
    turns the rig's bones as the spin carried onto the rig does."""
    rig = turned(FAMILIES["many_legged"](np.random.default_rng(501)).rig)
    cameras = request_cameras(rig)
    body = model_body(rig, cameras)
    creature = body.creature
    rotations, locations = MOTIONS["spin"](creature, np.random.default_rng(0), 17, FPS)
    _, joints = forward_kinematics(creature.rig, rotations, locations)
    maps = render_pose_maps(body.cameras, joints, creature.rig.joint_parents, body.colours)
    motion, keys, root = scene_motion(rig, cameras, maps, FPS, body)
    assert keys.shape == (17, rig.num_bones, 4) and root.shape == (17, 3)
    assert motion.joint_names == list(body.rig.joint_names)
    assert (keys[:, ~body.kept] == [1, 0, 0, 0]).all()  # the bones the body leaves out hold their rest
    locations = np.zeros((17, body.rig.num_bones, 3))
    locations[:, body.rig.roots[0]] = root
    keyed = forward_kinematics(body.rig, keys[:, body.kept], locations)[1]
    truth = counterpart_truth(body.rig, creature, body.counterparts, "spin", 0, 17, TURN)
    radius = rig.bounding_sphere()[1]
    error = np.linalg.norm(keyed - truth, axis=-1).mean() / radius
    still = np.linalg.norm(body.rig.joints_rest[None] - truth, axis=-1).mean() / radius
    assert error < 0.08 and error < still / 4



def test_a_model_trained_on_its_cast_draws_even_its_own_kind_of_creature_as_a_cast_member():
    rig = turned(FAMILIES["quadruped"](np.random.default_rng(500)).rig)  # drawn itself without a cast
    cameras = request_cameras(rig)
    assert model_body(rig, cameras).creature is None
    body = model_body(rig, cameras, replace(TINY, cast=True))
    rests = [FAMILIES[f](np.random.default_rng(s)).rig.joints_rest for f, s in cast(TRAIN_FAMILIES) if f == "quadruped"]
    assert body.creature.family == "quadruped"
    assert any(np.array_equal(body.drawn.joints_rest, rest) for rest in rests)


def test_a_model_trained_on_its_cast_draws_a_rig_as_the_cast_member_training_showed_it():
    """With ``Preset.cast`` the counterpart is a member of the cast, and the templates the worker shows
    the model are exactly the rest frames of that member's training clips (``draw_clip``'s)."""
    rig = turned(long_legged(FAMILIES["biped"](np.random.default_rng(500)).rig))
    body = model_body(rig, request_cameras(rig), replace(TINY, cast=True))
    members = {seed: FAMILIES["biped"](np.random.default_rng(seed)).rig for family, seed in cast(TRAIN_FAMILIES)
               if family == "biped"}
    drawn = body.creature.rig.joints_rest
    assert body.creature.family == "biped" and any(np.array_equal(drawn, m.joints_rest) for m in members.values())
    assert (body.counterparts >= 0).all()
    item = next(item for item in (draw_clip(s, SIZE, 3, ["biped"], None, False, 1.0) for s in range(50))
                if np.array_equal(item["clip"].creature.rig.joints_rest, drawn))
    parents = body.creature.rig.joint_parents
    rgb, pose = body.templates(np.zeros((4, SIZE, SIZE, 3), np.uint8))
    np.testing.assert_array_equal(rgb, render_rgb(item["cameras"], drawn[None], parents, item["colours"],
                                                  item["radii"])[:, 0])
    np.testing.assert_array_equal(pose, item["pose_rest"])
