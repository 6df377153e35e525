"""``python -m backend.train``: the tiny preset's whole training recipe, resumable across sessions.

    python -m backend.train text-cache                      # once, where MiniLM is installed
    python -m backend.train run --out runs/tiny [--resume]  # dataset -> vae -> joint -> multiview

The run writes ``OUT/model`` (a tiny-model directory that ``load_tiny`` reads), ``OUT/loss.png``,
``OUT/training.json`` (settings, data size, steps and seconds per stage) and checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler

from backend.data.dataset import build_samples
from backend.data.motions import all_prompts
from backend.model.pipeline_animax import AnimaXPipeline
from backend.model.presets import SCHEDULER_SHIFT, TINY, TINY_TRANSFORMER, TINY_VAE, save_tiny
from backend.model.transformer_animax import AnimaXTransformer3DModel

from .latents import encode_samples, latent_stats, to_video
from .loop import save_loss_plot, train_stage
from .stages import flow_loss, trainable_parameters, vae_loss
from .text import TextCache, build_text_cache

DEFAULT_TEXT_CACHE = Path(__file__).with_name("text_cache.safetensors")


def text_cache_main(args) -> None:
    from backend.model.presets import build_tiny_pipeline

    prompts = all_prompts()
    build_text_cache(build_tiny_pipeline(), prompts, args.out)
    print(f"wrote {len(prompts)} prompt embeddings to {args.out}")


def run_main(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any((out / "checkpoints").glob("*/progress.json")) and not args.resume:
        raise SystemExit(f"{out} holds checkpoints of an earlier run: pass --resume to continue it, "
                         "or choose another --out")
    deadline = time.time() + 60 * args.deadline_min if args.deadline_min else math.inf
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bf16" if device.type == "cuda" else "no"
    record = {"settings": vars(args), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "seconds": {}}
    text_cache = TextCache(args.text_cache)

    began = time.time()
    samples = build_samples(args.samples, args.seed, TINY.size, TINY.num_frames, device=str(device),
                            processes=args.processes)
    record["seconds"]["dataset"] = time.time() - began
    record["data"] = {"clips": len(samples), "views": samples.rgb.shape[1], "frames": samples.rgb.shape[2],
                      "size": samples.rgb.shape[3], "families": sorted(set(samples.families)),
                      "motions": sorted(set(samples.motions)), "prompts": len(set(samples.prompts))}
    print(f"dataset: {len(samples)} clips in {record['seconds']['dataset']:.0f} s", flush=True)

    torch.manual_seed(args.seed)
    vae = AutoencoderKLWan(**TINY_VAE).to(device)
    transformer = AnimaXTransformer3DModel(**TINY_TRANSFORMER).to(device)
    losses: dict[str, list[float]] = {}
    finished = True

    # Stage 0: the video autoencoder, on single views of both modalities.
    videos = {m: torch.from_numpy(getattr(samples, m)).to(device) for m in ("rgb", "pose")}
    n, views = samples.rgb.shape[:2]

    def vae_step(model, step):
        g = np.random.default_rng((args.seed, step))
        index, view = g.integers(n, size=args.vae_batch), g.integers(views, size=args.vae_batch)
        is_pose = torch.from_numpy(g.random(args.vae_batch) < 0.5).to(device)
        pick = torch.where(is_pose.view(-1, 1, 1, 1, 1), videos["pose"][index, view], videos["rgb"][index, view])
        return vae_loss(model, to_video(pick, device), is_pose)

    for name, model, params, step_fn, steps, lr in (
        ("vae", vae, list(vae.parameters()), vae_step, args.vae_steps, args.vae_lr),
    ):
        began = time.time()
        losses[name], done = train_stage(name, model, params, step_fn, steps, lr, out / "checkpoints" / name,
                                         deadline, mixed_precision=precision)
        record["seconds"][name] = time.time() - began
        finished &= done
    del videos
    if finished:
        mean, std = latent_stats(vae, samples, device)
        vae.register_to_config(latents_mean=mean, latents_std=std)
        began = time.time()
        text = text_cache[samples.prompts]
        data = encode_samples(vae, samples, text, device, seed=args.seed)
        record["seconds"]["encode"] = time.time() - began
        del samples
        generator = torch.Generator(device)

        def diffusion_step(stage, batch):
            def step_fn(model, step):
                generator.manual_seed(args.seed * 1_000_003 + step)
                index = torch.randint(len(data), (batch,), generator=generator, device=device)
                return flow_loss(model, data, index, stage, generator)
            return step_fn

        for name, steps, batch, lr in (("joint", args.joint_steps, args.batch, args.lr),
                                       ("multiview", args.multiview_steps, args.multiview_batch, args.multiview_lr)):
            if not finished:
                break
            params = trainable_parameters(transformer, name)
            began = time.time()
            losses[name], done = train_stage(name, transformer, params, diffusion_step(name, batch), steps, lr,
                                             out / "checkpoints" / name, deadline, mixed_precision=precision)
            record["seconds"][name] = time.time() - began
            finished &= done

    save_tiny(AnimaXPipeline(None, None, vae.cpu().eval(), transformer.cpu().eval(),
                             FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT), TINY.max_sequence_length),
              out / "model")
    save_loss_plot(losses, out / "loss.png")
    record["finished"] = finished
    record["steps"] = {name: len(values) for name, values in losses.items()}
    record["final_loss"] = {name: float(np.mean(values[-100:])) for name, values in losses.items() if values}
    log_file = out / "training.json"  # one entry per session, so resumed runs keep their history
    sessions = json.loads(log_file.read_text())["sessions"] if log_file.is_file() else []
    log_file.write_text(json.dumps({"sessions": sessions + [record]}, indent=2, default=str) + "\n")
    print(json.dumps({k: record[k] for k in ("seconds", "steps", "final_loss", "finished")}, indent=1))
    if not finished:
        print("not finished: run again with --resume to continue")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend.train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cache = sub.add_parser("text-cache", help="precompute the MiniLM embeddings of every procedural prompt")
    cache.add_argument("--out", type=Path, default=DEFAULT_TEXT_CACHE)
    run = sub.add_parser("run", help="train the tiny preset from scratch (all stages)")
    run.add_argument("--out", required=True)
    run.add_argument("--resume", action="store_true", help="continue the checkpoints in --out")
    run.add_argument("--samples", type=int, default=6000, help="procedural clips (4 views each)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--processes", type=int, default=0, help="processes that sample clips and draw pose maps")
    run.add_argument("--text-cache", type=Path, default=DEFAULT_TEXT_CACHE)
    run.add_argument("--vae-steps", type=int, default=3000)
    run.add_argument("--vae-batch", type=int, default=16)
    run.add_argument("--vae-lr", type=float, default=1e-3)
    run.add_argument("--joint-steps", type=int, default=8000)
    run.add_argument("--batch", type=int, default=64, help="single views per step in stage 1")
    run.add_argument("--lr", type=float, default=5e-4)
    run.add_argument("--multiview-steps", type=int, default=3000)
    run.add_argument("--multiview-batch", type=int, default=16, help="four-view samples per step in stage 2")
    run.add_argument("--multiview-lr", type=float, default=3e-4)
    run.add_argument("--deadline-min", type=float, default=0.0,
                     help="checkpoint and stop after this many minutes (0: no limit); --resume continues")
    args = parser.parse_args(argv)
    {"text-cache": text_cache_main, "run": run_main}[args.command](args)


if __name__ == "__main__":
    main()
