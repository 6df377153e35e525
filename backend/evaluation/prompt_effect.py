"""How far the prompt moves a model's motion, against how far the seed does (no classifier involved).

For each held-out clip the model generates its own prompt and prompts of other motions that the rig
can do, each with two seeds; every result is reconstructed as the worker reconstructs it. Two
spreads, as mean joint distances in rig radii:

- across prompts: between the motions of two prompts generated with one seed;
- across seeds: between the motions of one prompt generated with two seeds.

A model that follows its prompts has a ratio (prompts / seeds) well above 1; one that ignores them
has about 1: what it makes then depends on the seed and the rig, not on the words.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Callable

import numpy as np

from backend.data.motions import applicable, prompt
from backend.reconstruction.reconstruct import GENERATED, reconstruct

from .evaluate import EvalItem, Generator
from .motion_metrics import prompt_and_seed_effect

SEEDS = (0, 1)


def prompt_effect(make_generator: Callable[[int], Generator], items: list[EvalItem], prompts_per_clip: int = 3,
                  log: Callable[[str], None] | None = None) -> dict:
    """Spreads across prompts and across seeds for each of ``items``; ``make_generator(seed)`` gives
    the generator under test with that seed. Returns per-clip rows and their means."""
    if prompts_per_clip < 2:
        raise ValueError(f"prompts_per_clip must be at least 2 (the clip's own and another), got {prompts_per_clip}")
    generators = {seed: make_generator(seed) for seed in SEEDS}
    rows = []
    for i, item in enumerate(items):
        rng = np.random.default_rng(i)
        creature = item.clip.creature
        others = [m for m in applicable(creature) if m != item.clip.motion]
        picked = rng.choice(others, min(prompts_per_clip - 1, len(others)), replace=False)
        prompts = [item.clip.prompt] + [prompt(creature, str(m), rng) for m in picked]
        motions = {}
        for text, seed in itertools.product(prompts, SEEDS):
            videos = generators[seed](replace(item, clip=replace(item.clip, prompt=text)))
            motions[text, seed] = reconstruct(creature.rig, item.cameras, videos, **GENERATED).joints
        effect = prompt_and_seed_effect(motions, creature.rig.joints_rest)
        across_prompts, across_seeds = effect["across_prompts"], effect["across_seeds"]
        rows.append({"family": creature.family, "prompts": prompts, "across_prompts": across_prompts,
                     "across_seeds": across_seeds})
        if log:
            log(f"[{i + 1}/{len(items)}] {creature.family}: prompts {across_prompts:.3f}, "
                f"seeds {across_seeds:.3f} rig radii")
    prompts_mean = float(np.mean([r["across_prompts"] for r in rows]))
    seeds_mean = float(np.mean([r["across_seeds"] for r in rows]))
    return {"clips": len(rows), "across_prompts": prompts_mean, "across_seeds": seeds_mean,
            "ratio": prompts_mean / seeds_mean if seeds_mean > 0 else None, "rows": rows}
