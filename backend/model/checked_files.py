"""Weight files and configs read offline and checked: every missing, corrupt or mismatched file
raises :class:`WeightsError` naming the file and what was expected, before any half-loaded model
can reach the worker. Every ``from_pretrained`` gets a local folder and ``local_files_only=True``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"


class WeightsError(ValueError):
    """A weights file or directory is missing, corrupt, or does not fit what loads it."""


def require(root: Path, entries: list[str | tuple[str, ...]], expected: str) -> None:
    """Every entry (a relative path, or a tuple of alternatives) exists, or one error naming all missing."""
    missing = []
    for entry in entries:
        options = (entry,) if isinstance(entry, str) else entry
        if not any((root / option).is_file() for option in options):
            missing.append(" or ".join(str(root / option) for option in options) + " is missing")
    if missing:
        raise WeightsError("; ".join(missing) + f": expected {expected}")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path} is not a readable JSON file ({error})") from error
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def expect(path: Path, key: str, found, expected) -> None:
    if found != expected:
        raise WeightsError(f"{path}: expected {key} {expected!r}, found {found!r}")


def as_json(value):
    """A config value as JSON reads it back (tuples become lists), for comparing configs."""
    return json.loads(json.dumps(value))


def check_safetensors(path: Path) -> None:
    """Reading the header finds truncated and foreign files before a loader hides why."""
    try:
        with safe_open(path, framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path} is not a complete safetensors file ({error}); it may be truncated: "
                           f"copy it again") from error


def load_diffusers(cls, folder: Path, dtype: torch.dtype | None = None):
    """A diffusers model from a local folder whose config names ``cls``."""
    config_path = folder / "config.json"
    expect(config_path, "_class_name", read_json(config_path).get("_class_name"), cls.__name__)
    return _load_checked(cls, folder, DIFFUSERS_WEIGHTS, torch_dtype=dtype)


def load_transformers(cls, folder: Path, dtype: torch.dtype):
    """A transformers model from a local folder."""
    return _load_checked(cls, folder, TRANSFORMERS_WEIGHTS, dtype=dtype)


def _weight_files(folder: Path, name: str) -> list[Path]:
    """The safetensors files of a model folder: ``name`` itself, or the shards its index lists."""
    if (folder / name).is_file():
        return [folder / name]
    index = folder / f"{name}.index.json"
    weight_map = read_json(index).get("weight_map")
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
        check_safetensors(file)
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **load_kwargs)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
        raise WeightsError(f"{', '.join(map(str, files))} does not load as the {cls.__name__} that "
                           f"{folder / 'config.json'} describes ({error})") from error
    _check_loading_info(folder, files, info)
    return model
