"""The motion-skeleton chooser on small synthetic rigs (bpy-free)."""

import numpy as np
import pytest

from animax_addon.core.rig import Bone, Rig
from animax_addon.core.skeleton import LEFT_OUT, SkeletonError, choose_bones, named_group


def _rig(spec):
    """Arrays for ``choose_bones`` from (name, parent name, head, tail[, deform]) rows."""
    names = [row[0] for row in spec]
    index = {name: i for i, name in enumerate(names)}
    parents = [index[row[1]] if row[1] else -1 for row in spec]
    heads = np.array([row[2] for row in spec], dtype=float)
    tails = np.array([row[3] for row in spec], dtype=float)
    deform = [row[4] if len(row) > 4 else True for row in spec]
    return names, parents, heads, tails, deform


def _chain(prefix, parent, start, direction, count, length=0.1):
    """``count`` connected bones named prefix.000, prefix.001, ... from ``start``."""
    rows, head = [], np.asarray(start, dtype=float)
    step = np.asarray(direction, dtype=float) * length
    for i in range(count):
        name = f"{prefix}.{i:03d}"
        rows.append((name, parent, head.tolist(), (head + step).tolist()))
        parent, head = name, head + step
    return rows


def _body(fingers=0, face=0, twist=0, mechanism=0):
    """A standing figure (spine, neck, head, arms, legs) with optional extra groups of bones."""
    rows = _chain("spine", None, [0, 0, 1.0], [0, 0, 1], 4, 0.12)
    rows += [("neck", "spine.003", [0, 0, 1.48], [0, 0, 1.58]), ("head", "neck", [0, 0, 1.58], [0, 0, 1.8])]
    for side, x in (("L", 1), ("R", -1)):
        rows += [(f"upper_arm.{side}", "spine.003", [0.2 * x, 0, 1.45], [0.5 * x, 0, 1.45]),
                 (f"forearm.{side}", f"upper_arm.{side}", [0.5 * x, 0, 1.45], [0.75 * x, 0, 1.45]),
                 (f"hand.{side}", f"forearm.{side}", [0.75 * x, 0, 1.45], [0.85 * x, 0, 1.45]),
                 (f"thigh.{side}", "spine.000", [0.1 * x, 0, 1.0], [0.1 * x, 0, 0.55]),
                 (f"shin.{side}", f"thigh.{side}", [0.1 * x, 0, 0.55], [0.1 * x, 0, 0.1]),
                 (f"foot.{side}", f"shin.{side}", [0.1 * x, 0, 0.1], [0.1 * x, -0.15, 0.0])]
        for f in range(fingers):
            rows += _chain(f"f_index{f}.{side}", f"hand.{side}", [0.85 * x, 0.02 * f, 1.45], [x, 0, 0], 3, 0.03)
        for t in range(twist):
            rows.append((f"upper_arm_twist{t}.{side}", f"upper_arm.{side}", [(0.3 + 0.05 * t) * x, 0, 1.45],
                         [(0.35 + 0.05 * t) * x, 0, 1.45]))
    for f in range(face):
        rows += _chain(f"lid{f}", "head", [0, -0.1, 1.65 + 0.01 * f], [1, 0, 0], 2, 0.02)
    for m in range(mechanism):
        rows.append((f"MCH-ik_target{m}", "spine.000", [0, 0.3, 0.1 * m], [0, 0.4, 0.1 * m]))
    return rows


BODY = ["spine.000", "spine.001", "spine.002", "spine.003", "neck", "head", "upper_arm.L", "forearm.L",
        "hand.L", "thigh.L", "shin.L", "foot.L", "upper_arm.R", "forearm.R", "hand.R", "thigh.R", "shin.R", "foot.R"]


