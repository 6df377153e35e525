"""One AnimaX forward split by views across N GPUs (``shard_views``) against the same forward on one.

    torchrun --nproc-per-node N benchmarks/view_parallel_gpu.py [--batch 2] [--layers 30]   # N: 1, 2 or 4
    torchrun --nproc-per-node 2 benchmarks/view_parallel_gpu.py --tiny --cpu   # the code path, gloo on CPUs

Random bf16 weights at Wan2.1-T2V-1.3B's geometry, the same on every rank (broadcast from rank 0);
AnimaX's full length as in ``transformer_gpu.py``: 4 views x 44 latent frames x 30 x 30 tokens.
Rank 0 times the plain forward alone, then all ranks time the split forward (median wall time,
each run started together after a barrier); the two outputs are compared. Prints a Markdown row.
``--tiny`` uses the embedded tiny preset's geometry instead (float32 with ``--cpu``).
"""

from __future__ import annotations

from backend.multi_gpu import turn_multicast_off

turn_multicast_off()  # before anything initialises NCCL, PyTorch's symmetric memory or NVSHMEM

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformer_gpu import HALF_FRAMES, SIDE, TEXT, VIEWS, WAN_1_3B, away_from_zero  # noqa: E402 - beside this script

from backend.model.presets import TINY, TINY_TRANSFORMER, TINY_VAE  # noqa: E402
from backend.model.transformer_animax import AnimaXTransformer3DModel  # noqa: E402
from backend.model.view_parallel import shard_views  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="2: image CFG's batch of two, as the pipeline runs it")
    parser.add_argument("--layers", type=int, default=None, help="transformer blocks (default: the preset's)")
    parser.add_argument("--repeat", type=int, default=5, help="timed forwards of each kind")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tiny preset's geometry instead of Wan2.1-1.3B's")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPUs, float32 (to check the code path)")
    return parser.parse_args(argv)


def seconds(fn, repeat: int, warmup: int, sync) -> float:
    """Median wall seconds of ``fn``; ``sync`` waits for the device and lines the ranks up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cpu:
        dev, dt = torch.device("cpu"), torch.float32
        dist.init_process_group("gloo")
    else:
        dev, dt = torch.device("cuda", int(os.environ["LOCAL_RANK"])), torch.bfloat16
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.tiny:
        channels = TINY_VAE["z_dim"]
        config = dict(TINY_TRANSFORMER, in_channels=channels, out_channels=channels)
        side = TINY.size // TINY_VAE["scale_factor_spatial"]
        half = (TINY.num_frames - 1) // TINY_VAE["scale_factor_temporal"] + 2  # [condition, video] latent frames
        text_len = TINY.max_sequence_length
    else:
        config, channels, side, half, text_len = dict(WAN_1_3B), WAN_1_3B["in_channels"], SIDE, HALF_FRAMES, TEXT
    if args.layers is not None:
        config["num_layers"] = args.layers

    torch.manual_seed(0)
    with torch.device(dev):
        model = away_from_zero(AnimaXTransformer3DModel(**config).to(dt).eval())
        x = torch.randn(args.batch, VIEWS, channels, 2 * half, side, side, dtype=dt)
        text = torch.randn(args.batch, text_len, config["text_dim"], dtype=dt)
        rays = torch.randn(args.batch, VIEWS, 6, side, side, dtype=dt)
        t = torch.full((args.batch,), 500.0)
    for tensor in [*model.parameters(), *model.buffers(), x, text, rays]:  # one replica, one input
        dist.broadcast(tensor.data, src=0)

    def wait():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def wait_all():
        wait()
        dist.barrier()

    with torch.no_grad():
        single = reference = None
        if rank == 0:
            single = seconds(lambda: model(x, t, text, rays), args.repeat, args.warmup, wait)
            reference = model(x, t, text, rays).sample
        dist.barrier()
        with shard_views(model):
            split = seconds(lambda: model(x, t, text, rays), args.repeat, args.warmup, wait_all)
            output = model(x, t, text, rays).sample

    if rank == 0:
        difference = ((output.float() - reference.float()).abs().max() / reference.float().abs().max()).item()
        where = "CPU (gloo)"
        if dev.type == "cuda":
            where = f"{torch.cuda.get_device_name(dev)} (NCCL {'.'.join(map(str, torch.cuda.nccl.version()))})"
        print(f"{where}; torch {torch.__version__}; {config['num_layers']} layers, d = "
              f"{config['num_attention_heads'] * config['attention_head_dim']}; batch {args.batch} x {VIEWS} views x "
              f"{2 * half} latent frames x {(side // 2) ** 2} tokens; {dt}")
        print("\n| ranks | views a rank | 1 rank (s) | split (s) | speed-up | efficiency | max difference / max |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print(f"| {world} | {VIEWS // world} | {single:.3f} | {split:.3f} | {single / split:.2f}x | "
              f"{100 * single / split / world:.0f}% | {difference:.1e} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
