"""The character's upright frame (``core.upright``) and cameras placed in it, without Blender."""

import itertools
import math
import re

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animax_addon.core.cameras import CameraError, CameraRig, make_camera_rig
from animax_addon.core.rig import Bone, Rig, sphere_around
from animax_addon.core.upright import UprightFrame, body_directions, upright_frame

# A small biped standing on Z and facing -Y: (name, head, tail)
BIPED = [
    ("hips", (0, 0, 1.0), (0, 0, 1.2)),
    ("spine", (0, 0, 1.2), (0, 0, 1.5)),
    ("head", (0, 0, 1.5), (0, 0, 1.75)),
    *[(f"{part}.{side}", (x, y0, z0), (x, y1, z1))
      for side, x in (("L", 0.1), ("R", -0.1))
      for part, (y0, z0), (y1, z1) in (("thigh", (0, 1.0), (0.02, 0.5)), ("shin", (0.02, 0.5), (0, 0.08)),
                                       ("foot", (0, 0.08), (-0.15, 0.0)))],
    ("upper_arm.L", (0.2, 0, 1.45), (0.5, 0, 1.45)),
    ("upper_arm.R", (-0.2, 0, 1.45), (-0.5, 0, 1.45)),
]
NAMES = [b[0] for b in BIPED]
HEADS, TAILS = np.array([b[1] for b in BIPED], float), np.array([b[2] for b in BIPED], float)
DEFORM = np.ones(len(BIPED), bool)
Z = np.array([0.0, 0.0, 1.0])


def quarter_turns() -> list[np.ndarray]:
    """The 24 rotations that map axes onto axes."""
    turns = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                turns.append(m)
    return turns


def frame(turn=np.eye(3), object_rotation=np.eye(3), names=NAMES, heads=HEADS, tails=TAILS) -> UprightFrame:
    """The frame of the biped modelled turned by ``turn`` in its armature, its object rotated."""
    return upright_frame(names, heads @ turn.T, tails @ turn.T, DEFORM, object_rotation, "Hero")


def test_a_standing_rig_is_seen_in_its_objects_axes_however_the_object_is_turned():
    for rotation in [np.eye(3), *Rotation.random(8, random_state=0).as_matrix()]:
        found = frame(object_rotation=rotation)
        np.testing.assert_allclose(found.rotation, rotation, atol=1e-12)
        assert found.warning is None and found.evidence == "legs and feet"
    assert np.array_equal(frame().rotation, np.eye(3))  # exactly: upright rigs' cameras stay as they were


def test_every_quarter_turn_of_the_rest_is_stood_up_and_faced_front():
    for turn in quarter_turns():
        # modelled turned, the object unrotated: the frame undoes the turn
        found = frame(turn)
        np.testing.assert_allclose(found.rotation, turn, atol=1e-12)
        lying = not np.allclose(turn[:, 2], Z)
        assert (found.warning is not None) == lying, turn
        # modelled turned and stood up by its object's rotation (an FBX import with Y up): no warning
        stood = frame(turn, object_rotation=turn.T)
        np.testing.assert_allclose(stood.rotation, np.eye(3), atol=1e-12)
        assert stood.warning is None


def test_a_rest_lying_in_its_data_and_in_the_scene_is_told_with_what_to_do():
    on_its_back = Rotation.from_euler("x", -90, degrees=True).as_matrix()  # legs along -Y, face up
    found = frame(on_its_back)
    assert found.warning.startswith("'Hero' lies on its back in its rest pose and in the scene (its legs point "
                                    "along -Y)")
    assert "turn the armature object (with its mesh) 90° about the scene's X axis (to the rotation X 90°, Y 0°, " \
           "Z 0°) before animating it" in found.warning
    face_down = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    assert "lies face down" in frame(face_down).warning
    on_its_side = Rotation.from_euler("y", 90, degrees=True).as_matrix()
    assert "lies on its side" in frame(on_its_side).warning
    assert "stands on its head" in frame(Rotation.from_euler("y", 180, degrees=True).as_matrix()).warning


