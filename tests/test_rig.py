"""Rig snapshots: joint layout, JSON round trip, and a clear error for every malformed rig."""

import json
import re
import math

import numpy as np
import pytest

from animax_addon.core.rig import MAX_JOINTS, Rig, RigError


def bone(name, parent=None, head=(0, 0, 0), tail=(0, 0, 1), **extra):
    return {"name": name, "parent": parent, "head": list(head), "tail": list(tail), **extra}


def three_bone_rig():
    return {
        "bones": [
            bone("arm", "root", head=(0, 0, 1), tail=(1, 0, 1)),  # listed before its parent
            bone("root", None, head=(0, 0, 0), tail=(0, 0, 1)),
            bone("leg", "root", head=(0, 0, 0.5), tail=(0, 0.5, 0)),
        ]
    }


def test_joint_order_heads_then_leaf_tails():
    rig = Rig.from_dict(three_bone_rig())
    assert rig.joint_names == ["arm", "root", "leg", "arm.tail", "leg.tail"]
    np.testing.assert_allclose(rig.joints_rest[3], [1, 0, 1])
    np.testing.assert_allclose(rig.joints_rest[4], [0, 0.5, 0])
    # heads hang from their parent's head; tails from their own bone's head
    assert list(rig.joint_parents) == [1, -1, 1, 0, 2]
    assert [list(level) for level in rig.levels] == [[1], [0, 2]]
    assert list(rig.roots) == [1]


def test_rigid_pairs_cover_bones_and_siblings():
    rig = Rig.from_dict(three_bone_rig())
    pairs = {tuple(sorted(p)) for p in rig.rigid_pairs().tolist()}
    assert pairs == {(0, 1), (1, 2), (0, 2), (0, 3), (2, 4)}


def test_json_round_trip(tmp_path):
    data = three_bone_rig()
    data["bones"][0]["roll"] = 0.25
    data["bones"][2]["deform"] = False
    data["extra_field"] = {"ignored": True}
    rig = Rig.from_dict(data)
    rig.save(tmp_path / "rig.json")
    again = Rig.load(tmp_path / "rig.json")
    assert again.bones == rig.bones
    assert again.bones[0].roll == 0.25 and again.bones[2].deform is False


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["bones"].clear(), "no bones"),
        (lambda d: d["bones"].append(bone("arm")), "'arm' appears twice"),
        (lambda d: d["bones"][0].update(parent="hand"), "'arm' has unknown parent 'hand'"),
        (lambda d: d["bones"][1].update(parent="arm"), "cycle"),
        (lambda d: d["bones"][2].update(parent="leg"), "'leg' is its own parent"),
        (lambda d: d["bones"][0].update(head=[0, math.nan, 1]), "'arm': 'head' is not finite"),
        (lambda d: d["bones"][0].update(tail=[0, math.inf, 1]), "'arm': 'tail' is not finite"),
        (lambda d: d["bones"][2].update(tail=[0, 0, 0.5]), "'leg' has zero length"),
        (lambda d: d["bones"][0].update(head=[0, 1]), "'arm': 'head' must be a list of 3 numbers"),
        (lambda d: d["bones"][0].pop("tail"), "'arm' has no 'tail'"),
        (lambda d: d["bones"][0].update(roll="x"), "'arm': 'roll' must be a finite number"),
        (lambda d: d["bones"][0].update(deform=1), "'arm': 'deform' must be true or false"),
        (lambda d: d["bones"][0].pop("name"), "bone #0 needs a non-empty string 'name'"),
        (lambda d: d.pop("bones"), "'bones' list"),
    ],
)
def test_bad_rigs_name_the_bone_and_problem(mutate, message):
    data = three_bone_rig()
    mutate(data)
    with pytest.raises(RigError, match=re.escape(message)):
        Rig.from_dict(data)


def test_cycle_below_a_root_is_found():
    data = three_bone_rig()
    data["bones"] += [bone("a", "b"), bone("b", "a", head=(1, 1, 1))]
    with pytest.raises(RigError, match="'a' is part of a parent cycle"):
        Rig.from_dict(data)


def test_joint_limit_names_the_count():
    chain = [bone("b0")] + [bone(f"b{i}", f"b{i-1}", head=(0, 0, i), tail=(0, 0, i + 1)) for i in range(1, MAX_JOINTS)]
    with pytest.raises(RigError, match=f"{MAX_JOINTS + 1} joints .* at most {MAX_JOINTS}"):
        Rig.from_dict({"bones": chain})
    assert Rig.from_dict({"bones": chain[:-1]}).num_joints == MAX_JOINTS


def test_load_errors(tmp_path):
    with pytest.raises(RigError, match="not found"):
        Rig.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(RigError, match="not valid JSON"):
        Rig.load(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(RigError, match="'bones' list"):
        Rig.load(tmp_path / "list.json")


def test_bounding_sphere_contains_all_joints():
    rig = Rig.from_dict(three_bone_rig())
    center, radius = rig.bounding_sphere()
    distances = np.linalg.norm(rig.joints_rest - center, axis=1)
    assert distances.max() == pytest.approx(radius)


def test_a_subset_poses_its_bones_as_the_whole_rig_with_the_others_at_rest():
    from scipy.spatial.transform import Rotation

    from backend.reconstruction.kinematics import forward_kinematics

    rig = Rig.from_dict({"bones": [
        {"name": "root", "parent": None, "head": [0, 0, 0], "tail": [0, 0, 1]},
        {"name": "clavicle", "parent": "root", "head": [0, 0, 1], "tail": [0.3, 0.1, 1.1], "roll": 0.4},
        {"name": "arm", "parent": "clavicle", "head": [0.3, 0.1, 1.1], "tail": [0.9, 0, 0.8], "roll": -0.2},
        {"name": "toe", "parent": "arm", "head": [0.9, 0, 0.8], "tail": [1.0, -0.1, 0.7]},
        {"name": "neck", "parent": "root", "head": [0, 0, 1], "tail": [0, -0.1, 1.3]},
    ]})
    kept = np.array([True, False, True, False, True])
    body = rig.subset(kept)
    assert body.bone_names == ["root", "arm", "neck"]
    assert [b.parent for b in body.bones] == [None, "root", "root"]  # the nearest kept ancestor
    assert body.joint_names == ["root", "arm", "neck", "arm.tail", "neck.tail"]
    assert (rig.subset(np.flatnonzero(kept)).to_dict() == body.to_dict())
    turns = Rotation.random(3 * body.num_bones, random_state=0).as_quat(scalar_first=True).reshape(3, -1, 4)
    every = np.zeros((3, rig.num_bones, 4))
    every[..., 0] = 1.0
    every[:, kept] = turns
    _, whole = forward_kinematics(rig, every)
    _, part = forward_kinematics(body, turns)
    heads = [rig.joint_names.index(n) for n in ("root", "arm", "neck")]
    assert np.allclose(part[:, :3], whole[:, heads])
    assert np.allclose(part[:, 4], whole[:, rig.joint_names.index("neck.tail")])
    # arm's tail: in the whole rig the toe (at rest) continues it, so its head is arm's tail
    assert np.allclose(part[:, 3], whole[:, rig.joint_names.index("toe")])
