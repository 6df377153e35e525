"""The presets of the one architecture (``AnimaXTransformer3DModel`` + Wan's VAE) and their constants.

- ``tiny``: the small default shipped with the project (``TINY_WEIGHTS``) and trained by our own code.
- ``full``: Wan2.1-T2V-1.3B with an AnimaX adapter.

Free of torch, so that the CLI, the worker and the data builders read them without loading the
model; ``loading`` builds and loads the pipelines, ``samplers`` their schedulers.
"""

from dataclasses import dataclass
from pathlib import Path

from animax_addon.core.rig import BODY_JOINTS
from backend.data.rig_world import TRAIN_FAMILIES

# Wan2.1 generates at 16 frames per second: every preset, training clip and raw result uses it.
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
    # The procedural families it was trained on: a user's rig is drawn in the colours of its best
    # counterpart among their creatures (backend.data.joint_colours).
    families: tuple[str, ...] = TRAIN_FAMILIES
    # Whether a rig that is not one of its training creatures is animated as its counterpart creature,
    # the motion retargeted onto it (backend.worker.model_body): a model trained on procedural
    # creatures alone draws those far better than a rig it never saw (docs/quality.md).
    retargets: bool = False
    # Whether it trained on its families' cast (backend.data.joint_colours.cast): a rig it retargets
    # to is then drawn as the cast member that fits it best, not the nearest of every reference.
    cast: bool = False


def is_view_size(size) -> bool:
    """Whether ``size`` can be a tiny model's view size in pixels: a positive multiple of 16, as
    ``train run --size`` takes and a model's ``animax.json`` records."""
    return isinstance(size, int) and size >= 16 and size % 16 == 0


TINY = Preset("tiny", size=64, num_frames=17, num_inference_steps=20, guidance_scale=3.0, max_sequence_length=32,
              retargets=True)
FULL = Preset("full", size=480, num_frames=81, num_inference_steps=50, guidance_scale=3.0, max_sequence_length=512)
PRESETS = {preset.name: preset for preset in (TINY, FULL)}

# The embedded default: trained by `python -m backend.train run` (docs/training.md), shipped in the repository.
TINY_WEIGHTS = Path(__file__).with_name("weights") / "tiny"

# 128-d tokens in 4 heads of 32 (32 splits into Wan's 3D RoPE as t, h, w = 12, 10, 10), 4 blocks: 1.6 M
# parameters. Its latent channels (in_channels = out_channels) are the VAE's z_dim. The shipped weights
# are this, trained, then deepened to 6 blocks with the pooled prompt and later to 10 (3.6 M;
# backend/train/recipes/tiny.json), and their own config.json says so; training builds a new transformer
# with 10 blocks and the pooled prompt unless told otherwise.
TINY_TRANSFORMER = dict(
    num_attention_heads=4, attention_head_dim=32, text_dim=384, freq_dim=64, ffn_dim=512, num_layers=4,
)


def tiny_vae_config(base_dim: int = 32, z_dim: int = 16, temporal_compression: int = 2) -> dict:
    """A tiny ``AutoencoderKLWan`` config: 4x spatial compression (64 px -> 16x16 latents) and 4x or 2x
    temporal compression (17 frames -> 5 or 9 latent frames); Wan's own VAE is 8x / 4x, z_dim 16."""
    if temporal_compression not in (2, 4):
        raise ValueError(f"temporal_compression must be 2 or 4, got {temporal_compression}")
    return dict(base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 2, 2], num_res_blocks=1,
                temperal_downsample=[temporal_compression == 4, True], scale_factor_temporal=temporal_compression,
                scale_factor_spatial=4, latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)


TINY_VAE = tiny_vae_config()
