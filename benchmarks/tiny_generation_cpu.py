"""Seconds per generation of tiny models on the CPU, side by side in one run.

    .venv/bin/python benchmarks/tiny_generation_cpu.py --model backend/model/weights/tiny --model OTHER_DIR

Each model generates the same held-out clips as the worker would (prompt through the MiniLM text
encoder, 4 views, 17 frames at 64 px, the model's own prompt guidance, 20 steps), after one
warm-up generation; the first ``--model`` is the baseline of the ratio column. Prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from backend.evaluation.evaluate import draw_items, model_generator
from backend.model.presets import TINY_WEIGHTS, load_tiny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", help="tiny model directory (repeat to compare)")
    parser.add_argument("--clips", type=int, default=3, help="timed generations per model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    items = draw_items(args.clips + 1, seed=0, split="heldout-proportions")
    rows = []
    for directory in args.model or [TINY_WEIGHTS]:
        pipeline = load_tiny(directory)
        pipeline.set_progress_bar_config(disable=True)
        generate = model_generator(pipeline)
        generate(items[0])  # warm-up: first-call allocations and lazy imports
        seconds = []
        for item in items[1:]:
            began = time.perf_counter()
            generate(item)
            seconds.append(time.perf_counter() - began)
        transformer = pipeline.transformer
        rows.append((directory, transformer.config.num_layers, sum(p.numel() for p in transformer.parameters()),
                     pipeline.config.text_guidance_scale, statistics.median(seconds)))
    print(f"{args.clips} generations a model, {args.threads} threads\n")
    print("| model | blocks | transformer parameters | prompt guidance | s / generation (median) | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for directory, blocks, params, text_guidance, median in rows:
        print(f"| {directory} | {blocks} | {params / 1e6:.2f} M | {text_guidance:g} | {median:.1f} | "
              f"{median / rows[0][4]:.2f}x |")


if __name__ == "__main__":
    main()
