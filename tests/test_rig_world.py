"""The procedural rig world: valid rigs of every family, and motions that move them as labelled."""

import re

import numpy as np
import pytest

from animax_addon.core.rig import BODY_JOINTS, MAX_JOINTS
from backend.data.dataset import draw_clip
from backend.data.motions import APPLICABLE, KEYWORDS, MOTIONS, NOUNS, applicable, prompt, sample_clip
from backend.data.rig_world import FAMILIES, HELDOUT_FAMILIES, TRAIN_FAMILIES
from backend.data.variety import rest_in_pose
from backend.reconstruction.kinematics import forward_kinematics

SEEDS = range(4)
FRAMES = 17


def make(family, seed):
    return FAMILIES[family](np.random.default_rng(seed))


def play(family, motion, seed):
    creature = make(family, seed)
    rotations, locations = MOTIONS[motion](creature, np.random.default_rng(seed), FRAMES)
    return creature, rotations, locations, forward_kinematics(creature.rig, rotations, locations)[1]


def leaf_tail(creature, chain):
    return creature.rig.joint_names.index(f"{chain[-1]}.tail")


@pytest.mark.parametrize("family", FAMILIES)
def test_rigs_are_valid_and_sized(family):
    for seed in SEEDS:
        creature = make(family, seed)
        assert creature.family == family
        assert creature.rig.num_joints <= MAX_JOINTS
        assert len(creature.roles["root"]) == 1 and creature.rig.bones[creature.rig.bone_index[creature.roles["root"][0]]].parent is None
        for names in creature.roles.values():
            assert names and all(n in creature.rig.bone_index for n in names)
        assert 0.1 <= creature.rig.bounding_sphere()[1] <= 5.0


