"""``animax ping`` and ``animax generate`` against a worker on 127.0.0.1."""

import json
import threading
import time

import numpy as np
import pytest
import zmq
from PIL import Image

from animax_addon.core.rig import Rig
from backend.cli import main
from backend.model.loading import build_tiny_pipeline
from backend.model.presets import TINY
from backend.worker.standalone import Standalone
from test_worker import RIG, TEMPLATES

SIZE, FRAMES = TEMPLATES.shape[1], 5


@pytest.fixture(scope="module")
def worker():
    worker = Standalone(build_tiny_pipeline(), "tcp://127.0.0.1:*")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield worker
    worker.stop()
    thread.join(30)


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ping_prints_version_and_preset(worker, capsys):
    code, out, err = run(capsys, "ping", worker.address)
    assert code == 0, err
    assert "0.1.0" in out and f"{TINY.size} px, {TINY.num_frames} frames at 16 fps, {TINY.num_inference_steps} steps" \
        in out


def test_ping_nobody_exits_2_within_5_s(capsys):
    with zmq.Context.instance().socket(zmq.ROUTER) as probe:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    start = time.monotonic()
    code, out, err = run(capsys, "ping", f"tcp://127.0.0.1:{port}")
    assert code == 2 and time.monotonic() - start < 5
    assert f"127.0.0.1:{port} did not answer" in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "rig.json").write_text(json.dumps(RIG))
    templates = tmp_path / "templates"
    templates.mkdir()
    for view, image in enumerate(TEMPLATES):
        Image.fromarray(image).save(templates / f"view_{view}.png")
    return tmp_path


def test_generate_writes_the_result(worker, inputs, capsys):
    out = inputs / "out" / "result.npz"
    code, stdout, err = run(capsys, "generate", "--rig", inputs / "rig.json", "--templates", inputs / "templates",
                            "--prompt", "the arm waves", "--out", out, "--address", worker.address,
                            "--steps", 2, "--frames", FRAMES, "--fps", 24, "--rgb")
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "queued at position 0" and "denoise 1/2" in lines[1] and "denoise 2/2" in stdout
    rig = Rig.from_dict(RIG)
    with np.load(out) as result:
        # Keys come at the requested 24 fps over the same duration: 4 intervals at 16 fps -> 6 at 24.
        assert result["rotations"].shape == (7, rig.num_bones, 4) and result["root_translation"].shape == (7, 3)
        assert result["joints"].shape == (FRAMES, rig.num_joints, 3)
        assert result["pose_video"].shape == result["rgb_video"].shape == (4, FRAMES, SIZE, SIZE, 3)
        assert list(result["bone_names"]) == rig.bone_names and list(result["joint_names"]) == rig.joint_names
        assert float(result["fps"]) == 24.0 and str(result["prompt"]) == "the arm waves"
        assert str(result["drawn_as"]) in TINY.families  # the embedded preset animates the rig's counterpart
        # the quaternions are unit quaternions
        np.testing.assert_allclose(np.linalg.norm(result["rotations"], axis=-1), 1.0, atol=1e-4)


def test_generate_user_errors(worker, inputs, capsys):
    common = ["generate", "--rig", inputs / "rig.json", "--prompt", "walk", "--out", inputs / "r.npz",
              "--address", worker.address]
    (inputs / "templates" / "view_3.png").unlink()
    code, _, err = run(capsys, *common, "--templates", inputs / "templates")
    assert code == 2 and "view_3.png is missing" in err
    Image.fromarray(TEMPLATES[0, :16]).save(inputs / "templates" / "view_3.png")
    code, _, err = run(capsys, *common, "--templates", inputs / "templates")
    assert code == 2 and "square and of one size" in err
    Image.fromarray(TEMPLATES[3]).save(inputs / "templates" / "view_3.png")
    code, _, err = run(capsys, *common, "--templates", inputs / "templates", "--frames", 6)
    assert code == 2 and "options.frames" in err
    code, _, err = run(capsys, *common, "--templates", inputs / "templates", "--server-key", inputs / "rig.json")
    assert code == 2 and "--client-key" in err
