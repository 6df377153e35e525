"""Training speed of the shipped tiny transformer: eager vs regionally compiled, latents in memory vs
streamed from shards, on one GPU.

    python benchmarks/tiny_training_gpu.py [--steps 40] [--batches 64 256] [--modes eager compiled]
        [--data memory streamed] [--workers 8] [--clips 1024] [--work DIR] [--device cuda]

The transformer is built, with random weights, from the shipped model's own config
(backend/model/weights/tiny/transformer/config.json: its blocks, with the pooled prompt), and the
latents take the shipped VAE's and prompt's shapes (16 channels, 9 latent frames of 16 x 16: 1280
tokens per view; 32 prompt tokens), so the benchmark follows the shipped model. One optimiser step
as ``python -m backend.train run`` takes it in stage ``joint`` (``flow_loss`` on single views with
the training defaults, bf16 autocast, AdamW, gradient clipping). "compiled" is diffusers'
``compile_repeated_blocks(fullgraph=True)`` (each transformer block), which ``--compile`` turns on
in training.

``--data`` chooses where a step's batch comes from, as training does (backend/train/batches.py):
``memory``, ``--clips`` random clips held on the GPU (the procedural tiny preset's path); ``streamed``,
the same clips written as a library's latent shards (64 clips a shard, in ``--work``, a temporary
folder by default) and read by a DataLoader with each of ``--workers`` worker counts (a ``--dataset``'s
path). The shards are in the page cache after writing, so the streamed rows time the loader (reading,
collating, pinning, the copy to the GPU), not the disk. Prints a Markdown table: steps/s, samples/s,
the speed-up over the batch's first row, the first step's seconds (a compile's cost; the workers'
start) and peak GPU memory. Runs on a CPU too (``--device cpu``, e.g. ``--batches 2 --steps 2
--modes eager --clips 16``), to check the script, not to time it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from backend.model.checked_files import read_json
from backend.model.presets import TINY, TINY_WEIGHTS
from backend.model.transformer_animax import AnimaXTransformer3DModel
from backend.train.batches import LOADER_WORKERS, step_batches
from backend.train.latent_shards import LatentShards, write_index, write_shard
from backend.train.latents import LatentSet
from backend.train.stages import flow_loss, trainable_parameters

# The shipped model's shapes, read from its configs so that the benchmark follows them.
TRANSFORMER = AnimaXTransformer3DModel.load_config(TINY_WEIGHTS / "transformer")
VAE = AutoencoderKLWan.load_config(TINY_WEIGHTS / "vae")
Z_DIM, TEXT_DIM = TRANSFORMER["in_channels"], TRANSFORMER["text_dim"]
TEXT = read_json(TINY_WEIGHTS / "animax.json")["max_sequence_length"]
FRAMES = (TINY.num_frames - 1) // VAE["scale_factor_temporal"] + 1
SIDE = TINY.size // VAE["scale_factor_spatial"]
VIEWS, SAMPLES, SHARD_CLIPS = 4, 1024, 64


def shipped_transformer() -> AnimaXTransformer3DModel:
    """A randomly initialised transformer of the shipped model's config."""
    return AnimaXTransformer3DModel.from_config(TRANSFORMER)


