"""Training speed of the shipped tiny transformer: eager vs regionally compiled, on one GPU.

    python benchmarks/tiny_training_gpu.py [--steps 40] [--batches 64 256]

The transformer is built, with random weights, from the shipped model's own config
(backend/model/weights/tiny/transformer/config.json: its blocks, with the pooled prompt), and the
latents take the shipped VAE's and prompt's shapes (16 channels, 9 latent frames of 16 x 16: 1280
tokens per view; 32 prompt tokens), so the benchmark follows the shipped model. One optimiser step
as ``python -m backend.train run`` takes it in stage ``joint`` (``flow_loss`` on single views with
the training defaults, bf16 autocast, AdamW, gradient clipping). "compiled" is diffusers'
``compile_repeated_blocks(fullgraph=True)`` (each transformer block), which ``--compile`` turns on
in training. Prints a Markdown table: steps/s, samples/s, the speed-up and peak memory; the
compiled rows' first-step time is the compile's cost.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import AutoencoderKLWan

from backend.model.checked_files import read_json
from backend.model.presets import TINY, TINY_WEIGHTS
from backend.model.transformer_animax import AnimaXTransformer3DModel
from backend.train.latents import LatentSet
from backend.train.stages import flow_loss, trainable_parameters

# The shipped model's shapes, read from its configs so that the benchmark follows them.
TRANSFORMER = AnimaXTransformer3DModel.load_config(TINY_WEIGHTS / "transformer")
VAE = AutoencoderKLWan.load_config(TINY_WEIGHTS / "vae")
Z_DIM, TEXT_DIM = TRANSFORMER["in_channels"], TRANSFORMER["text_dim"]
TEXT = read_json(TINY_WEIGHTS / "animax.json")["max_sequence_length"]
FRAMES = (TINY.num_frames - 1) // VAE["scale_factor_temporal"] + 1
SIDE = TINY.size // VAE["scale_factor_spatial"]
VIEWS, SAMPLES = 4, 1024


def shipped_transformer() -> AnimaXTransformer3DModel:
    """A randomly initialised transformer of the shipped model's config."""
    return AnimaXTransformer3DModel.from_config(TRANSFORMER)


def random_latents(device) -> LatentSet:
    g = torch.Generator(device).manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g, device=device)  # noqa: E731
    return LatentSet(rand(SAMPLES, 2, VIEWS, Z_DIM, FRAMES, SIDE, SIDE).half(),
                     rand(SAMPLES, 4, 2, VIEWS, Z_DIM, 1, SIDE, SIDE).half(),
                     rand(SAMPLES, TEXT, TEXT_DIM).half(), rand(VIEWS, 6, SIDE, SIDE))


def measure(compiled: bool, batch: int, steps: int, data: LatentSet) -> dict:
    torch.manual_seed(0)
    model = shipped_transformer().cuda()
    if compiled:
        model.compile_repeated_blocks(fullgraph=True)
    params = trainable_parameters(model, "joint")
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator("cuda")

    def step(i: int) -> None:
        generator.manual_seed(i)
        index = torch.randint(SAMPLES, (batch,), generator=generator, device="cuda")
        with torch.autocast("cuda", torch.bfloat16):
            loss = flow_loss(model, data, index, "joint", generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    step(0)  # the first step compiles (when compiled) and warms the allocator
    torch.cuda.synchronize()
    first = time.perf_counter() - began
    step(1)
    torch.cuda.synchronize()
    began = time.perf_counter()
    for i in range(steps):
        step(2 + i)
    torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - began)
    return dict(rate=rate, samples=rate * batch, first=first, memory=torch.cuda.max_memory_allocated() / 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per row (default 40)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="single views per step")
    args = parser.parse_args()
    data = random_latents("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {TRANSFORMER['num_layers']} blocks, "
          f"pooled prompt {'on' if TRANSFORMER['pooled_text'] else 'off'}, "
          f"{sum(p.numel() for p in shipped_transformer().parameters()) / 1e6:.2f} M parameters\n")
    print("| batch | mode | steps/s | samples/s | speed-up | first step (s) | peak memory (GiB) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for batch in args.batches:
        eager = measure(False, batch, args.steps, data)
        compiled = measure(True, batch, args.steps, data)
        for mode, row in (("eager", eager), ("compiled", compiled)):
            print(f"| {batch} | {mode} | {row['rate']:.2f} | {row['samples']:.0f} | "
                  f"{row['rate'] / eager['rate']:.2f}x | {row['first']:.1f} | {row['memory']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
