"""Training the full preset for real on one GPU: both stages at 480 px x 81 frames x 4 views, on a
Wan2.1-T2V-1.3B-shaped directory of random weights. No bpy needed.

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/full_training_gpu.py --out $OUT/full_training.json

The wheels are the pinned diffusers 0.42.1, transformers 5.24.0 and peft; torch with CUDA,
accelerate, safetensors, tokenizers, scipy and matplotlib are the GPU machine's own. Parts, in this
order, each timed (seconds on one H100 estimated before the first run):

1. ``data`` (~20 s): ``--clips`` procedural clips at 480 px x 81 frames x 4 views
   (``build_samples``: the project's pose maps, capsule RGB rendered on the GPU a clip at a time)
   in the samples file that ``--dataset`` reads (453 MB a clip: two uint8 videos of 4 x 81 x 480 x 480 x 3
   and 8 templates).
2. ``wan`` (~60-90 s): ``benchmarks/wan_shaped_dir.py``'s directory in ``WORK/wan`` (29 GB of
   float32 weights drawn on the GPU), unless ``--wan DIR`` is given or an earlier run left a
   complete one there.
3. ``run`` (~100 s): ``python -m backend.train run --preset full --wan WAN --dataset
   WORK/samples.npz --out WORK/run --joint-steps 4 --batch 4 --multiview-steps 3 --multiview-batch 1
   --deadline-min 1e-9``, in this process: loads Wan (UMT5-XXL in bf16), encodes the clips and
   captions into the latent shards of ``WORK/run/latents``, trains one step of stage joint (the
   shards streamed by the DataLoader) and stops at its deadline with a checkpoint.
4. ``resume`` (~150 s): the same with ``--resume``: stage joint goes on from step 2 (the latents
   reused), then stage multiview trains. The run's own record (``WORK/run/training.json``) gives
   each stage's seconds a step after the process's first step (which warms kernels up) and its
   peak GPU memory. Its deadline leaves the batch search a minute of ``--budget-min``.
5. ``batch`` (~60-120 s): per stage, multiview first, the largest batch whose training step fits:
   a step (``flow_loss`` under bf16 autocast, backward, clipping, AdamW, as ``train_stage`` takes
   it) at batch 1 predicts from its peak memory the largest batch; that one and the next are
   tried, then one at a time towards the limit, out-of-memory errors caught. A try that the time
   left by ``--budget-min`` (8.5) would not hold is skipped, and the table says so.

Prints Markdown tables and writes the results to ``--out`` (JSON, also written before the batch
search). ``WORK`` (``--work``) needs about 45 GB of disk: the Wan directory, the samples and two
stage checkpoints (7 and 9 GB).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import time
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from wan_shaped_dir import write_wan_dir  # beside this script

import backend.train.__main__ as train
from backend.data.dataset import build_samples
from backend.model.checked_files import load_diffusers
from backend.model.presets import FULL
from backend.train.batches import StreamedBatches
from backend.train.latent_shards import LATENTS, LatentShards
from backend.train.stages import flow_loss, trainable_parameters

VIEWS = 4
DEVICE = torch.device("cuda")


def make_samples(path: Path, clips: int, size: int = FULL.size, frames: int = FULL.num_frames, seed: int = 0,
                 device: torch.device = DEVICE) -> None:
    """``clips`` procedural clips saved as a samples file; one clip rendered at a time, as 81 frames of
    four 480 px views at 2x supersampling take 3.6 GB of GPU memory."""
    samples = build_samples(clips, seed, size, frames, device=str(device), processes=min(clips, os.cpu_count() or 1),
                            render_batch=1)
    samples.save(path)


def timed(seconds: dict, name: str, fn):
    """``fn()``, announced and timed as one part of the command, its seconds in ``seconds[name]``."""
    print(f"--- {name}", flush=True)
    start = time.time()
    value = fn()
    seconds[name] = time.time() - start
    print(f"--- {name}: {seconds[name]:.0f} s", flush=True)
    return value


def samples_and_wan(work: Path, wan: Path | None, clips: int, seconds: dict) -> tuple[Path, Path]:
    """``clips`` procedural clips in WORK/samples.npz and the Wan directory: ``wan``, or WORK/wan,
    written unless an earlier run left a complete one (model_index.json is written last)."""
    samples = work / "samples.npz"  # before CUDA starts: its clips are drawn in forked processes
    timed(seconds, "data", lambda: make_samples(samples, clips))
    free_gpu()  # the renders' buffers
    directory = wan or work / "wan"
    if not (directory / "model_index.json").is_file():
        if wan:
            raise SystemExit(f"--wan {wan}: model_index.json is missing; expected a diffusers-format Wan directory")
        timed(seconds, "wan", lambda: write_wan_dir(directory, DEVICE))
        free_gpu()
    return samples, directory


def train_argv(args, wan: Path, samples: Path) -> list[str]:
    return ["run", "--preset", "full", "--wan", str(wan), "--dataset", str(samples), "--out", str(args.work / "run"),
            "--joint-steps", str(args.joint_steps), "--batch", str(args.batch),
            "--multiview-steps", str(args.multiview_steps), "--multiview-batch", str(args.multiview_batch),
            "--rgb-video" if args.rgb_video else "--no-rgb-video"]


def free_gpu() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def training_step(model, params, optimizer, data, stage: str, batch: int, settings) -> dict | None:
    """One step at ``batch``: its seconds and peak GPU memory (GiB), or None when it runs out of memory."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator(DEVICE).manual_seed(batch)
    began = time.perf_counter()
    try:
        clips = StreamedBatches(data, batch, batch, 1, DEVICE, workers=0)(1)
        with torch.autocast(DEVICE.type, torch.bfloat16):
            loss = flow_loss(model, clips, stage, generator, rest_probability=settings.rest_template_probability,
                             text_drop=settings.text_drop, pose_weight=settings.pose_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        torch.cuda.synchronize()
        result = {"seconds": time.perf_counter() - began, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    except RuntimeError as error:  # OutOfMemoryError is one; cuBLAS and cuDNN report theirs as plain errors
        if not isinstance(error, torch.cuda.OutOfMemoryError) and not any(
                m in str(error) for m in ("out of memory", "ALLOC_FAILED")):
            raise
        result = None
    optimizer.zero_grad(set_to_none=True)
    return result


def largest_batch(model, data, stage: str, settings, deadline: float, sample_seconds: float | None) -> dict:
    """The largest batch of ``stage`` whose step fits, searched as the module says; every try recorded.
    ``sample_seconds``, the run's seconds a step per sample, tells which tries the time left holds
    (else batch 1's step, whose first-step warm-up overestimates it)."""
    params = trainable_parameters(model, stage)
    optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)
    capacity = torch.cuda.mem_get_info()[1] / 2**30
    tries = {}

    def attempt(batch: int, seconds_per_sample: float | None) -> bool | None:
        """Whether ``batch`` fits (None: skipped for time)."""
        if seconds_per_sample is not None and time.time() + batch * seconds_per_sample > deadline:
            return None
        tries[batch] = training_step(model, params, optimizer, data, stage, batch, settings)
        free_gpu()
        print(f"[{stage}] batch {batch}: " + (f"{tries[batch]['seconds']:.1f} s, {tries[batch]['peak_memory_gib']:.1f} "
                                             f"GiB" if tries[batch] else "out of memory"), flush=True)
        return tries[batch] is not None

    attempt(1, None)  # also AdamW's state, which stays: memory after it is what every batch needs
    if not tries[1]:
        return {"largest": 0, "tries": tries, "limit_reached": True, "capacity_gib": capacity}
    sample_seconds = sample_seconds or tries[1]["seconds"]
    held = torch.cuda.memory_allocated() / 2**30
    per_sample = max(tries[1]["peak_memory_gib"] - held, 1e-3)
    fits, fails = 1, None
    batch = max(2, int((capacity - held) / per_sample))
    # Up from the guess while steps fit, down while they do not, until a fit and a failure are neighbours.
    while (fit := attempt(batch, sample_seconds)) is not None:
        fits, fails = (batch, fails) if fit else (fits, batch)
        if fails == fits + 1:
            break
        batch += 1 if fit else -1
    return {"largest": fits, "limit_reached": fails == fits + 1, "tries": tries, "capacity_gib": capacity,
            "held_gib": held}


def batch_search(args, wan: Path, samples: Path, deadline: float, speed: dict) -> dict:
    """Both stages' largest batches, on the run's latent shards and a fresh adapter on the same base;
    ``speed`` is the resumed run's record of its stages' speed."""
    settings = train.with_preset_defaults(train.build_parser().parse_args(train_argv(args, wan, samples)))
    base = load_diffusers(WanTransformer3DModel, wan / "transformer", torch.float32)
    model, _ = train.full_transformer(base, settings.lora_rank, settings.seed, settings.rgb_video)
    del base
    model.to(DEVICE).train()
    # The run's shards hold the latents: nothing is encoded again, so no VAE or text encoder is needed.
    data = LatentShards(args.work / "run" / LATENTS)
    # Stage multiview first: its memory is the one never measured, and its search is short.
    batches = {"multiview": args.multiview_batch, "joint": args.batch}
    return {stage: largest_batch(model, data, stage, settings, deadline,
                                 speed[stage]["seconds_per_step"] / batch if stage in speed else None)
            for stage, batch in batches.items()}


def report(results: dict) -> None:
    runs = results["runs"]
    print(f"\n{results['device']}, torch {results['torch']}; {results['clips']} clips of {VIEWS} views x "
          f"{FULL.num_frames} frames x {FULL.size} px\n")
    print("| part | seconds |\n| --- | ---: |")
    for name, seconds in results["seconds"].items():
        print(f"| {name} | {seconds:.0f} |")
    for i, run in enumerate(runs):
        print(f"| ({'run' if i == 0 else 'resume'}: " + ", ".join(f"{k} {v:.0f}" for k, v in run["seconds"].items())
              + ") | |")
    print("\n| stage | batch (views) | s/step after the first (steps timed) | first step (s) | peak GiB | "
          "largest batch that fits (s, GiB of its step) |\n| --- | ---: | ---: | ---: | ---: | --- |")
    resumed = runs[-1]
    for stage, batch in (("joint", results["batch"]), ("multiview", results["multiview_batch"])):
        speed = resumed.get("speed", {}).get(stage)
        views = batch * (VIEWS if stage == "multiview" else 1)
        measured = (f"{speed['seconds_per_step']:.2f} ({speed['steps'] - 1}) | {speed['first_step_seconds']:.2f} | "
                    f"{speed['peak_memory_gib']:.1f}") if speed else "not reached | | "
        search = results.get("largest_batch", {}).get(stage)
        if search:
            best = search["tries"].get(search["largest"])
            largest = (f"{search['largest']}" + ("" if search["limit_reached"] else " (limit not reached)")
                       + (f" ({best['seconds']:.1f} s, {best['peak_memory_gib']:.1f})" if best else ""))
        else:
            largest = "not searched"
        print(f"| {stage} | {batch} ({views}) | {measured} | {largest} |")
    first = runs[0]
    print(f"\nresume: the first run stopped after {first['steps']} (finished: {first['finished']}); the resumed run "
          f"ended at {resumed['steps']} (finished: {resumed['finished']}), losses "
          + "; ".join(f"{k}: " + ", ".join(f"{v:.3f}" for v in values) for k, values in results["losses"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the results (JSON)")
    parser.add_argument("--work", type=Path, default=Path("runs/full-training-bench"),
                        help="the Wan directory, samples and training run (about 45 GB; default %(default)s)")
    parser.add_argument("--wan", type=Path, help="an existing Wan2.1-T2V-1.3B(-shaped) directory to use")
    parser.add_argument("--clips", type=int, default=2, help="procedural clips in the samples file (default 2)")
    parser.add_argument("--joint-steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=train.STAGE_DEFAULTS["full"]["batch"])
    parser.add_argument("--multiview-steps", type=int, default=3)
    parser.add_argument("--multiview-batch", type=int, default=train.STAGE_DEFAULTS["full"]["multiview_batch"])
    parser.add_argument("--rgb-video", action=argparse.BooleanOptionalAction, default=True,
                        help="train the paper's joint RGB and pose sequence, or with --no-rgb-video the pose video "
                             "alone (about half the tokens)")
    parser.add_argument("--budget-min", type=float, default=8.5,
                        help="the whole command's time; the batch search stops trying past it (default %(default)s)")
    args = parser.parse_args()
    began = time.time()
    deadline = began + 60 * args.budget_min
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"clips": args.clips, "batch": args.batch, "multiview_batch": args.multiview_batch,
               "rgb_video": args.rgb_video, "seconds": {}}

    part = functools.partial(timed, results["seconds"])
    samples, wan = samples_and_wan(args.work, args.wan, args.clips, results["seconds"])
    results.update(device=torch.cuda.get_device_name(), torch=torch.__version__)
    shutil.rmtree(args.work / "run", ignore_errors=True)
    argv = train_argv(args, wan, samples)
    print("python -m backend.train " + " ".join(argv) + " --deadline-min 1e-9", flush=True)
    part("run", lambda: train.main(argv + ["--deadline-min", "1e-9"]))
    free_gpu()
    # The resume's own deadline leaves the batch search a minute; a resume cut short says so in the table.
    resume_minutes = max(deadline - 60 - time.time(), 1.0) / 60
    print(f"python -m backend.train {' '.join(argv)} --resume --deadline-min {resume_minutes:.2f}", flush=True)
    part("resume", lambda: train.main(argv + ["--resume", "--deadline-min", f"{resume_minutes:.4f}"]))
    free_gpu()
    results["runs"] = train.recorded_runs(args.work / "run")
    results["losses"] = {stage: json.loads((args.work / "run" / "checkpoints" / stage / "progress.json").read_text())
                         ["losses"] for stage in ("joint", "multiview")
                         if (args.work / "run" / "checkpoints" / stage / "progress.json").is_file()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")  # kept should the search fail
    results["gpu_memory_held_before_search_gib"] = torch.cuda.memory_allocated() / 2**30
    results["largest_batch"] = part("batch", lambda: batch_search(args, wan, samples, deadline,
                                                                  results["runs"][-1].get("speed", {})))
    results["seconds"]["total"] = time.time() - began
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    report(results)


if __name__ == "__main__":
    main()