@pytest.mark.parametrize("family", FAMILIES)
def test_rigs_are_deterministic_and_vary(family):
    assert make(family, 3).rig.to_dict() == make(family, 3).rig.to_dict()
    assert make(family, 3).roles == make(family, 3).roles
    assert not np.allclose(make(family, 3).rig.lengths.sum(), make(family, 4).rig.lengths.sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_applicable_motions_move_plausibly(family):
    for motion in applicable(make(family, 0)):
        for seed in SEEDS:
            creature, rotations, locations, joints = play(family, motion, seed)
            centre, radius = creature.rig.bounding_sphere()
            assert np.allclose(np.linalg.norm(rotations, axis=-1), 1.0), motion
            assert np.isfinite(joints).all() and np.isfinite(locations).all(), motion
            moved = np.linalg.norm(joints - creature.rig.joints_rest, axis=-1).mean(axis=0)
            assert moved.max() > 0.01 * radius, (motion, seed)  # the joints the motion is about move
            assert np.linalg.norm(joints - centre, axis=-1).max() < 2 * radius, (motion, seed)


def test_open_lifts_the_chest_lid_and_keeps_the_base():
    for seed in SEEDS:
        creature, _, _, joints = play("chest", "open", seed)
        lid = leaf_tail(creature, creature.roles["lid"])
        assert joints[-1, lid, 2] > joints[0, lid, 2] + 0.1 * creature.rig.lengths[creature.rig.bone_index["lid"]]
        base = creature.rig.bone_index["base"]
        np.testing.assert_allclose(joints[:, base], np.broadcast_to(creature.rig.joints_rest[base], (FRAMES, 3)), atol=1e-9)
        creature, _, _, joints = play("chest", "close", seed)
        assert joints[-1, lid, 2] < joints[0, lid, 2]


@pytest.mark.parametrize("family,left,right", [("biped", "leg_left", "leg_right"),
                                               ("quadruped", "leg_front_left", "leg_front_right"),
                                               ("quadruped", "leg_back_left", "leg_back_right")])
def test_walk_moves_feet_alternately(family, left, right):
    for seed in SEEDS:
        creature, _, _, joints = play(family, "walk", seed)
        forward = joints[:, [leaf_tail(creature, creature.roles[s]) for s in (left, right)], 1]
        assert forward.std(axis=0).min() > 0.01 * creature.rig.bounding_sphere()[1]
        assert np.corrcoef(forward.T)[0, 1] < -0.3, seed


def test_prompts_name_the_motion_and_vary():
    for family in FAMILIES:
        for motion in APPLICABLE[family]:
            texts = {prompt(make(family, 0), motion, np.random.default_rng(seed)) for seed in range(8)}
            assert len(texts) > 1, (family, motion)
            for text in texts:
                assert any(word in text.lower() for word in KEYWORDS[motion]) and "{" not in text, text
                assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", text), text
    clip = sample_clip(np.random.default_rng(0), families=["chest"], motions=["open"])
    assert any(noun in clip.prompt for noun in NOUNS["chest"]), clip.prompt


def test_sampling_is_deterministic_and_respects_applicability_and_split():
    a, b = (sample_clip(np.random.default_rng(7)) for _ in range(2))
    assert (a.motion, a.prompt) == (b.motion, b.prompt) and np.array_equal(a.joints, b.joints)
    assert a.joints.shape == (17, a.creature.rig.num_joints, 3)
    for seed in range(80):
        clip = sample_clip(np.random.default_rng(seed), motions=("open", "wag", "walk"))
        assert clip.motion in APPLICABLE[clip.creature.family]
        assert clip.creature.family in TRAIN_FAMILIES
    assert {sample_clip(np.random.default_rng(s), families=HELDOUT_FAMILIES).creature.family for s in range(30)} == set(HELDOUT_FAMILIES)
    with pytest.raises(ValueError):
        sample_clip(np.random.default_rng(0), families=["chest"], motions=["walk"])


def test_a_rig_rested_in_a_pose_has_that_pose_as_its_rest():
    creature, rotations, _, _ = play("quadruped", "crouch", 4)
    frame = rotations[9]
    rested = rest_in_pose(creature, frame)
    still = frame.copy()
    still[creature.rig.parents < 0] = (1, 0, 0, 0)  # the root keeps its rest: same place, same facing
    expected = forward_kinematics(creature.rig, still[None])[1][0]
    np.testing.assert_allclose(rested.rig.joints_rest, expected, atol=1e-9)
    assert np.abs(rested.rig.joints_rest - creature.rig.joints_rest).max() > 0.05  # the legs did bend
    np.testing.assert_allclose(rested.rig.lengths, creature.rig.lengths)
    assert rested.rig.bone_names == creature.rig.bone_names and rested.roles == creature.roles
    identity = np.tile([1.0, 0, 0, 0], (creature.rig.num_bones, 1))
    np.testing.assert_allclose(rest_in_pose(creature, identity).rig.joints_rest, creature.rig.joints_rest, atol=1e-9)


def test_re_rested_chests_rest_open_as_laptops_do():
    """A laptop rests open, so its *open* starts away from the rest pose and ends at it; a chest of
    the plain world always starts *open* at rest. Re-rested chests include laptop-like ones."""
    def lid_tip_moves(rested):
        rows = []
        for seed in range(40):
            clip = draw_clip(seed, 16, FRAMES, ["chest"], ["open"], rested)["clip"]
            rig = clip.creature.rig
            tip, length = rig.joint_names.index("lid.tail"), rig.lengths[rig.bone_index["lid"]]
            rows.append(np.linalg.norm(clip.joints[[0, -1], tip] - rig.joints_rest[tip], axis=-1) / length)
        return np.array(rows)  # (clips, [first frame, last frame]) in lid lengths from the rest pose

    plain, varied = lid_tip_moves(False), lid_tip_moves(True)
    assert (plain[:, 0] < 0.05).all() and (plain[:, 1] > 0.5).all()
    laptop_like = (varied[:, 0] > 0.5) & (varied[:, 1] < 0.5)
    assert laptop_like.mean() >= 0.2, laptop_like.mean()  # measured 0.37 on 60 seeds


def test_world_covers_the_design():
    assert len(FAMILIES) >= 8 and len(MOTIONS) >= 10
    assert set(TRAIN_FAMILIES).isdisjoint(HELDOUT_FAMILIES) and set(TRAIN_FAMILIES) | set(HELDOUT_FAMILIES) == set(FAMILIES)
    assert set(APPLICABLE) == set(FAMILIES)
    assert {m for ms in APPLICABLE.values() for m in ms} == set(MOTIONS)


def test_the_default_joint_budget_is_what_training_covers():
    """``BODY_JOINTS`` is the most joints of any training rig: no joint of a rig chosen within it
    takes a palette colour that training never drew, and the training rigs are animated whole."""
    most = max(FAMILIES[f](np.random.default_rng(seed)).rig.num_joints for f in TRAIN_FAMILIES for seed in range(200))
    assert most == BODY_JOINTS
