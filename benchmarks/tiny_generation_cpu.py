"""Seconds per generation of tiny models on the CPU, side by side in one run.

    .venv/bin/python benchmarks/tiny_generation_cpu.py --model backend/model/weights/tiny --model OTHER_DIR [--fast]
    .venv/bin/python benchmarks/tiny_generation_cpu.py --sizes 64 96 128

Each model generates the same held-out clips as the worker would (prompt through the MiniLM text
encoder, 4 views, 17 frames at the model's own view size, the model's own prompt guidance, 20 Euler
steps), after one warm-up generation; with ``--fast`` each model is timed a second time with the
worker's ``--fast`` sampler (``presets.FAST_SAMPLER``). ``--sizes`` times each model at other view sizes too (the
weights do not depend on the size, so this prices a larger preset before one is trained). The
first row is the baseline of the ratio column. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from backend.evaluation.evaluate import draw_items, model_generator
from backend.model.loading import load_tiny, tiny_preset
from backend.model.presets import TINY_WEIGHTS
from backend.model.samplers import use_fast_sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", help="tiny model directory (repeat to compare)")
    parser.add_argument("--clips", type=int, default=3, help="timed generations per model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fast", action="store_true", help="also time each model with the worker's --fast sampler")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="view sizes in pixels, a row each (default: the size each model was trained at)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    items = {}
    rows = []
    for directory in args.model or [TINY_WEIGHTS]:
        preset = tiny_preset(directory)
        for size in args.sizes or [preset.size]:
            if size not in items:
                items[size] = draw_items(args.clips + 1, seed=0, split="heldout-proportions", size=size)
            pipeline = load_tiny(directory)  # afresh: use_fast_sampler below swaps its scheduler
            pipeline.set_progress_bar_config(disable=True)
            rows.append((directory, size, "20 Euler steps", pipeline,
                         median_seconds(model_generator(pipeline), items[size])))
            if args.fast:
                fast = use_fast_sampler(pipeline, preset)
                generate = model_generator(pipeline, steps=fast.num_inference_steps,
                                           guidance_end=pipeline.config.guidance_end)
                rows.append((directory, size, "--fast", pipeline, median_seconds(generate, items[size])))
    print(f"{args.clips} generations a model, {args.threads} threads\n")
    print("| model | px | sampler | blocks | transformer parameters | prompt guidance | s / generation (median) "
          "| ratio |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for directory, size, sampler, pipeline, median in rows:
        transformer = pipeline.transformer
        params = sum(p.numel() for p in transformer.parameters())
        print(f"| {directory} | {size} | {sampler} | {transformer.config.num_layers} | {params / 1e6:.2f} M | "
              f"{pipeline.config.text_guidance_scale:g} | {median:.1f} | {median / rows[0][4]:.2f}x |")


def median_seconds(generate, items) -> float:
    """Median seconds of ``generate`` over ``items[1:]``, after a warm-up on ``items[0]``."""
    generate(items[0])  # first-call allocations and lazy imports
    seconds = []
    for item in items[1:]:
        began = time.perf_counter()
        generate(item)
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


if __name__ == "__main__":
    main()
