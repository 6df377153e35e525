"""The samplers of both presets: AnimaX's flow-matching Euler and Wan2.1's faster UniPC."""

from __future__ import annotations

from dataclasses import replace

from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from .pipeline_animax import AnimaXPipeline
from .presets import Preset

# Wan2.1's flow shift for 480p (its own UniPC config says flow_shift=3.0); both presets sample with it.
SCHEDULER_SHIFT = 3.0
SAMPLERS = ("euler", "unipc")
# The fast sampler (docs/benchmarks.md: 6.2x faster at full size on an H100): Wan's UniPC, 10 steps,
# image guidance on the first half of them only.
FAST_SAMPLER = dict(sampler="unipc", num_inference_steps=10, guidance_end=0.5)


def make_scheduler(sampler: str = "euler"):
    """The sampler of either preset: ``euler`` (AnimaX's flow-matching Euler, the default) or ``unipc``
    (Wan2.1's own multistep solver, the same flow shift; fewer steps for the same result)."""
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT)
    if sampler == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=SCHEDULER_SHIFT, num_train_timesteps=1000)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def use_fast_sampler(pipeline: AnimaXPipeline, preset: Preset) -> Preset:
    """Switch ``pipeline`` to the fast sampler; returns ``preset`` with its step count."""
    pipeline.scheduler = make_scheduler(FAST_SAMPLER["sampler"])
    pipeline.register_to_config(guidance_end=FAST_SAMPLER["guidance_end"])
    return replace(preset, num_inference_steps=FAST_SAMPLER["num_inference_steps"])
