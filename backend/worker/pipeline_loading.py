"""The pipeline a worker process runs, from ``animax-worker``'s ``--model`` options.

Its own module because both the command (``command.py``) and the view-parallel followers, which
load the same pipeline in processes of their own, need it.
"""

from __future__ import annotations

import argparse

from backend.model.presets import FULL, TINY_WEIGHTS


def load_pipeline(args: argparse.Namespace):
    """The pipeline and its ``Preset`` for ``--model`` (and ``--fast``); nothing is downloaded."""
    import torch

    from backend.model.loading import load_full, load_tiny, tiny_preset
    from backend.model.samplers import use_fast_sampler

    if args.model == "full":
        pipeline = load_full(args.wan, args.adapter, device="cuda" if torch.cuda.is_available() else None)
        preset = FULL
    else:
        pipeline, preset = load_tiny(TINY_WEIGHTS), tiny_preset(TINY_WEIGHTS)
    return (pipeline, use_fast_sampler(pipeline, preset)) if args.fast else (pipeline, preset)

