"""The ``animax`` command: pose-maps -> reconstruct round trip, and one clear sentence per user mistake."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from animax_addon.core.rig import Rig
from backend.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RIG = EXAMPLES / "fox.rig.json"
MOTION = EXAMPLES / "fox_trot.npz"


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def short_motion(tmp_path_factory):
    """The first 4 frames of the example trot."""
    path = tmp_path_factory.mktemp("motion") / "motion.npz"
    with np.load(MOTION) as data:
        np.savez(path, joints=data["joints"][:4])
    return path


@pytest.fixture(scope="module")
def pose_map_dir(tmp_path_factory, short_motion):
    out = tmp_path_factory.mktemp("maps") / "maps"
    assert main(["pose-maps", "--rig", str(RIG), "--motion", str(short_motion), "--out", str(out), "--size", "192"]) == 0
    return out


def test_pose_maps_writes_cameras_and_every_frame(pose_map_dir):
    cameras = json.loads((pose_map_dir / "cameras.json").read_text())
    assert cameras["width"] == cameras["height"] == 192 and len(cameras["views"]) == 4
    for view in range(4):
        assert sorted(p.name for p in (pose_map_dir / f"view_{view}").iterdir()) == [f"{t:04d}.png" for t in range(4)]


def test_reconstruct_recovers_the_motion(pose_map_dir, short_motion, tmp_path, capsys):
    code, out, err = run(capsys, "reconstruct", "--rig", RIG, "--pose-maps", pose_map_dir, "--out", tmp_path / "r.npz")
    assert code == 0, err
    rig = Rig.load(RIG)
    with np.load(tmp_path / "r.npz") as result, np.load(short_motion) as motion:
        assert result["rotations"].shape == (4, rig.num_bones, 4)
        assert result["root_translation"].shape == (4, 3)
        assert result["confidence"].shape == result["reprojection_error"].shape == (4, rig.num_joints)
        assert list(result["joint_names"]) == rig.joint_names and list(result["bone_names"]) == rig.bone_names
        radius = rig.bounding_sphere()[1]
        error = np.linalg.norm(result["joints"] - motion["joints"], axis=-1).mean() / radius
        assert error < 0.01
        assert np.nanmean(result["reprojection_error"]) < 1.0


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).with_name("animax")
    done = subprocess.run([script, "reconstruct", "--rig", RIG, "--pose-maps", tmp_path / "none", "--out", tmp_path / "r.npz"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"animax reconstruct: error: pose-map folder not found: {tmp_path / 'none'}"


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def broken_folder(pose_map_dir, tmp_path, damage):
    folder = tmp_path / "maps"
    shutil.copytree(pose_map_dir, folder)
    damage(folder)
    return folder


BAD_FOLDERS = {
    "missing view": (lambda f: shutil.rmtree(f / "view_2"), "missing view folder"),
    "missing frame": (lambda f: (f / "view_1" / "0001.png").unlink(), "missing frame 0001.png"),
    "frame counts differ": (lambda f: (f / "view_3" / "0003.png").unlink(), "different numbers of frames"),
    "unreadable png": (lambda f: (f / "view_0" / "0002.png").write_bytes(b"not a png"), "cannot read image"),
    "no cameras": (lambda f: (f / "cameras.json").unlink(), "camera file not found"),
    "bad cameras": (lambda f: (f / "cameras.json").write_text('{"views": []}'), "incomplete or malformed"),
    "empty view": (lambda f: [p.unlink() for p in (f / "view_0").iterdir()], "holds no frames"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_pose_map_folders(case, pose_map_dir, tmp_path, capsys):
    damage, message = BAD_FOLDERS[case]
    folder = broken_folder(pose_map_dir, tmp_path, damage)
    code, _, err = run(capsys, "reconstruct", "--rig", RIG, "--pose-maps", folder, "--out", tmp_path / "r.npz")
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_image_of_the_wrong_size(pose_map_dir, tmp_path, capsys):
    from PIL import Image

    folder = broken_folder(pose_map_dir, tmp_path, lambda f: Image.new("RGB", (64, 64)).save(f / "view_0" / "0000.png"))
    code, _, err = run(capsys, "reconstruct", "--rig", RIG, "--pose-maps", folder, "--out", tmp_path / "r.npz")
    assert code == 2 and "is 64x64 pixels but the cameras say 192x192" in err


def big_rig(tmp_path):
    bones = [{"name": f"b{i}", "parent": f"b{i-1}" if i else None, "head": [0, 0, i], "tail": [0, 0, i + 1]} for i in range(64)]
    (tmp_path / "big.json").write_text(json.dumps({"bones": bones}))
    return tmp_path / "big.json"


@pytest.mark.parametrize(
    "make_motion, message",
    [
        (lambda p, j: p / "missing.npz", "motion file not found"),
        (lambda p, j: write_npz(p / "m.npz", positions=j), "has no 'joints' array (it has: positions)"),
        (lambda p, j: write_npz(p / "m.npz", joints=j[:, :5]), "has shape (4, 5, 3); the rig needs (T, 26, 3)"),
        (lambda p, j: write_npz(p / "m.npz", joints=np.where(j > 0.3, np.nan, j)), "NaN or infinite"),
        (lambda p, j: (p / "m.npz").write_text("hello") and p / "m.npz", "not a readable .npz"),
        (lambda p, j: np.save(p / "m.npy", j) or p / "m.npy", "single array"),
    ],
)
def test_bad_motions(make_motion, message, short_motion, tmp_path, capsys):
    with np.load(short_motion) as data:
        motion = make_motion(tmp_path, data["joints"])
    code, _, err = run(capsys, "pose-maps", "--rig", RIG, "--motion", motion, "--out", tmp_path / "out")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written on a refused input


def test_bad_rigs_and_sizes(short_motion, tmp_path, capsys):
    code, _, err = run(capsys, "pose-maps", "--rig", tmp_path / "nope.json", "--motion", short_motion, "--out", tmp_path / "o")
    assert code == 2 and "rig file not found" in err
    code, _, err = run(capsys, "pose-maps", "--rig", big_rig(tmp_path), "--motion", short_motion, "--out", tmp_path / "o")
    assert code == 2 and "the rig has 65 joints" in err
    code, _, err = run(capsys, "pose-maps", "--rig", RIG, "--motion", short_motion, "--out", tmp_path / "o", "--size", "8")
    assert code == 2 and "--size must be at least 16" in err
    code, _, err = run(capsys, "reconstruct", "--rig", RIG, "--pose-maps", tmp_path, "--out", tmp_path / "r.npz", "--smooth", "-1")
    assert code == 2 and "--smooth must be >= 0" in err
