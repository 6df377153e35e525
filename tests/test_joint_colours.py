"""Joint colours: every rig drawn in the colours training drew its counterparts in."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import palette, render_pose_maps
from animax_addon.core.rig import Bone, Rig
from backend.data.dataset import draw_clip
from backend.data.joint_colours import REFERENCE_SEEDS, _shape, cast, counterpart, joint_colours, match, training_body
from backend.data.rig_world import FAMILIES, TRAIN_FAMILIES
from backend.reconstruction.reconstruct import reconstruct


def shuffled(rig: Rig, seed: int) -> Rig:
    order = np.random.default_rng(seed).permutation(rig.num_bones)
    return Rig([rig.bones[i] for i in order])


def training_colours(rig: Rig) -> dict[str, tuple]:
    """Each joint's colour by name, as training draws the creature (palette in joint order)."""
    return {name: tuple(c) for name, c in zip(rig.joint_names, palette(rig.num_joints))}


@pytest.mark.parametrize("family", TRAIN_FAMILIES)
def test_a_training_creature_is_drawn_as_training_drew_it_in_any_bone_order(family):
    for seed in range(500, 506):  # seeds no reference is drawn from
        rig = FAMILIES[family](np.random.default_rng(seed)).rig
        assert (joint_colours(rig) == palette(rig.num_joints)).all()
        other = shuffled(rig, seed)
        got = {name: tuple(c) for name, c in zip(other.joint_names, joint_colours(other))}
        assert got == training_colours(rig)


def test_pose_maps_of_a_reordered_creature_are_the_training_pose_maps():
    rig = FAMILIES["quadruped"](np.random.default_rng(7)).rig
    other = shuffled(rig, 1)
    center, radius = rig.bounding_sphere()
    cameras = make_camera_rig(center, radius, 64)
    truth = render_pose_maps(cameras, rig.joints_rest[None], rig.joint_parents)
    drawn = render_pose_maps(cameras, other.joints_rest[None], other.joint_parents, joint_colours(other))
    by_order = render_pose_maps(cameras, other.joints_rest[None], other.joint_parents)
    # the same up to discs of equal depth, which the drawing order puts one over the other
    assert (drawn != truth).any(axis=-1).mean() < 0.001
    assert (by_order != truth).any(axis=-1).mean() > 0.01  # the bone order alone would change them
    # and the reconstruction reads them back with the same colours
    motion = reconstruct(other, cameras, drawn, colours=joint_colours(other))
    error = np.linalg.norm(motion.joints[0] - other.joints_rest, axis=-1).max()
    assert error < 0.03 * radius


def _biped_with_spine(count: int) -> Rig:
    for seed in range(100):
        rig = FAMILIES["biped"](np.random.default_rng(seed)).rig
        if sum(name.startswith("spine.") for name in rig.bone_names) == count:
            return rig
    raise AssertionError(f"no biped with {count} spine bones in 100 seeds")


def rigify_like(rig: Rig) -> Rig:
    """The biped as another rigging tool would lay it out: shoulder bones between the chest and
    the upper arms, toes after the feet, other names, and the bones listed side by side."""
    bones = {b.name: b for b in rig.bones}
    chest = [n for n in rig.bone_names if n.startswith("spine.")][-1]
    out = []
    for b in rig.bones:
        parent = b.parent
        if b.name.startswith("upper_arm."):
            side = b.name[-1]
            start = np.array(bones[chest].tail) * [0, 1, 1] + [0, 0, -0.02]
            out.append(Bone(f"DEF-shoulder.{side}", f"DEF-{chest}", tuple(start), b.head))
            parent = f"shoulder.{side}"
        out.append(Bone(f"DEF-{b.name}", f"DEF-{parent}" if parent else None, b.head, b.tail))
        if b.name.startswith("foot."):
            tip = np.array(b.tail) + [0, -0.08, 0]
            out.append(Bone(f"DEF-toe.{b.name[-1]}", f"DEF-{b.name}", b.tail, tuple(tip)))
    out.sort(key=lambda b: (b.name.endswith(".R"), b.name))
    return Rig(out)


@pytest.mark.parametrize("spine", [2, 3])
def test_a_rig_laid_out_elsewhere_takes_its_body_parts_training_colours(spine):
    biped = _biped_with_spine(spine)
    other = rigify_like(biped)
    family, index, _ = match(other)
    assert family == "biped"
    colours = {name: tuple(c) for name, c in zip(other.joint_names, joint_colours(other))}
    assert len(set(colours.values())) == other.num_joints  # every joint its own colour
    # The parts the biped has keep a training biped's colour for that part (of 2 or 3 spine
    # bones: whichever the matching chose), the hands' and head's tips included.
    parts = ["hips", "neck", "head", *[f"{p}.{s}" for p in ("upper_arm", "forearm", "hand", "thigh", "shin")
                                       for s in "LR"], "head.tail", "hand.L.tail", "hand.R.tail"]
    expected = [training_colours(_biped_with_spine(n)) for n in (2, 3)]
    seen = {p: colours[f"DEF-{p}"] for p in parts}
    assert any(all(seen[p] == e[p] for p in parts) for e in expected)