@pytest.mark.parametrize("seed", range(6))
def test_the_advised_rotation_stands_the_character_up(seed):
    turn = quarter_turns()[seed * 4 + 1]
    scene = Rotation.random(random_state=seed).as_matrix()  # the object already turned some way
    found = frame(turn, object_rotation=scene)
    if found.warning is None:  # this one stands in the scene already
        assert found.rotation[:, 2] @ Z > math.cos(math.radians(45))
        return
    x, y, z = (float(v) for v in re.search(r"rotation X (-?\d+)°, Y (-?\d+)°, Z (-?\d+)°", found.warning).groups())
    advised = Rotation.from_euler("xyz", [x, y, z], degrees=True).as_matrix()  # Blender's XYZ Euler
    after = frame(turn, object_rotation=advised)
    assert after.warning is None
    assert after.rotation[:, 2] @ Z > math.cos(math.radians(1))  # standing on Z within the rounding


def test_rigs_without_legs_keep_their_objects_axes():
    chain = [(f"seg.{i}", (0, -0.3 * i, 0.05), (0, -0.3 * (i + 1), 0.05)) for i in range(6)]  # a snake
    lamp = [("base", (0, 0, 0), (0, 0, 0.1)), ("arm.01", (0, 0, 0.1), (0, 0.2, 0.4)),
            ("shade", (0, 0.2, 0.4), (0, 0.3, 0.3))]
    rotation = Rotation.from_euler("xz", [90, 30], degrees=True).as_matrix()
    for bones in (chain, lamp):
        names, heads, tails = [b[0] for b in bones], np.array([b[1] for b in bones]), np.array([b[2] for b in bones])
        found = upright_frame(names, heads, tails, np.ones(len(bones), bool), rotation)
        assert found.evidence == "none" and found.warning is None
        np.testing.assert_array_equal(found.rotation, rotation)


def test_legs_that_disagree_or_mechanism_bones_tell_nothing():
    splayed = [(f"leg_{i}", (0, 0, 0.5), (math.cos(a), math.sin(a), 0.4))
               for i, a in enumerate(np.linspace(0, 2 * math.pi, 6, endpoint=False))]  # a spider's, all around
    names, heads, tails = [b[0] for b in splayed], np.array([b[1] for b in splayed]), np.array([b[2] for b in splayed])
    assert body_directions(names, heads, tails, np.ones(6, bool))[0] is None
    # an IK control named after the thigh, pointing back: not a leg
    names = [*NAMES, "MCH-thigh_ik.L", "thigh_twist.R"]
    heads = np.vstack([HEADS, [[0, 0, 1], [0, 0, 1]]])
    tails = np.vstack([TAILS, [[0, 3, 1], [0, 3, 1]]])
    down, _ = body_directions(names, heads, tails, np.ones(len(names), bool))
    np.testing.assert_allclose(down, [0, 0, -1], atol=0.05)


def test_a_tilted_rest_is_told_unless_the_scene_stands_it_up():
    tilt = Rotation.from_euler("xy", [-50, 40], degrees=True).as_matrix()  # legs between the axes
    found = frame(tilt)
    assert found.warning.startswith("'Hero' is not upright: its legs point")
    np.testing.assert_array_equal(found.rotation, np.eye(3))
    stood = frame(tilt, object_rotation=tilt.T)
    assert stood.warning is None
    np.testing.assert_allclose(stood.rotation, np.eye(3))


def test_a_sitting_or_crouching_rest_counts_as_upright():
    # thighs forward, shins down: the legs point 45° off straight down
    names = ["hips", "thigh.L", "shin.L", "thigh.R", "shin.R"]
    heads = np.array([[0, 0, 0.5], [0.1, 0, 0.5], [0.1, -0.4, 0.5], [-0.1, 0, 0.5], [-0.1, -0.4, 0.5]])
    tails = np.array([[0, 0, 0.9], [0.1, -0.4, 0.5], [0.1, -0.4, 0.1], [-0.1, -0.4, 0.5], [-0.1, -0.4, 0.1]])
    found = upright_frame(names, heads, tails, np.ones(5, bool), np.eye(3))
    assert found.warning is None and np.array_equal(found.rotation, np.eye(3))


