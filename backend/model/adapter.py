"""The AnimaX adapter format and its LoRA (PEFT), what the ``full`` preset adds to Wan2.1-T2V-1.3B.

An adapter directory (written by :func:`save_adapter`) holds ``adapter_config.json`` and
``animax_adapter.safetensors``: only what AnimaX adds to Wan (the widened ``patch_embedding``, every
``attn_mv`` / ``norm_mv``, ``modality_embedder``) and the PEFT LoRA weights of the base blocks, never
the frozen base weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from .checked_files import WeightsError, as_json, check_safetensors, expect, read_json, require
from .transformer_animax import AnimaXTransformer3DModel

ADAPTER_FORMAT = "animax-adapter"
ADAPTER_FORMAT_VERSION = 1
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "animax_adapter.safetensors"

# The Wan config entries that fix the shapes of the weights an adapter was trained against.
GEOMETRY = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps")
# LoRA goes on the base Wan blocks' attention and feed-forward linears only; the new multi-view
# attention (attn_mv) is trained in full, so a LoRA there would be redundant.
LORA_TARGET_MODULES = r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)"


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
                  ray_channels=transformer.config.ray_channels, rgb_video=transformer.config.rgb_video, lora=lora)
    (adapter_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    state = {key: tensor.detach().contiguous() for key, tensor in _adapter_state_dict(transformer).items()}
    save_file(state, adapter_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})


def read_adapter_config(adapter_dir: Path, wan_config_path: Path, wan_config: dict) -> dict:
    """The config of the adapter in ``adapter_dir``, both its files present, checked against the
    base (``wan_config``, read from ``wan_config_path``): same format, same geometry, a plain LoRA."""
    require(adapter_dir, [ADAPTER_CONFIG, ADAPTER_WEIGHTS], "an AnimaX adapter directory written by save_adapter")
    path = adapter_dir / ADAPTER_CONFIG
    config = read_json(path)
    expect(path, "format", config.get("format"), ADAPTER_FORMAT)
    expect(path, "format_version", config.get("format_version"), ADAPTER_FORMAT_VERSION)
    geometry, lora = config.get("base_geometry"), config.get("lora")
    if not isinstance(geometry, dict) or set(geometry) != set(GEOMETRY):
        raise WeightsError(f"{path}: expected base_geometry with the entries {list(GEOMETRY)}")
    if not isinstance(lora, dict) or set(lora) != {"r", "lora_alpha", "target_modules"}:
        raise WeightsError(f"{path}: expected lora with the entries r, lora_alpha, target_modules")
    if not isinstance(config.get("ray_channels"), int):
        raise WeightsError(f"{path}: expected an integer ray_channels, found {config.get('ray_channels')!r}")
    config.setdefault("rgb_video", True)  # absent: written before the pose video could be generated alone
    if not isinstance(config["rgb_video"], bool):
        raise WeightsError(f"{path}: expected rgb_video true or false, found {config['rgb_video']!r}")
    differ = [f"{key}={geometry[key]!r} but the base has {key}={wan_config.get(key)!r}"
              for key in GEOMETRY if as_json(geometry[key]) != as_json(wan_config.get(key))]
    if differ:
        raise WeightsError(f"{path} was trained for another base transformer than {wan_config_path}: "
                           + "; ".join(differ))
    return config


def load_adapter(transformer: AnimaXTransformer3DModel, adapter_dir: Path, config: dict) -> None:
    """Add the LoRA of ``config`` (from :func:`read_adapter_config`) to ``transformer`` and load the
    adapter's weights into it."""
    try:
        transformer.add_adapter(LoraConfig(**config["lora"]))
    except (TypeError, ValueError) as error:  # e.g. a rank that is not a positive integer, targets that match nothing
        raise WeightsError(f"{adapter_dir / ADAPTER_CONFIG}: its lora entry does not apply to the base "
                           f"({error})") from error
    outside = _lora_outside_base_blocks(transformer)
    if outside:
        raise WeightsError(f"{adapter_dir / ADAPTER_CONFIG}: lora.target_modules must select only the base blocks' "
                           f"attention and feed-forward linears, but it also selects {outside}")
    _load_adapter_weights(transformer, adapter_dir / ADAPTER_WEIGHTS)


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
    check_safetensors(path)
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
