"""``bench_generate``: a benchmark request becomes the SUBMIT Animate sends, and the worker's RESULT
gives the pose maps back exactly (a stand-in pipeline returns known videos; no model runs)."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.protocol import MessageType
from backend.data.rig_world import FAMILIES
from animax_addon.core.client import result_arrays
from backend.evaluation.bench_generate import main, submit_message
from backend.model import TINY, samplers
from backend.model.loading import build_tiny_pipeline, save_tiny
from backend.model.samplers import use_fast_sampler
from backend.worker.jobs import run_job


class KnownVideos:
    """Records the call and returns fixed pose-map videos, as the pipeline's output would be."""

    def __init__(self, videos):
        self.videos, self.calls = videos, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(pose_videos=self.videos, rgb_videos=None, interrupted=False)


def test_request_round_trips_through_the_worker_job(tmp_path):
    rig = FAMILIES["laptop"](np.random.default_rng(500)).rig  # a family the embedded model was not trained on
    cameras = make_camera_rig(*rig.bounding_sphere(), 32)
    (tmp_path / "rig.json").write_text(json.dumps(rig.to_dict()))
    (tmp_path / "cameras.json").write_text(json.dumps(cameras.to_dict()))
    rng = np.random.default_rng(1)
    templates = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    for v, image in enumerate(templates):
        Image.fromarray(image).save(tmp_path / f"template_{v}.png")
    job = {"video": "open_seed1.npz", "prompt": "the laptop opens",
           "options": {"steps": 3, "guidance": 3.0, "frames": 5, "fps": 24.0, "outputs": ["pose"], "seed": 1,
                       "variations": 1}}
    videos = rng.integers(0, 255, (1, 4, 5, 32, 32, 3), dtype=np.uint8)  # one variation
    library = replace(TINY, retargets=False)  # a model shown the rig itself, with the request's templates
    for preset in (library, TINY):
        pipeline = KnownVideos(videos)
        result = run_job(pipeline, submit_message(tmp_path, job), lambda *_: None, lambda: False, preset)
        assert result.type == MessageType.RESULT, result.body
        (arrays,) = result_arrays(result)
        assert np.array_equal(arrays["pose_video"], videos[0])
        (call,) = pipeline.calls
        assert call["prompt"] == "the laptop opens" and call["num_inference_steps"] == 3 and call["num_frames"] == 5
        shown_itself = np.array_equal(call["rgb_templates"], templates)
        assert shown_itself == (preset is library)  # else its counterpart creature, as training renders it
        assert np.allclose(call["cameras"].center, cameras.center) == (preset is library)  # framing its own sphere
        assert (result.body["diagnostics"]["drawn_as"] is None) == (preset is library)


def write_lamp_request(out, size):
    """A benchmark request of one nod of a procedural lamp, its templates ``size`` px, in ``out``."""
    rig = FAMILIES["lamp"](np.random.default_rng(0)).rig
    cameras = make_camera_rig(*rig.bounding_sphere(), size)
    folder = out / "requests" / "procedural_lamp"
    folder.mkdir(parents=True)
    (folder / "rig.json").write_text(json.dumps(rig.to_dict()))
    (folder / "cameras.json").write_text(json.dumps(cameras.to_dict()))
    for v in range(4):
        Image.fromarray(np.full((size, size, 3), 128, dtype=np.uint8)).save(folder / f"template_{v}.png")
    job = {"video": "nod_seed0.npz", "prompt": "the lamp nods",
           "options": {"steps": 1, "guidance": 3.0, "frames": 1, "fps": 24.0, "outputs": ["pose"], "seed": 0,
                       "variations": 1}}
    (folder / "jobs.json").write_text(json.dumps([job]))


@pytest.mark.parametrize("fast", [False, True])
def test_model_option_generates_with_that_model(tmp_path, monkeypatch, fast):
    """``--model DIR`` runs the requests through the tiny model in DIR (a training run's) and says so;
    ``--fast`` switches it to the worker's fast sampler."""
    switched = []
    monkeypatch.setattr(samplers, "use_fast_sampler",
                        lambda pipeline, preset: switched.append(pipeline) or use_fast_sampler(pipeline, preset))
    write_lamp_request(tmp_path / "out", 32)
    save_tiny(build_tiny_pipeline(), tmp_path / "model")
    assert main([str(tmp_path / "out"), "--model", str(tmp_path / "model"), "--device", "cpu"]
                + ["--fast"] * fast) == 0
    record = json.loads((tmp_path / "out" / "generate.json").read_text())
    assert record["model"] == str(tmp_path / "model") and list(record["seconds"]) == ["procedural_lamp/nod_seed0.npz"]
    assert record["fast"] is fast and len(switched) == fast
    if fast:
        assert type(switched[0].scheduler).__name__ == "UniPCMultistepScheduler" and switched[0].config.guidance_end == 0.5
    pose = np.load(tmp_path / "out" / "videos" / "procedural_lamp" / "nod_seed0.npz")["pose"]
    assert pose.shape == (4, 1, 32, 32, 3)


def test_a_model_trained_at_a_larger_size_takes_requests_of_its_size(tmp_path, capsys):
    """The worker's preset bounds the templates' size, so a model of 80 px needs its own size from its
    directory: with the tiny preset's 64 px the job would be refused. The videos record the model's
    training families."""
    write_lamp_request(tmp_path / "out", 80)
    save_tiny(build_tiny_pipeline(), tmp_path / "default")
    assert main([str(tmp_path / "out"), "--model", str(tmp_path / "default"), "--device", "cpu"]) == 1
    assert "cameras render 80x80 images, but the tiny model works at 64x64 at most" in capsys.readouterr().err
    save_tiny(build_tiny_pipeline(), tmp_path / "larger", size=80, families=("lamp", "laptop"))
    assert main([str(tmp_path / "out"), "--model", str(tmp_path / "larger"), "--device", "cpu"]) == 0
    saved = np.load(tmp_path / "out" / "videos" / "procedural_lamp" / "nod_seed0.npz")
    assert saved["pose"].shape == (4, 1, 80, 80, 3)
    assert tuple(saved["families"]) == ("lamp", "laptop")  # whose colours the replay reads them in
