"""Full-size speed of AnimaXTransformer3DModel vs vanilla WanTransformer3DModel on one GPU.

    python benchmarks/transformer_gpu.py [--steps 3] [--layers 30]

Random bf16 weights at Wan2.1-T2V-1.3B's geometry; AnimaX's length: 4 views x 44 latent frames
(81 frames: 21 latent frames, two halves of [condition, video]) x 30 x 30 tokens (480 x 480).
In one run: one forward of each model on the same tokens (median of CUDA-event timings, TFLOP/s
from an analytic count), AnimaX under each SDPA backend, a denoising step with image CFG as two
forwards and as one batch of two, and the Wan VAE's encode of the 8 templates and decode of the
4 pose videos. Prints a Markdown table; the 50-step figure is the measured step times 50.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch.nn.attention import SDPBackend, sdpa_kernel

from backend.model.transformer_animax import AnimaXTransformer3DModel

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30)
VIEWS, HALF_FRAMES, SIDE, TEXT = 4, 22, 60, 512  # SIDE: latent side (480 / 8); tokens 30 x 30


def away_from_zero(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights where AnimaX starts at zero (rays, modality MLP's last layer, multi-view
    outputs), so that no layer is skipped for free and the multi-view exchange counts."""
    for p in model.parameters():
        if p.dim() > 1 and p.abs().max() == 0:
            torch.nn.init.normal_(p, std=0.02)
    return model


def timed(fn, repeat=5, warmup=2) -> float:
    """Median seconds of ``fn`` over ``repeat`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def forward_flops(layers: int, multiview: bool, batch: int = 1) -> float:
    """Matmul and attention FLOPs of one forward over all views (patch embed and heads ignored)."""
    d, ffn = 1536, 8960
    tokens_per_frame = (SIDE // 2) ** 2
    n = 2 * HALF_FRAMES * tokens_per_frame  # one view's sequence
    per_view = (
        4 * 2 * n * d * d  # self-attention q, k, v, out
        + 2 * 2 * n * n * d  # self-attention scores and values
        + 2 * 2 * n * d * d + 2 * 2 * TEXT * d * d  # cross-attention q, out; k, v of the text
        + 2 * 2 * n * TEXT * d
        + 2 * 2 * n * d * ffn  # feed-forward
    )
    total = VIEWS * per_view
    if multiview:
        seq = VIEWS * tokens_per_frame  # one latent frame of all views
        total += 4 * 2 * VIEWS * n * d * d + 2 * 2 * (2 * HALF_FRAMES) * seq * seq * d
    return batch * layers * total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="denoising steps to time (x50 in the table)")
    parser.add_argument("--layers", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    config = {**WAN_1_3B, "num_layers": args.layers}
    with torch.device(dev):
        wan = WanTransformer3DModel(**config).to(dt).eval()
        animax = away_from_zero(AnimaXTransformer3DModel(**config).to(dt).eval())

    frames = 2 * HALF_FRAMES
    x = torch.randn(1, VIEWS, 16, frames, SIDE, SIDE, device=dev, dtype=dt)
    text = torch.randn(1, TEXT, 4096, device=dev, dtype=dt)
    rays = torch.randn(1, VIEWS, 6, SIDE, SIDE, device=dev, dtype=dt)
    t = torch.tensor([500.0], device=dev)
    rows = []
    with torch.no_grad():
        vanilla = timed(lambda: wan(x[0], t.expand(VIEWS), text.expand(VIEWS, -1, -1)))
        ours = timed(lambda: animax(x, t, text, rays))
        flops_v, flops_a = forward_flops(args.layers, False), forward_flops(args.layers, True)
        rows.append(("vanilla Wan forward, 4 views", vanilla, flops_v / vanilla / 1e12))
        rows.append(("AnimaX forward (default SDPA)", ours, flops_a / ours / 1e12))
        for name, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    s = timed(lambda: animax(x, t, text, rays))
                rows.append((f"AnimaX forward ({name} SDPA)", s, flops_a / s / 1e12))
            except RuntimeError as exc:
                rows.append((f"AnimaX forward ({name} SDPA): {str(exc)[:60]}", float("nan"), float("nan")))
        best = min((r for r in rows[1:] if r[1] == r[1]), key=lambda r: r[1])[0]
        backend = SDPBackend.CUDNN_ATTENTION if "cuDNN" in best else SDPBackend.FLASH_ATTENTION if "flash" in best else None
        x2, text2, rays2, t2 = (v.expand(2, *v.shape[1:]) for v in (x, text, rays, t))

        def step(batched: bool):
            with sdpa_kernel(backend) if backend else contextlib.nullcontext():
                if batched:
                    animax(x2, t2, text2, rays2)
                else:
                    animax(x, t, text, rays)
                    animax(x, t, text, rays)

        two = timed(lambda: step(False), repeat=args.steps, warmup=1)
        one = timed(lambda: step(True), repeat=args.steps, warmup=1)
        rows.append(("CFG step as two forwards", two, 2 * flops_a / two / 1e12))
        rows.append(("CFG step as one batch of two", one, 2 * flops_a / one / 1e12))
        peak_dit = torch.cuda.max_memory_allocated() / 2**30
        del wan
        torch.cuda.empty_cache()

        with torch.device(dev):
            vae = AutoencoderKLWan().to(dt).eval()
        templates = torch.randn(2 * VIEWS, 3, 1, 480, 480, device=dev, dtype=dt)
        latents = torch.randn(1, 16, 21, SIDE, SIDE, device=dev, dtype=dt)
        encode = timed(lambda: vae.encode(templates), repeat=3, warmup=1)
        decode = timed(lambda: [vae.decode(latents) for _ in range(VIEWS)], repeat=2, warmup=1)
        rows.append(("VAE encode, 8 templates", encode, float("nan")))
        rows.append(("VAE decode, 4 pose videos 81x480x480", decode, float("nan")))
    peak = torch.cuda.max_memory_allocated() / 2**30

    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; {args.layers} layers; "
          f"AnimaX sequence {VIEWS} x {frames} x {(SIDE // 2) ** 2} tokens")
    print("\n| what | seconds | TFLOP/s |\n| --- | ---: | ---: |")
    for name, seconds, tflops in rows:
        print(f"| {name} | {seconds:.3f} | {tflops:.0f} |")
    total = 50 * min(one, two) + encode + decode
    print(f"\nAnimaX / vanilla forward time: {ours / vanilla:.2f}x; batched CFG saves "
          f"{100 * (1 - one / two):.0f}% of a step")
    print(f"end to end at 50 steps (text encoder not included): {total:.0f} s; "
          f"peak memory {peak_dit:.1f} GiB (DiT), {peak:.1f} GiB (all)")


if __name__ == "__main__":
    main()