def _joints_of_snapshot(names, parents, heads, tails, chosen):
    """Joints of the rig the add-on builds from a choice: parents are nearest chosen ancestors."""
    bones = []
    for i in np.flatnonzero(chosen):
        parent = parents[i]
        while parent >= 0 and not chosen[parent]:
            parent = parents[parent]
        bones.append(Bone(names[i], names[parent] if parent >= 0 else None, tuple(heads[i]), tuple(tails[i])))
    return Rig(bones, max_joints=None).num_joints


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("spine.004", None), ("DEF-thigh.L", None), ("DEF-spine.006", None), ("mixamorig:LeftHand", None),
        ("mixamorig:Head", None), ("mixamorig:HeadTop_End", None), ("LeftHand", None), ("Neck", None),
        ("toe.L", None), ("mixamorig:LeftToeBase", None), ("heel.02.L", None), ("front_thigh.L", None),
        ("rear_foot.L", None), ("MCH-spine.002", "mechanism"), ("ORG-thigh.L", "mechanism"),
        ("tweak_spine.001", "mechanism"), ("thigh_ik.L", "mechanism"), ("MCH-IKTarget.L", "mechanism"),
        ("knee_pole.L", "mechanism"), ("upperarm_twist_01_l", "twist"), ("CC_Base_L_UpperarmTwist01", "twist"),
        ("lid.T.L.001", "face"), ("jaw", "face"), ("mixamorig:LeftEye", "face"), ("EyeLid_L", "face"),
        ("DEF-brow.B.L", "face"), ("tongue.002", "face"), ("f_index.01.L", "finger"),
        ("DEF-thumb.02.R", "finger"), ("palm.03.L", "finger"), ("mixamorig:LeftHandIndex1", "finger"),
        ("mixamorig:RightHandPinky3", "finger"), ("t_ring.002.L", "finger"), ("Bip01 L Finger0", "finger"),
        ("J_Sec_Hair1_01", "hair/cloth"), ("mane_base.01", "hair/cloth"),
    ],
)
def test_bone_names_are_matched_on_their_word_parts(name, group):
    assert named_group(name) == (LEFT_OUT.index(group) if group else -1)


def test_under_the_limit_every_deform_bone_takes_part():
    rows = _body(fingers=2, face=2, twist=1)
    rows.append(("MCH-stretch", "spine.000", [0, 0.3, 0], [0, 0.4, 0], False))  # a non-deform bone
    names, parents, heads, tails, deform = _rig(rows)
    choice = choose_bones(names, parents, heads, tails, deform)
    assert choice.chosen.tolist() == deform  # fingers, face and twist bones stay: they fit
    assert (choice.reasons == -1).all() and choice.summary() is None
    assert choice.num_joints == _joints_of_snapshot(names, parents, heads, tails, choice.chosen) <= 64


def test_finger_bones_are_left_out_before_any_spine_bone():
    names, parents, heads, tails, deform = _rig(_body(fingers=6))  # 36 finger bones: 69 joints
    choice = choose_bones(names, parents, heads, tails, deform)
    chosen = {n for n, c in zip(names, choice.chosen) if c}
    assert chosen == set(BODY)
    finger = LEFT_OUT.index("finger")
    assert all(choice.reasons[i] == finger for i, n in enumerate(names) if n.startswith("f_index"))
    assert choice.summary() == "Body: 18 of 54 deform bones; finger bones keep their rest"


@pytest.mark.parametrize("stop", ["mechanism", "twist", "face", "finger"])
def test_groups_are_left_out_in_order_and_only_while_over_the_limit(stop):
    # the body has 23 joints; ``stop``'s group brings it over 40, the groups after it stay under
    big = {"mechanism": 6, "twist": 3, "face": 5, "finger": 3}
    small = {"mechanism": 0, "twist": 1, "face": 1, "finger": 1}
    order = LEFT_OUT.index(stop)
    counts = {g: big[g] if LEFT_OUT.index(g) == order else small[g] if LEFT_OUT.index(g) > order else 0 for g in big}
    names, parents, heads, tails, deform = _rig(_body(
        fingers=counts["finger"], face=counts["face"], twist=counts["twist"], mechanism=counts["mechanism"]))
    choice = choose_bones(names, parents, heads, tails, deform, max_joints=40)
    assert _joints_of_snapshot(names, parents, heads, tails, np.ones(len(names), bool)) > 40
    left_out = {LEFT_OUT[r] for r in choice.reasons if r >= 0}
    assert left_out == {stop}
    assert set(BODY) <= {n for n, c in zip(names, choice.chosen) if c}


