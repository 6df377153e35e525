"""The dataset builder on a folder of real assets: clips, skips with reasons, captions, exact pose maps."""

import argparse
import json
import shutil

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from animax_addon.core.cameras import CameraRig, make_camera_rig  # noqa: E402
from animax_addon.core.pose_maps import render_pose_maps  # noqa: E402
from animax_addon.core.templates_style import TEMPLATE_BACKGROUND  # noqa: E402
from animax_addon.snapshot import rig_from_armature  # noqa: E402
from backend.data import assets  # noqa: E402
from backend.data.blender_build import build_creature  # noqa: E402
from backend.data.dataset import SHARDS, SampleShards  # noqa: E402
from backend.data.rig_world import FAMILIES  # noqa: E402
from backend.reconstruction.kinematics import forward_kinematics  # noqa: E402

FRAMES, STRIDE, SIZE = 5, 4, 32
SWING = ["spine.01", "neck"]  # quadruped bones that the walk swings


def _keyed_action(obj, name: str, keys: list[tuple[int, float]], bones=SWING):
    """A layered Action rotating ``bones`` about X by the angle of each (frame, angle) key."""
    obj.animation_data_create()
    action = bpy.data.actions.new(name)
    action.use_fake_user = True  # unassigned Actions must survive the save
    obj.animation_data.action = action
    for bone in bones:
        pose_bone = obj.pose.bones[bone]
        for frame, angle in keys:
            pose_bone.rotation_quaternion = (np.cos(angle / 2), np.sin(angle / 2), 0.0, 0.0)
            pose_bone.keyframe_insert("rotation_quaternion", frame=frame)
        pose_bone.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
    return action


def _fox(scene_folder):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = build_creature(FAMILIES["quadruped"](np.random.default_rng(3)), "Fox")
    obj.location = (0.3, -0.2, 0.1)  # joints are read in world space
    _keyed_action(obj, "Idle", [(1, 0.0), (25, 0.0)])
    _keyed_action(obj, "Twitch", [(1, 0.0), (4, 0.5)])
    _keyed_action(obj, "FoxWalk", [(f, 0.6 * np.sin(f / 3)) for f in range(1, 26, 3)])
    bpy.ops.wm.save_as_mainfile(filepath=str(scene_folder / "fox.blend"))


def _bird(folder):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = build_creature(FAMILIES["bird"](np.random.default_rng(4)), "Bird")
    wings = [b.name for b in obj.data.bones if b.parent is not None and not b.children][:2]
    _keyed_action(obj, "BirdFlap_loop", [(1, 0.0), (7, 1.0), (13, 0.0)], bones=wings)
    bpy.ops.export_scene.gltf(filepath=str(folder / "bird.glb"), export_format="GLB")