# --- cameras in the upright frame -----------------------------------------------------------------
def turned_rig(rotation: np.ndarray, offset: np.ndarray) -> Rig:
    parents = {"spine": "hips", "head": "spine"}
    bones = [Bone(name, parents.get(name, "hips" if name != "hips" else None),
                  tuple(rotation @ head + offset), tuple(rotation @ tail + offset))
             for name, head, tail in zip(NAMES, HEADS, TAILS)]
    return Rig(bones)


def test_cameras_in_the_upright_frame_see_a_turned_rig_as_the_unturned_one():
    upright = turned_rig(np.eye(3), np.zeros(3))
    reference = make_camera_rig(*upright.bounding_sphere(), 64)
    for seed in range(4):
        rotation = Rotation.random(random_state=seed).as_matrix()
        turned = turned_rig(rotation, np.array([1.0, -2.0, 0.5]))
        center, radius = turned.bounding_sphere(rotation)
        np.testing.assert_allclose(center, rotation @ reference.center + [1.0, -2.0, 0.5], atol=1e-12)
        assert radius == pytest.approx(reference.radius)
        cameras = make_camera_rig(center, radius, 64, rotation=rotation)
        np.testing.assert_allclose(cameras.to_normalized(turned.joints_rest),
                                   reference.to_normalized(upright.joints_rest), atol=1e-12)
        np.testing.assert_allclose(cameras.to_world(cameras.to_normalized(turned.joints_rest)), turned.joints_rest,
                                   atol=1e-12)
        np.testing.assert_array_equal(cameras.plucker_rays(), reference.plucker_rays())  # what the model sees
        turn = np.eye(4)
        turn[:3, :3], turn[:3, 3] = rotation, [1.0, -2.0, 0.5]
        np.testing.assert_allclose(cameras.blender_matrices_world(), turn @ reference.blender_matrices_world(),
                                   atol=1e-12)


def test_the_cameras_json_carries_the_rotation_only_where_there_is_one():
    plain = make_camera_rig(np.zeros(3), 1.0, 32)
    assert "rotation" not in plain.to_dict()["normalization"]  # files of upright rigs stay as they were
    np.testing.assert_array_equal(CameraRig.from_dict(plain.to_dict()).rotation, np.eye(3))
    rotation = Rotation.from_euler("x", 90, degrees=True).as_matrix().astype(np.float32)  # Blender's precision
    turned = make_camera_rig(np.ones(3), 2.0, 32, rotation=rotation)
    again = CameraRig.from_dict(turned.to_dict())
    np.testing.assert_array_equal(again.rotation, turned.rotation)
    np.testing.assert_array_equal(again.resized(16, 16).rotation, turned.rotation)
    for bad in ([[1, 0, 0], [0, 1, 0], [0, 0, -1]], [[2, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0], [0, 1]],
                [[1, 0, 0], [0, 1, 0], [0, 0, float("nan")]]):
        data = turned.to_dict()
        data["normalization"]["rotation"] = bad
        with pytest.raises(CameraError):
            CameraRig.from_dict(data)


def test_sphere_around_is_the_bounding_box_centre_in_the_frame():
    points = np.array([[0.0, 0, 0], [2, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(sphere_around(points)[0], [1, 0.5, 0])
    rotation = Rotation.from_euler("z", 45, degrees=True).as_matrix()
    turned = points @ rotation.T
    center, radius = sphere_around(turned, rotation)
    np.testing.assert_allclose(center, rotation @ [1, 0.5, 0], atol=1e-12)
    assert radius == pytest.approx(math.hypot(1, 0.5))