def random_latents(clips: int = SAMPLES) -> LatentSet:
    """``clips`` clips of random latents of the shipped shapes, float16 as training keeps them, on the CPU."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return LatentSet(rand(clips, 2, VIEWS, Z_DIM, FRAMES, SIDE, SIDE).half(),
                     rand(clips, 4, 2, VIEWS, Z_DIM, 1, SIDE, SIDE).half(),
                     rand(clips, TEXT, TEXT_DIM).half(), rand(VIEWS, 6, SIDE, SIDE))


def write_library(data: LatentSet, folder: Path) -> LatentShards:
    """``data`` as a library's latent shards in ``folder``, as training's encode writes them."""
    entries = []
    for number, first in enumerate(range(0, len(data), SHARD_CLIPS)):
        clips = data.take(torch.arange(first, min(first + SHARD_CLIPS, len(data))))
        entries.append(dict(file=f"{number:05d}.safetensors", source=dict(random=number), clips=len(clips)))
        write_shard(folder / entries[-1]["file"], clips, dict(random=number))
    write_index(folder, dict(random=True), entries, data.rays, dict(clips=len(data)))
    return LatentShards(folder)


def measure(compiled: bool, batch: int, steps: int, data, device: torch.device, workers: int = 0) -> dict:
    """One row: ``steps`` timed steps after two untimed ones, on ``data`` (a LatentSet on the device, or a
    library's LatentShards, read by ``workers`` loader processes)."""
    torch.manual_seed(0)
    model = shipped_transformer().to(device)
    if compiled:
        model.compile_repeated_blocks(fullgraph=True)
    params = trainable_parameters(model, "joint")
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator(device)
    batches = step_batches(data, batch, 0, steps + 2, device, workers)
    cuda = device.type == "cuda"

    def step(i: int) -> None:
        generator.manual_seed(i)
        with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            loss = flow_loss(model, batches(i), "joint", generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    try:
        synchronize()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        step(1)  # the first step compiles (when compiled), warms the allocator and starts the loader's workers
        synchronize()
        first = time.perf_counter() - began
        step(2)
        synchronize()
        began = time.perf_counter()
        for i in range(steps):
            step(3 + i)
        synchronize()
        rate = steps / (time.perf_counter() - began)
    finally:
        batches.close()
    return dict(rate=rate, samples=rate * batch, first=first,
                memory=torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def rows(args, data: LatentSet, library: LatentShards | None):
    """(batch, data, mode, measured) of every row, in the table's order. The memory rows' clips go to
    the device for the row alone, so that the streamed rows' peak memory holds no clips but a batch's."""
    sources = (["memory"] if "memory" in args.data else []) + (args.workers if library is not None else [])
    for batch in args.batches:
        for source in sources:
            for mode in args.modes:
                if source == "memory":
                    on_device = LatentSet(*(t.to(args.device) for t in vars(data).values()))
                    yield batch, source, mode, measure(mode == "compiled", batch, args.steps, on_device, args.device)
                    del on_device
                else:
                    yield batch, f"streamed, {source} workers", mode, measure(mode == "compiled", batch, args.steps,
                                                                              library, args.device, source)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per row (default 40)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="single views per step")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
    parser.add_argument("--data", nargs="+", choices=["memory", "streamed"], default=["memory"],
                        help="where a step's batch comes from (default: memory)")
    parser.add_argument("--workers", type=int, nargs="+", default=[LOADER_WORKERS],
                        help="the streamed rows' DataLoader workers, a row each (default %(default)s)")
    parser.add_argument("--clips", type=int, default=SAMPLES, help="random clips (default %(default)s)")
    parser.add_argument("--work", type=Path, help="where the streamed clips' shards go (default: a temporary folder)")
    parser.add_argument("--device", type=torch.device, default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    data = random_latents(args.clips)
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {TRANSFORMER['num_layers']} blocks, "
          f"pooled prompt {'on' if TRANSFORMER['pooled_text'] else 'off'}, "
          f"{sum(p.numel() for p in shipped_transformer().parameters()) / 1e6:.2f} M parameters, "
          f"{args.clips} clips\n")
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        library = write_library(data, work) if "streamed" in args.data else None
        print("| batch | data | mode | steps/s | samples/s | speed-up | first step (s) | peak memory (GiB) |")
        print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        first_rate = {}
        for batch, source, mode, row in rows(args, data, library):
            base = first_rate.setdefault(batch, row["rate"])
            memory_gib = "-" if row["memory"] is None else f"{row['memory']:.2f}"
            print(f"| {batch} | {source} | {mode} | {row['rate']:.2f} | {row['samples']:.0f} | "
                  f"{row['rate'] / base:.2f}x | {row['first']:.1f} | {memory_gib} |", flush=True)


if __name__ == "__main__":
    main()