def _mixamo():
    """Mixamo's 67-bone skeleton: 82 joints with its fingers, eyes and end bones."""
    spine = [("Hips", None), ("Spine", "Hips"), ("Spine1", "Spine"), ("Spine2", "Spine1"), ("Neck", "Spine2"),
             ("Head", "Neck"), ("HeadTop_End", "Head"), ("LeftEye", "Head"), ("RightEye", "Head")]
    rows = [(f"mixamorig:{n}", f"mixamorig:{p}" if p else None) for n, p in spine]
    for side in ("Left", "Right"):
        arm = ["Shoulder", "Arm", "ForeArm", "Hand"]
        rows += [(f"mixamorig:{side}{b}", f"mixamorig:{side}{a}" if a else "mixamorig:Spine2")
                 for a, b in zip([None, *arm], arm)]
        for finger in ("Thumb", "Index", "Middle", "Ring", "Pinky"):
            rows += [(f"mixamorig:{side}Hand{finger}{i}",
                      f"mixamorig:{side}Hand{finger}{i - 1}" if i > 1 else f"mixamorig:{side}Hand") for i in range(1, 5)]
        leg = ["UpLeg", "Leg", "Foot", "ToeBase", "Toe_End"]
        rows += [(f"mixamorig:{side}{b}", f"mixamorig:{side}{a}" if a else "mixamorig:Hips")
                 for a, b in zip([None, *leg], leg)]
    rng = np.random.default_rng(0)
    heads = rng.normal(size=(len(rows), 3))
    return [(n, p, h.tolist(), (h + [0, 0, 0.08]).tolist()) for (n, p), h in zip(rows, heads)]


def test_mixamo_skeleton_keeps_its_body_and_leaves_out_eyes_and_fingers():
    names, parents, heads, tails, deform = _rig(_mixamo())
    assert len(names) == 67
    choice = choose_bones(names, parents, heads, tails, deform)
    chosen = {n.removeprefix("mixamorig:") for n, c in zip(names, choice.chosen) if c}
    assert {"Hips", "Spine2", "Neck", "Head", "HeadTop_End", "LeftHand", "RightForeArm", "LeftFoot",
            "RightToe_End"} <= chosen
    assert len(chosen) == 25 and choice.num_joints == 30
    assert choice.summary() == "Body: 25 of 67 deform bones; face and finger bones keep their rest"


def test_very_short_bones_go_before_chains_are_sampled():
    rows = _body()
    for i in range(25):  # whiskers: 25 bones of 2 mm on a 1.8 m body, each a leaf: 50 joints
        rows.append((f"whisker{i}", "head", [0.01 * i, -0.1, 1.7], [0.01 * i, -0.102, 1.7]))
    names, parents, heads, tails, deform = _rig(rows)
    choice = choose_bones(names, parents, heads, tails, deform)
    assert {n for n, c in zip(names, choice.chosen) if c} == set(BODY)
    assert choice.summary() == "Body: 18 of 43 deform bones; very short bones keep their rest"


def test_a_long_chain_is_sampled_evenly_and_keeps_its_ends():
    rows = _chain("tail", None, [0, 0, 0], [0, 1, 0], 100)  # 100 bones: 101 joints
    names, parents, heads, tails, deform = _rig(rows)
    choice = choose_bones(names, parents, heads, tails, deform)
    kept = np.flatnonzero(choice.chosen)
    assert kept[0] == 0 and kept[-1] == 99
    assert choice.num_joints == 64 and len(kept) == 63  # exactly as many as fit
    assert set(np.diff(kept)) == {1, 2}  # evenly spaced: gaps differ by at most one
    assert (choice.reasons[~choice.chosen] == LEFT_OUT.index("chain")).all()
    assert choice.summary() == "Body: 63 of 100 deform bones; some bones of long chains keep their rest"


def test_the_midline_gives_up_bones_before_the_limbs():
    rows = _chain("spine", None, [0, 0, 1], [0, 0, 1], 3)
    rows += _chain("tail", "spine.000", [0, 0, 1], [0, 1, 0], 30)  # straight, on the plane of symmetry
    for side, x in (("L", 0.2), ("R", -0.2)):  # legs off the plane, with a bent knee
        rows += [(f"thigh.{side}", "spine.000", [x, 0, 1], [x, -0.1, 0.5]),
                 (f"shin.{side}", f"thigh.{side}", [x, -0.1, 0.5], [x, 0, 0.05]),
                 (f"foot.{side}", f"shin.{side}", [x, 0, 0.05], [x, -0.15, 0])]
    names, parents, heads, tails, deform = _rig(rows)  # 39 bones + 4 leaf tails: 13 too many for 30
    choice = choose_bones(names, parents, heads, tails, deform, max_joints=30)
    chosen = {n for n, c in zip(names, choice.chosen) if c}
    assert {"thigh.L", "shin.L", "foot.L", "thigh.R", "shin.R", "foot.R", "tail.029"} <= chosen
    assert choice.num_joints == _joints_of_snapshot(names, parents, heads, tails, choice.chosen) == 30
    kept = [int(n.split(".")[1]) for n in names if n.startswith("tail") and n in chosen]
    assert set(np.diff(kept)) <= {1, 2}  # no run of the tail lost


