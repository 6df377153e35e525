"""The pipeline a worker process runs, from ``animax-worker``'s ``--model`` options.

Its own module because both the command (``command.py``) and the view-parallel followers, which
load the same pipeline in processes of their own, need it.
"""

from __future__ import annotations

import argparse

from backend.model import FULL, TINY


def load_pipeline(args: argparse.Namespace):
    """The pipeline and its ``Preset`` for ``--model`` (and ``--fast``); nothing is downloaded."""
    import torch

    from backend.model import presets

    if args.model == "full":
        pipeline = presets.load_full(args.wan, args.adapter, device="cuda" if torch.cuda.is_available() else None)
        preset = FULL
    else:
        pipeline, preset = presets.load_tiny(presets.TINY_WEIGHTS), TINY
    return (pipeline, presets.use_fast_sampler(pipeline, preset)) if args.fast else (pipeline, preset)