def _lit_fbx(folder):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    build_creature(FAMILIES["lamp"](np.random.default_rng(5)), "Lamp")
    bpy.ops.object.light_add(type="POINT")
    bpy.ops.export_scene.fbx(filepath=str(folder / "lit.fbx"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    _fox(folder)
    _bird(folder)
    _lit_fbx(folder)
    (folder / "fox.FoxWalk.txt").write_text("the fox trots\n forward\n", encoding="utf-8")
    (folder / "notes.md").write_text("not an asset", encoding="utf-8")
    (folder / "broken.glb").write_bytes(b"glTF but not really")
    out = tmp_path_factory.mktemp("dataset")
    assets.build_dataset(_settings(folder, out))
    index = json.loads((out / "index.json").read_text())
    report = json.loads((out / "report.json").read_text())
    return folder, out, SampleShards(out).load_all(), index, report


def _settings(folder, out, **changed):
    return argparse.Namespace(**{**dict(assets=folder, out=out, frames=FRAMES, stride=STRIDE, size=SIZE,
                                        min_motion=assets.MIN_MOTION, shard=(0, 1)), **changed})


def test_clips_skips_and_captions(built, capsys):
    folder, out, samples, index, report = built
    # fox walk: 24 scene frames at 24 fps -> 17 samples at 16 fps -> starts 0, 4, 8, 12;
    # bird flap: 12 frames -> 9 samples -> starts 0, 4
    assert [(s["asset"], s["action"], s["frames"]) for s in index] == [
        ("bird.glb", "BirdFlap_loop", [1.0, 7.0]), ("bird.glb", "BirdFlap_loop", [7.0, 13.0]),
        *[("fox.blend", "FoxWalk", [1.0 + 6 * k, 7.0 + 6 * k]) for k in range(4)],
    ]
    assert len(samples) == 6 and report["clips"] == 6
    assert samples.rgb.shape == (6, 4, FRAMES, SIZE, SIZE, 3) and samples.rgb_rest.shape == (6, 4, SIZE, SIZE, 3)
    assert samples.prompts == ["bird flap loop"] * 2 + ["the fox trots forward"] * 4
    assert samples.motions == ["bird flap loop"] * 2 + [""] * 4
    assert samples.families == ["bird.glb"] * 2 + ["fox.blend"] * 4

    reasons = {(s["asset"], s.get("action")): [] for s in report["skipped"]}
    for s in report["skipped"]:
        reasons[(s["asset"], s.get("action"))].append(s["reason"])
    assert len(reasons[("fox.blend", "Idle")]) == 4
    assert all(r.startswith("negligible motion: joints move at most 0.000 x") for r in reasons[("fox.blend", "Idle")])
    assert reasons[("fox.blend", "Twitch")] == ["too short: 3 frames at 16 fps, a clip needs 5"]
    assert "FBX importer fails on files that contain a light" in reasons[("lit.fbx", None)][0]
    assert reasons[("broken.glb", None)][0].startswith("Blender could not open it")
    assert len(report["skipped"]) == 7 and report["ignored"] == ["notes.md"]
    assert [a["clips"] for a in report["assets"]] == [2, 0, 4, 0]


def test_a_stopped_build_resumes_with_the_asset_it_was_on(built, tmp_path, capsys, monkeypatch):
    """The fox's build stopped while writing its first part: its record is missing, a temporary file
    lies there. The rerun builds the fox alone, and the same clips."""
    folder, out, samples, index, report = built
    again = tmp_path / "again"
    shutil.copytree(out, again)
    fox = assets.asset_key("fox.blend")
    (again / SHARDS / f"{fox}.json").unlink()
    for part in (again / SHARDS).glob(f"{fox}-*.npz"):
        part.unlink()
    (again / SHARDS / f"{fox}-000.partial.npz").write_bytes(b"PK\x03\x04 cut short")
    kept = {p.name: p.stat().st_mtime_ns for p in (again / SHARDS).iterdir()}
    monkeypatch.setattr(assets, "PART_CLIPS", 3)  # the fox's 4 clips in two files this time
    capsys.readouterr()
    assets.build_dataset(_settings(folder, again))
    printed = capsys.readouterr().out
    assert printed.count("built earlier") == 3 and "fox.blend — 4 clips" in printed
    files = {p.name for p in (again / SHARDS).iterdir()}
    assert {f"{fox}-000.npz", f"{fox}-001.npz", f"{fox}.json"} <= files and f"{fox}-000.partial.npz" not in files
    assert all((again / SHARDS / name).stat().st_mtime_ns == ns for name, ns in kept.items() if name in files)
    assert json.loads((again / "index.json").read_text()) == index
    rebuilt = SampleShards(again)
    assert len(rebuilt.files) == 3 and rebuilt.counts == [2, 3, 1]
    np.testing.assert_array_equal(rebuilt.load_all().pose, samples.pose)
    with pytest.raises(assets.DatasetError, match="other settings \\(size 32 \\(now 48\\)"):
        assets.build_dataset(_settings(folder, again, size=48))


def test_pose_maps_are_those_of_the_posed_armature(built):
    """Joints by our forward kinematics from the pose bones' keyed rotations, drawn by the one function."""
    folder, out, samples, index, report = built
    bpy.ops.wm.open_mainfile(filepath=str(folder / "fox.blend"))
    obj = bpy.data.objects["Fox"]
    obj.animation_data.action = bpy.data.actions["FoxWalk"]
    rig = rig_from_armature(obj)
    for i, entry in enumerate(index):
        if entry["asset"] != "fox.blend":
            continue
        times = np.linspace(*entry["frames"], FRAMES)
        rotations = []
        for frame in times:
            bpy.context.scene.frame_set(int(frame), subframe=float(frame % 1))
            rotations.append([tuple(obj.pose.bones[name].rotation_quaternion) for name in rig.bone_names])
        _, joints = forward_kinematics(rig, np.array(rotations))
        cameras = CameraRig.load(out / "cameras.json")
        center, radius = rig.bounding_sphere()
        np.testing.assert_allclose(entry["center"], center)
        assert entry["radius"] == pytest.approx(radius)
        world_cameras = make_camera_rig(center, radius, SIZE)
        np.testing.assert_allclose(cameras.K, world_cameras.K)
        np.testing.assert_array_equal(samples.pose[i], render_pose_maps(world_cameras, joints, rig.joint_parents))
        np.testing.assert_array_equal(
            samples.pose_rest[i], render_pose_maps(world_cameras, rig.joints_rest[None], rig.joint_parents)[:, 0])


def test_rgb_videos_show_the_character_moving(built):
    folder, out, samples, index, report = built
    character = ~np.all(samples.rgb == TEMPLATE_BACKGROUND, axis=-1)  # (N, V, T, S, S)
    assert (character.mean(axis=(-2, -1)) > 0.02).all()
    # each clip's frames differ from its first: at 32 px the bird's flapping wings change ~1% of the pixels
    changed = (samples.rgb != samples.rgb[:, :, :1]).any(axis=-1).mean(axis=(1, 3, 4))  # (N, T)
    assert changed[:, 0].max() == 0 and (changed[:, 1:] > 0.002).all(), changed
    # the rest templates are the rest pose: not the first posed frame
    fox = [i for i, e in enumerate(index) if e["asset"] == "fox.blend"]
    assert (samples.rgb_rest[fox] == samples.rgb_rest[fox[0]]).all()
    assert not np.array_equal(samples.rgb_rest[fox[1]], samples.rgb[fox[1], :, 0])


def test_bad_options_are_refused_with_a_sentence(tmp_path):
    args = _settings(tmp_path, tmp_path / "out", frames=16)
    with pytest.raises(assets.DatasetError, match=r"--frames must be 1 \+ 4k"):
        assets.build_dataset(args)
    args.frames = 5
    with pytest.raises(assets.DatasetError, match="holds no .blend, .glb, .gltf, .fbx files"):
        assets.build_dataset(args)


def test_readable_action_names():
    assert assets.readable("FoxWalk_cycle.001") == "fox walk cycle"
    assert assets.readable("Armature|Jump-high") == "armature jump high"


def test_shards_of_n_machines_build_every_asset_once(tmp_path, monkeypatch):
    """--shard I/N on N machines sharing one folder: each asset built once, one dataset in the end."""
    folder = tmp_path / "assets"
    (folder / "sub").mkdir(parents=True)
    names = [f"a{k}.glb" for k in range(4)] + [f"sub/b{k}.blend" for k in range(3)]
    for name in names:
        (folder / name).write_bytes(b"")
    built = []

    def fake_build(asset, name, args, shards):  # one record per asset, no clips: the split is what is tested
        built.append(name)
        return {"asset": name, "settings": assets._settings(args), "entry": {"asset": name, "clips": 1},
                "parts": [], "index": [{"asset": name}], "skipped": []}

    monkeypatch.setattr(assets, "_build_asset", fake_build)
    for machines in (1, 2, 3):
        out = tmp_path / f"out{machines}"
        built.clear()
        shares = []
        for part in range(machines):
            assets.build_dataset(_settings(folder, out, shard=(part, machines)))
            shares.append(list(built))
            built.clear()
        assert sorted(sum(shares, [])) == sorted(names)  # every asset exactly once over the machines
        assert all(len(share) in (len(names) // machines, len(names) // machines + 1) for share in shares)
        assert [e["asset"] for e in json.loads((out / "index.json").read_text())] == sorted(names)
        assets.build_dataset(_settings(folder, out, shard=(0, machines)))  # a rerun: all built earlier
        assert built == []
    parser = argparse.ArgumentParser()
    assets.add_dataset_arguments(parser)
    assert parser.parse_args([str(folder), "--out", str(tmp_path / "o"), "--shard", "1/2"]).shard == (1, 2)
    with pytest.raises(SystemExit):
        parser.parse_args([str(folder), "--out", str(tmp_path / "o"), "--shard", "2/2"])