def test_a_bent_joint_stays_where_straight_bones_go():
    points = [[0.3, 0, 1.0], [0.3, 0, 0.85], [0.3, 0, 0.7], [0.3, 0, 0.55],  # a straight thigh in three bones,
              [0.3, -0.2, 0.4], [0.3, -0.2, 0.25], [0.3, -0.2, 0.1]]  # bent at points 3 and 4, a straight shin
    rows = [("hips", None, [0, 0, 1.0], [0, 0, 1.2])]
    rows += [(f"leg.{i}", "hips" if i == 0 else f"leg.{i - 1}", points[i], points[i + 1]) for i in range(6)]
    names, parents, heads, tails, deform = _rig(rows)  # 7 bones + 1 leaf tail
    choice = choose_bones(names, parents, heads, tails, deform, max_joints=6)
    chosen = [n for n, c in zip(names, choice.chosen) if c]
    assert chosen == ["hips", "leg.0", "leg.3", "leg.4", "leg.5"]  # the straight thigh gives up its inner heads


def test_a_group_that_is_the_whole_rig_is_sampled_instead_of_left_out():
    rows = _chain("tongue", None, [0, 0, 0], [1, 0, 0], 70)  # every bone a "face" bone
    names, parents, heads, tails, deform = _rig(rows)
    choice = choose_bones(names, parents, heads, tails, deform)
    assert choice.chosen.sum() == 63 and choice.chosen[0] and choice.chosen[-1]
    assert LEFT_OUT.index("face") not in choice.reasons


def test_rig_without_deform_bones_chooses_among_all_bones():
    names, parents, heads, tails, _ = _rig(_body(fingers=6))
    choice = choose_bones(names, parents, heads, tails, np.zeros(len(names), bool))
    assert {n for n, c in zip(names, choice.chosen) if c} == set(BODY)
    assert choice.summary() == "Body: 18 of 54 bones; finger bones keep their rest"


def test_a_rig_that_cannot_fit_is_refused_with_its_smallest_count():
    rows = [("root", None, [0, 0, 0], [0, 0, 1])]
    rows += [(f"spike{i}", "root", [0, 0, 1], [np.cos(i), np.sin(i), 2]) for i in range(40)]  # 81 joints
    names, parents, heads, tails, deform = _rig(rows)
    with pytest.raises(SkeletonError, match="has 81 joints, more than the 64 AnimaX tells apart"):
        choose_bones(names, parents, heads, tails, deform)


@pytest.mark.parametrize("seed", range(6))
def test_counted_joints_are_those_of_the_snapshot_and_fit(seed):
    rng = np.random.default_rng(seed)
    words = ["spine", "arm", "leg", "tail"] * 6 + ["f_index", "lid", "twist", "MCH", "hair"]
    n = int(rng.integers(60, 200))
    # mostly chains, with a branch now and then
    parents = [-1] + [i - 1 if rng.random() < 0.92 else int(rng.integers(0, i)) for i in range(1, n)]
    names = [f"{words[rng.integers(len(words))]}.{i:03d}" for i in range(n)]
    heads = rng.normal(size=(n, 3))
    tails = heads + rng.normal(size=(n, 3)) * rng.choice([0.001, 0.3], size=(n, 1))
    deform = rng.random(n) < 0.9
    choice = choose_bones(names, parents, heads, tails, deform)
    assert choice.num_joints == _joints_of_snapshot(names, parents, heads, tails, choice.chosen) <= 64
    if LEFT_OUT.index("chain") in choice.reasons:
        assert choice.num_joints == 64  # chains give up exactly as many bones as needed
    assert not (choice.chosen & ~deform).any()
    assert ((choice.reasons >= 0) == (deform & ~choice.chosen)).all()
