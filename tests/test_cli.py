"""The ``animax`` command: pose-maps -> reconstruct round trip, and one clear sentence per user mistake."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from animax_addon.core.rig import Rig
from backend.arguments import zmq_address
from backend.cli import build_parser, main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RIG = EXAMPLES / "fox.rig.json"
MOTION = EXAMPLES / "fox_trot.npz"


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_script(name, *args, cwd=None):
    """A console script of this environment as the user runs it: (exit status, stdout, stderr)."""
    done = subprocess.run([Path(sys.executable).with_name(name), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)
    return done.returncode, done.stdout, done.stderr


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
    assert code == 2 and "argument --smooth: must be at least 0" in err


@pytest.mark.parametrize("module", ["backend.cli", "backend.worker.command", "backend.worker.broker",
                                    "backend.worker.serve"])
def test_importing_a_command_loads_no_heavy_library(module):
    """`animax`, `animax-worker`, `animax-broker` and `animax-serve` answer --help and argument errors
    at once: SciPy, scikit-learn, torch and diffusers load where a command needs them."""
    loaded = subprocess.run([sys.executable, "-c", f"import sys, {module}; print(' '.join(m for m in "
                             "('torch', 'sklearn', 'scipy', 'diffusers') if m in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


@pytest.fixture(scope="module")
def junk(tmp_path_factory):
    """A folder of things that are not what the commands want."""
    folder = tmp_path_factory.mktemp("junk")
    (folder / "folder").mkdir()
    (folder / "text.txt").write_text("hello")
    (folder / "broken.json").write_text('{"bones": [')
    shutil.copy(RIG, folder / "rig.json")
    shutil.copy(MOTION, folder / "motion.npz")
    return folder


MAPS = ("pose-maps", "--rig", "rig.json", "--motion", "motion.npz", "--out", "out")
RECONSTRUCT = ("reconstruct", "--rig", "rig.json", "--pose-maps", "folder", "--out", "r.npz")
GENERATE = ("generate", "--rig", "rig.json", "--templates", "folder", "--prompt", "a jump", "--out", "g.npz")
BAD_INPUTS = {
    "no command": ((), "the following arguments are required: command"),
    "unknown command": (("bogus",), "invalid choice: 'bogus'"),
    "address without a port": (("ping", "localhost"), "expected tcp://HOST:PORT"),
    "port out of range": (("ping", "tcp://127.0.0.1:99999"), "a port from 1 to 65535"),
    "missing argument": (("pose-maps", "--rig", "rig.json"), "the following arguments are required: --motion, --out"),
    "rig is a folder": (("pose-maps", "--rig", "folder", *MAPS[3:]), "rig file"),
    "rig is broken JSON": (("pose-maps", "--rig", "broken.json", *MAPS[3:]), "not valid JSON"),
    "motion is a folder": ((*MAPS[:3], "--motion", "folder", "--out", "out"),
                           "folder is a folder; --motion takes an .npz"),
    "motion is JSON": ((*MAPS[:3], "--motion", "rig.json", "--out", "out"), "not a readable .npz"),
    "output folder is a file": ((*MAPS[:5], "--out", "text.txt"), "text.txt is a file, not a folder"),
    "output under a file": ((*MAPS[:5], "--out", "text.txt/maps"), "text.txt is a file, not a folder"),
    "negative size": ((*MAPS, "--size", "-5"), "--size must be at least 16"),
    "size not a number": ((*MAPS, "--size", "big"), "argument --size: invalid int value: 'big'"),
    "smoothing not a number": ((*RECONSTRUCT, "--smooth", "nan"), "argument --smooth: expected a finite number"),
    "pose maps are a file": (("reconstruct", "--rig", "rig.json", "--pose-maps", "text.txt", "--out", "r.npz"),
                             "pose-map folder not found: text.txt"),
    "result is a folder": ((*RECONSTRUCT[:5], "--out", "folder"), "argument --out: folder is a folder"),
    "zero steps": ((*GENERATE, "--steps", "0"), "argument --steps: must be at least 1, got 0"),
    "zero frames": ((*GENERATE, "--frames", "0"), "argument --frames: must be at least 1, got 0"),
    "negative fps": ((*GENERATE, "--fps", "-24"), "argument --fps: must be more than 0"),
    "blank prompt": ((*GENERATE[:6], " ", "--out", "g.npz"), "--prompt is blank"),
    "templates are a file": ((*GENERATE[:3], "--templates", "text.txt", *GENERATE[5:]), "template folder not found"),
    "worker address": ((*GENERATE, "--address", "worker"), "argument --address: expected tcp://HOST:PORT"),
    "assets are a file": (("dataset", "text.txt", "--out", "ds"), "text.txt is a file; give the folder"),
    "zero dataset frames": (("dataset", "folder", "--out", "ds", "--frames", "0"), "--frames must be 1 + 4k"),
    "no assets": (("dataset", "folder", "--out", "ds"), "holds no .blend"),
    "missing model": (("eval", "--model", "missing"), "missing is not a folder; --model takes a tiny model directory"),
    "missing saved videos": (("eval", "--videos", "missing"), "--videos folder not found: missing"),
    "zero clips": (("eval", "--count", "0"), "argument --count: must be at least 1, got 0"),
    "guided share over 1": (("eval", "--guidance-end", "2"), "argument --guidance-end: must be at most 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_sentence(case, junk):
    args, message = BAD_INPUTS[case]
    code, out, err = run_script("animax", *args, cwd=junk)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (junk / "out").exists() and not (junk / "ds").exists()


def test_a_bare_host_and_port_means_tcp():
    assert build_parser().parse_args(["ping", "127.0.0.1:5555"]).address == "tcp://127.0.0.1:5555"
    assert zmq_address(" tcp://localhost:1 ") == "tcp://localhost:1"
    assert zmq_address("ipc:///tmp/animax.sock") == "ipc:///tmp/animax.sock"


@pytest.fixture(scope="module")
def worker_scripts():
    from backend.worker import broker, command, serve

    return {"animax-worker": command.main, "animax-broker": broker.main, "animax-serve": serve.main}


BAD_WORKER_INPUTS = [
    ("animax-worker", ("--address", "tcp://127.0.0.1:99999"), "a port from 1 to 65535"),
    ("animax-worker", ("--queue-size", "0"), "argument --queue-size: must be at least 1"),
    ("animax-worker", ("--broker", "broker"), "argument --broker: expected tcp://HOST:PORT"),
    ("animax-worker", ("--model", "full", "--wan", "missing", "--adapter", "missing"), "--wan folder not found"),
    ("animax-worker", ("--curve-secret", "missing.key_secret", "--allow", "{tmp}", "--address", "tcp://0.0.0.0:5555"),
     "cannot read the CurveZMQ key file missing.key_secret"),
    ("animax-worker", ("keygen", "{tmp}/text.txt"), "text.txt is a file, not a folder"),
    ("animax-worker", ("--broker", "tcp://10.1.2.3:5556"), "a worker joins its broker over CurveZMQ"),
    ("animax-worker", ("--broker", "tcp://10.1.2.3:5556", "--server-key", "missing.key", "--client-key", "{tmp}"),
     "the server's public key must be its NAME.key file"),
    ("animax-worker", ("--server-key", "missing.key"), "use them with --broker"),
    ("animax-broker", ("--queue-size", "-1"), "argument --queue-size: must be at least 1"),
    ("animax-broker", (), "workers join a broker over CurveZMQ only"),
    ("animax-broker", ("--worker-secret", "missing.key_secret", "--allow-workers", "{tmp}"),
     "cannot read the CurveZMQ key file missing.key_secret"),
    ("animax-broker", ("--workers", "tcp://127.0.0.1:0"), "a port from 1 to 65535"),
    ("animax-serve", ("--gpus", "cpu:1", "--address", "tcp://0.0.0.0:5555"), "refusing to serve plain TCP"),
    ("animax-serve", ("--gpus", "cpu:1", "--curve-secret", "missing"), "CurveZMQ needs both"),
    ("animax-serve", ("--gpus", "cpu:1", "--model", "full", "--wan", "{tmp}", "--adapter", "missing"),
     "--adapter folder not found"),
]


@pytest.mark.parametrize("script, args, message", BAD_WORKER_INPUTS)
def test_worker_scripts_refuse_bad_arguments_in_one_line(script, args, message, worker_scripts, tmp_path, capsys):
    (tmp_path / "text.txt").write_text("hello")
    with pytest.raises(SystemExit) as exit:
        worker_scripts[script]([arg.format(tmp=tmp_path) for arg in args])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_keygen_writes_the_secret_key_for_its_owner_only(worker_scripts, tmp_path, capsys):
    folder = tmp_path / "keys"
    worker_scripts["animax-worker"](["keygen", str(folder), "--name", "me"])
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / "me.key_secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder / "me.key").st_mode) == 0o644  # public: to hand out
    os.chmod(folder / "me.key_secret", 0o644)
    worker_scripts["animax-worker"](["keygen", str(folder), "--name", "me"])  # a new key over an old, wider file
    assert stat.S_IMODE(os.stat(folder / "me.key_secret").st_mode) == 0o600
    assert "me.key_secret (secret: keep it here)" in capsys.readouterr().out