@pytest.mark.parametrize("family", TRAIN_FAMILIES)
def test_a_training_creature_is_animated_whole(family):
    for seed in (500, 501):
        rig = shuffled(FAMILIES[family](np.random.default_rng(seed)).rig, seed)
        assert training_body(rig).all()


def with_two_bone_neck(rig: Rig) -> Rig:
    """``rig`` with its neck split in two bones, as Rigify's human has."""
    out = []
    for b in rig.bones:
        if b.name.endswith("neck"):
            middle = tuple((np.array(b.head) + b.tail) / 2)
            out += [Bone(b.name, b.parent, b.head, middle), Bone(b.name + ".001", b.name, middle, b.tail)]
        else:
            parent = b.parent + ".001" if b.parent and b.parent.endswith("neck") else b.parent
            out.append(Bone(b.name, parent, b.head, b.tail))
    return Rig(out)


@pytest.mark.parametrize("spine", [2, 3])
def test_a_rig_laid_out_elsewhere_is_animated_through_its_training_counterparts_bones(spine):
    biped = _biped_with_spine(spine)
    other = with_two_bone_neck(rigify_like(biped))
    kept = training_body(other)
    left_out = {other.bone_names[i] for i in np.flatnonzero(~kept)}
    # the shoulders and toes go in mirrored pairs; one of the two neck bones goes
    assert left_out - {"DEF-neck", "DEF-neck.001"} == {"DEF-shoulder.L", "DEF-shoulder.R", "DEF-toe.L", "DEF-toe.R"}
    assert len(left_out & {"DEF-neck", "DEF-neck.001"}) == 1
    # what is left is the training biped's tree, drawn in its colours part for part
    body = other.subset(kept)
    names = [n.removeprefix("DEF-").replace("neck.001", "neck") for n in body.joint_names]
    got = dict(zip(names, map(tuple, joint_colours(body))))
    expected = training_colours(biped)
    assert got.keys() == expected.keys()
    assert got == expected


def test_a_rig_past_every_reference_gets_distinct_colours():
    rig = FAMILIES["many_legged"](np.random.default_rng(3)).rig  # up to 36 joints, no training family
    extra = [Bone(f"antenna.{i}", "head", rig.bones[2].tail, tuple(np.add(rig.bones[2].tail, [0.01 * i, -0.05, 0.05])))
             for i in range(6)]
    big = Rig(list(rig.bones) + extra)
    colours = joint_colours(big)
    assert big.num_joints > 30
    assert len({tuple(c) for c in colours}) == big.num_joints
    assert set(map(tuple, colours)) <= set(map(tuple, palette(64)))


def test_a_turned_rig_is_matched_in_its_upright_frame():
    rig = FAMILIES["quadruped"](np.random.default_rng(11)).rig
    turn = Rotation.from_euler("xz", [90, 30], degrees=True).as_matrix()  # lying on its back, turned
    other = shuffled(rig, 2)
    moved = Rig([Bone(b.name, b.parent, tuple(turn @ b.head + 5), tuple(turn @ b.tail + 5)) for b in other.bones])
    got = {name: tuple(c) for name, c in zip(moved.joint_names, joint_colours(moved, turn))}
    assert got == training_colours(rig)


def test_a_family_drawn_as_its_own_kind_once_the_model_was_trained_on_it():
    """A laptop, never trained on, takes its colours from another family; a model trained on every
    family draws it as training drew laptops, and keeps its whole body."""
    rig = FAMILIES["laptop"](np.random.default_rng(500)).rig
    assert match(rig)[0] != "laptop"
    every = tuple(FAMILIES)
    family, _, score = match(rig, families=every)
    assert family == "laptop" and score < match(rig)[2]
    assert (joint_colours(rig, families=every) == palette(rig.num_joints)).all()
    assert training_body(rig, families=every).all()


def test_the_cast_has_one_creature_of_each_tree_a_family_draws_and_training_draws_it_by_share():
    members = cast(TRAIN_FAMILIES)
    trees = {(f, _shape(FAMILIES[f](np.random.default_rng(s)).rig.joint_parents)) for f in TRAIN_FAMILIES
             for s in range(REFERENCE_SEEDS)}
    cast_trees = [(f, _shape(FAMILIES[f](np.random.default_rng(s)).rig.joint_parents)) for f, s in members]
    assert sorted(cast_trees) == sorted(trees)  # one each
    rests = {f: [FAMILIES[f](np.random.default_rng(s)).rig.joints_rest for g, s in members if g == f]
             for f in TRAIN_FAMILIES}

    def in_cast(creature) -> bool:
        return any(np.array_equal(creature.rig.joints_rest, rest) for rest in rests[creature.family])

    drawn = [draw_clip(seed, 16, 3, None, None, False, 0.5)["clip"].creature for seed in range(60)]
    assert 15 <= sum(map(in_cast, drawn)) <= 45
    assert all(in_cast(draw_clip(seed, 16, 3, None, None, False, 1.0)["clip"].creature) for seed in range(10))
    # a rig outside the references is matched to the cast member of its family that fits it best
    rig = FAMILIES["quadruped"](np.random.default_rng(700)).rig
    creature, joints = counterpart(rig, cast_only=True)
    assert creature.family == "quadruped" and in_cast(creature) and (joints >= 0).any()
