"""``bench_generate``: a benchmark request becomes the SUBMIT Animate sends, and the worker's RESULT
gives the pose maps back exactly (a stand-in pipeline returns known videos; no model runs)."""

import json
from types import SimpleNamespace

import numpy as np
from PIL import Image

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.protocol import MessageType
from backend.data.rig_world import FAMILIES
from animax_addon.core.client import result_arrays
from backend.evaluation.bench_generate import submit_message
from backend.worker.jobs import run_job


class KnownVideos:
    """Records the call and returns fixed pose-map videos, as the pipeline's output would be."""

    def __init__(self, videos):
        self.videos, self.calls = videos, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(pose_videos=self.videos, rgb_videos=None, interrupted=False)


def test_request_round_trips_through_the_worker_job(tmp_path):
    rig = FAMILIES["lamp"](np.random.default_rng(0)).rig
    cameras = make_camera_rig(*rig.bounding_sphere(), 32)
    (tmp_path / "rig.json").write_text(json.dumps(rig.to_dict()))
    (tmp_path / "cameras.json").write_text(json.dumps(cameras.to_dict()))
    rng = np.random.default_rng(1)
    templates = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    for v, image in enumerate(templates):
        Image.fromarray(image).save(tmp_path / f"template_{v}.png")
    job = {"video": "nod_seed1.npz", "prompt": "the lamp nods",
           "options": {"steps": 3, "guidance": 3.0, "frames": 5, "fps": 24.0, "outputs": ["pose"], "seed": 1}}
    videos = rng.integers(0, 255, (4, 5, 32, 32, 3), dtype=np.uint8)
    pipeline = KnownVideos(videos)
    result = run_job(pipeline, submit_message(tmp_path, job), lambda *_: None, lambda: False)
    assert result.type == MessageType.RESULT, result.body
    assert np.array_equal(result_arrays(result)["pose_video"], videos)
    (call,) = pipeline.calls
    assert call["prompt"] == "the lamp nods" and call["num_inference_steps"] == 3 and call["num_frames"] == 5
    assert np.array_equal(call["rgb_templates"], templates)
