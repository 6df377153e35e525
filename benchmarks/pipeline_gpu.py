"""The whole AnimaXPipeline at full size on one GPU, broken down by stage.

    python benchmarks/pipeline_gpu.py [--steps 3] [--fast-steps 10 --fast-sampler unipc --fast-guidance-end 0.5]
                                      [--layouts joint pose-only] [--first-block-cache 0.05 0.1] [--compile]

Random bf16 weights with the real geometry of every component: UMT5-XXL text encoder (Wan2.1's),
the AnimaX transformer at Wan2.1-T2V-1.3B's size, the Wan VAE. 4 views x 81 frames x 480 x 480,
image CFG 3.0. Runs ``--steps`` denoising steps of the paper's sampler (Euler, guidance on every
step) through the real ``__call__`` and times each stage (each wrapped to synchronise the GPU); the
50-step figure scales the measured DiT time. Then, in the same process, the fast sampler end to end,
every step measured: ``--fast-steps`` of ``--fast-sampler``, guided on the first ``--fast-guidance-end``
of them. Each of ``--layouts`` is timed in turn on the same weights: ``joint`` generates the RGB
video beside the pose video (the paper's sequence of 2f + 4 latent frames a view), ``pose-only``
the pose video alone from both templates (f + 3 frames), as the embedded tiny model does. Each
``--first-block-cache`` threshold times the fast sampler again with diffusers' first-block cache,
with how many steps ran every block and how far its pose maps are from the uncached ones.
``--compile`` then times it with the transformer's blocks compiled (``compile_repeated_blocks``,
warmed up on a whole call, as the guided and unguided steps have other batch sizes), against the
uncompiled pose maps.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch
from diffusers import AutoencoderKLWan, FirstBlockCacheConfig
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_gpu import WAN_1_3B, away_from_zero  # beside this script
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from animax_addon.core.cameras import make_camera_rig
from backend.model.pipeline_animax import AnimaXPipeline
from backend.model.samplers import SAMPLERS, make_scheduler
from backend.model.transformer_animax import AnimaXTransformer3DModel

LAYOUTS = {"joint": True, "pose-only": False}
"""What the transformer generates: the RGB video beside the pose video (``rgb_video``) or not."""

UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in code: tokenising is not what is measured here."""
    words = "<pad> </s> <unk> the fox pounces forward".split()
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>")


