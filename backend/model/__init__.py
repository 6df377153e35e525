"""The joint multi-view video-pose diffusion model (paper §3.1-3.2), on diffusers' Wan2.1."""

from dataclasses import dataclass

from animax_addon.core.rig import BODY_JOINTS

# Wan2.1 generates at 16 frames per second: every preset, training clip and raw result uses it. Kept
# here with the presets, importable without torch, for the CLI, the worker and the data builders;
# ``presets`` loads their weights.
MODEL_FPS = 16


@dataclass(frozen=True)
class Preset:
    """Generation defaults of a preset (per-view image size, frames at 16 fps, sampler settings)."""

    name: str
    size: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    max_sequence_length: int
    max_joints: int = BODY_JOINTS  # the most joints it tells apart (animax_addon.core.rig)


TINY = Preset("tiny", size=64, num_frames=17, num_inference_steps=20, guidance_scale=3.0, max_sequence_length=32)
FULL = Preset("full", size=480, num_frames=81, num_inference_steps=50, guidance_scale=3.0, max_sequence_length=512)
PRESETS = {preset.name: preset for preset in (TINY, FULL)}
