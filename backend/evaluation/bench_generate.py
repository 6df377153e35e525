"""Generate the pose-map videos of ``animax motion-bench --requests`` on a machine without Blender.

    python -m backend.evaluation.bench_generate OUT [--model DIR] [--fast] [--device cuda] [--text-cache FILE] [--shard I/N]

Reads OUT/requests/<rig>/ (rig.json, cameras.json, template_V.png, jobs.json) and runs each job
through the worker's own ``run_job`` with the embedded model (or the tiny model in ``--model``,
e.g. a training run's), as a worker serving Animate would;
writes OUT/videos/<rig>/<motion>_seed<S>.npz (the pose maps it returned) and OUT/generate.json
(seconds per job and stage). ``animax motion-bench --videos OUT`` then keys and scores them in Blender.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from backend.arguments import shard


def submit_message(folder: Path, job: dict):
    """The SUBMIT message the add-on's client would send for ``job`` of the rig in ``folder``."""
    from PIL import Image

    from animax_addon.core.request import Options, Request

    templates = [np.array(Image.open(path).convert("RGB")) for path in sorted(folder.glob("template_*.png"))]
    request = Request.from_images(job["prompt"], json.loads((folder / "rig.json").read_text()),
                                  json.loads((folder / "cameras.json").read_text()), templates,
                                  Options.from_dict(job["options"]))
    return request.to_message(job["video"])


class _CachedPrompts:
    """The pipeline, with each prompt's embeddings read from a ``TextCache`` (``--text-cache``) for
    machines that lack the text encoder's package; the worker's ``run_job`` calls it as the pipeline."""

    def __init__(self, pipeline, path: Path):
        from backend.train.text import TextCache

        self.pipeline, self.cache = pipeline, TextCache(path)

    def __call__(self, prompt: str, **kwargs):
        embeds = self.cache[[prompt]][:, : self.pipeline.config.max_sequence_length]
        return self.pipeline(prompt=None, prompt_embeds=embeds, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.evaluation.bench_generate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the --out folder of 'animax motion-bench --requests'")
    parser.add_argument("--model", type=Path, help="a tiny model directory to score instead of the embedded one")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--text-cache", type=Path,
                        help="prompt embeddings precomputed with the tiny preset's text encoder "
                             "(backend/train/text_cache.safetensors), where its package is not installed")
    parser.add_argument("--fast", action="store_true",
                        help="the fast sampler, as `animax-worker --fast` runs it (make the requests with "
                             "`animax motion-bench --requests --steps 10`, its step count)")
    parser.add_argument("--shard", type=shard, default=(0, 1),
                        help="I/N: only every N-th rig from the I-th (0-based), for N processes side by side")
    args = parser.parse_args(argv)
    requests = args.out / "requests"
    if not requests.is_dir():
        print(f"bench_generate: error: {requests} not found; run 'animax motion-bench --requests --out {args.out}' "
              "first", file=sys.stderr)
        return 2
    import torch

    from animax_addon.core.client import result_arrays
    from animax_addon.core.protocol import MessageType
    from backend.model.loading import load_tiny, tiny_preset
    from backend.model.presets import TINY_WEIGHTS
    from backend.model.samplers import use_fast_sampler
    from backend.worker.jobs import run_job

    from .motion_bench import video_fields

    model = args.model or TINY_WEIGHTS
    pipeline = load_tiny(model, text_encoder=args.text_cache is None).to(args.device)
    preset = tiny_preset(model)
    if args.fast:
        use_fast_sampler(pipeline, preset)
    pipeline.set_progress_bar_config(disable=True)
    generate = pipeline if args.text_cache is None else _CachedPrompts(pipeline, args.text_cache)
    seconds = {}
    index, count = args.shard
    for folder in sorted(p for p in requests.iterdir() if p.is_dir())[index::count]:
        for job in json.loads((folder / "jobs.json").read_text()):
            start = time.perf_counter()
            result = run_job(generate, submit_message(folder, job), lambda *_: None, lambda: False, preset)
            if result.type != MessageType.RESULT:
                print(f"{folder.name} {job['video']}: {result.body}", file=sys.stderr)
                return 1
            target = args.out / "videos" / folder.name / job["video"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "rig.json", target.with_name("rig.json"))  # what the videos were made for
            (arrays,) = result_arrays(result)  # jobs.json asks for one variation a job
            np.savez_compressed(target, pose=arrays["pose_video"], **video_fields(preset))
            key = f"{folder.name}/{job['video']}"
            seconds[key] = dict(result.body["diagnostics"]["seconds"], total=time.perf_counter() - start)
            print(f"{key}: " + ", ".join(f"{stage} {t:.1f} s" for stage, t in seconds[key].items()), flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    name = "generate.json" if count == 1 else f"generate_{index}of{count}.json"
    (args.out / name).write_text(json.dumps({"device": device, "model": str(model), "fast": args.fast,
                                              "seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