def timing(stages: dict, name: str, fn):
    def wrapped(*args, **kwargs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        torch.cuda.synchronize()
        stages[name].append(time.perf_counter() - start)
        return result

    return wrapped


def measure(pipe, call: dict, stages: dict, warm_up: dict | None = None) -> tuple[float, float, np.ndarray]:
    """One timed call after a warm-up (kernels, cuDNN plans; one step unless ``warm_up`` says
    otherwise), from seed 0: (seconds, peak GiB, the pose videos)."""
    pipe(**(warm_up or {**call, "num_inference_steps": 1}))
    stages.clear()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    videos = pipe(**call, generator=torch.Generator().manual_seed(0)).pose_videos
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30, videos


def relative_error(videos: np.ndarray, reference: np.ndarray) -> float:
    """How far pose maps are from the reference's, relative to the reference."""
    return float(np.linalg.norm(videos.astype(np.float64) - reference) / np.linalg.norm(reference.astype(np.float64)))


def report(stages: dict, total: float, peak: float, scale_to: int | None, steps: int) -> None:
    """A Markdown table of the stages; with ``scale_to`` a column of DiT time scaled to that many steps."""
    header = f"| stage | seconds ({steps} steps) |" + (f" seconds at {scale_to} steps |" if scale_to else "")
    print(header + "\n| --- | ---: |" + (" ---: |" if scale_to else ""))
    scaled = 0.0
    for name, times in stages.items():
        scale = scale_to / steps if scale_to and name.startswith("DiT") else 1
        scaled += sum(times) * scale
        print(f"| {name} ({len(times)} calls) | {sum(times):.2f} |" + (f" {sum(times) * scale:.1f} |" if scale_to else ""))
    other = total - sum(sum(t) for t in stages.values())
    print(f"| other (scheduler, rays, copies) | {other:.2f} |" + (f" {other:.1f} |" if scale_to else ""))
    print(f"| **total** | **{total:.2f}** |" + (f" **{scaled + other:.0f}** |" if scale_to else ""))
    print(f"\npeak GPU memory {peak:.1f} GiB\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps of the paper's sampler measured (scaled to 50)")
    parser.add_argument("--fast-steps", type=int, default=10)
    parser.add_argument("--fast-sampler", choices=SAMPLERS, default="unipc")
    parser.add_argument("--fast-guidance-end", type=float, default=0.5)
    parser.add_argument("--first-block-cache", type=float, nargs="*", default=[],
                        help="thresholds of diffusers' first-block cache to time with the fast sampler, each "
                             "against the uncached pose maps of the same seed (random weights change across "
                             "steps otherwise than trained ones: this prices the lever, not its quality)")
    parser.add_argument("--compile", action="store_true",
                        help="time the fast sampler again with the transformer's blocks compiled")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS),
                        help="what the transformer generates, each timed in turn (default: both)")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    torch.set_default_dtype(dt)  # build the 5.7B text encoder in bf16 directly
    with torch.device(dev):
        text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).eval()
        weights = away_from_zero(AnimaXTransformer3DModel(**WAN_1_3B).eval()).state_dict()
        vae = AutoencoderKLWan().eval()
    torch.set_default_dtype(torch.float32)
    pipe = AnimaXPipeline(word_tokenizer(), text_encoder, vae, None, make_scheduler("euler"))
    pipe.set_progress_bar_config(disable=True)

    stages = defaultdict(list)
    pipe.encode_prompt = timing(stages, "text encoder", pipe.encode_prompt)
    pipe.encode_templates = timing(stages, "VAE encode (templates)", pipe.encode_templates)
    pipe.decode = timing(stages, "VAE decode (4 pose videos)", pipe.decode)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 4, 480, 480, 3), dtype=np.uint8)
    call = dict(prompt="the fox pounces forward", rgb_templates=images[0], pose_templates=images[1],
                cameras=make_camera_rig(np.zeros(3), 1.0, 480), num_frames=81, num_inference_steps=args.steps)
    fast = dict(call, num_inference_steps=args.fast_steps, guidance_end=args.fast_guidance_end)
    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}\n")
    summary = []
    for layout in args.layouts:
        torch.set_default_dtype(dt)
        with torch.device(dev):  # the same weights in each layout: none depends on it
            transformer = AnimaXTransformer3DModel(**WAN_1_3B, rgb_video=LAYOUTS[layout]).eval()
        torch.set_default_dtype(torch.float32)
        transformer.load_state_dict(weights)
        transformer.forward = timing(stages, "DiT forward (a batch of 2 when guided)", transformer.forward)
        pipe.register_modules(transformer=transformer)
        pipe.scheduler = make_scheduler("euler")
        print(f"### {layout}: paper's sampler, Euler, image guidance 3.0 on every step ({args.steps} steps "
              "measured)\n")
        total, peak, _ = measure(pipe, call, stages)
        report(stages, total, peak, 50, args.steps)

        pipe.scheduler = make_scheduler(args.fast_sampler)
        print(f"### {layout}: fast sampler, {args.fast_steps} {args.fast_sampler} steps, image guidance 3.0 on the "
              f"first {args.fast_guidance_end:.0%} (every step measured)\n")
        total, peak, reference = measure(pipe, fast, stages)
        report(stages, total, peak, None, args.fast_steps)
        summary.append((layout, total, {name: sum(times) for name, times in stages.items()}, peak, None))
        computed = []  # the last block runs only on the steps a cache does not skip
        counting = transformer.blocks[-1].ffn.register_forward_hook(lambda *_: computed.append(1))
        for threshold in args.first_block_cache:
            transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
            total, peak, videos = measure(pipe, fast, stages)
            times = {name: sum(t) for name, t in stages.items()}  # before the counting call adds to them
            computed.clear()
            pipe(**fast, generator=torch.Generator().manual_seed(0))  # count the steps computed
            transformer.disable_cache()
            error = relative_error(videos, reference)
            summary.append((f"{layout}, first-block cache {threshold:g}", total, times, peak,
                            f"{len(computed)} of {args.fast_steps} steps whole; pose maps {error:.1%} off"))
        counting.remove()
        if args.compile:
            transformer.compile_repeated_blocks(fullgraph=True)
            start = time.perf_counter()
            total, peak, videos = measure(pipe, fast, stages, warm_up=fast)
            print(f"{layout}: compiled and warmed up in {time.perf_counter() - start - total:.0f} s\n")
            report(stages, total, peak, None, args.fast_steps)
            error = relative_error(videos, reference)
            summary.append((f"{layout}, blocks compiled", total, {name: sum(t) for name, t in stages.items()}, peak,
                            f"pose maps {error:.1%} off"))
        del transformer
        pipe.register_modules(transformer=None)
        torch.cuda.empty_cache()
    print("| layout | fast sampler end to end | DiT | VAE decode | peak GiB | ratio | output |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for layout, total, times, peak, output in summary:
        dit = sum(t for name, t in times.items() if name.startswith("DiT"))
        print(f"| {layout} | {total:.1f} s | {dit:.1f} s | {times.get('VAE decode (4 pose videos)', 0.0):.1f} s | "
              f"{peak:.1f} | {total / summary[0][1]:.2f}x | {output or 'reference'} |")


if __name__ == "__main__":
    main()
