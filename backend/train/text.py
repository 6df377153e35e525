"""Prompt embeddings of the tiny preset's text encoder, precomputed.

Every procedural prompt is known in advance (``motions.all_prompts``), and the GPU machines that
train lack the MiniLM package, so training reads the embeddings from a safetensors cache made
where the encoder is installed. Each entry is the encoder's output with padding zeroed, exactly
what ``AnimaXPipeline.encode_prompt`` gives at inference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def build_text_cache(pipeline, prompts: list[str], path: str | Path) -> None:
    """Encode ``prompts`` with ``pipeline``'s text encoder and write them to ``path``."""
    with torch.no_grad():
        hidden = torch.cat([pipeline.encode_prompt(p, torch.device("cpu")) for p in prompts]).float()
    used = int((hidden.abs().sum(-1) > 0).sum(-1).max())  # the rest is zero padding: not stored
    save_file({"embeddings": hidden[:, :used].half().contiguous()}, str(path),
              metadata={"prompts": json.dumps(prompts), "length": str(hidden.shape[1])})


class TextCache:
    """``cache[prompts]`` -> (N, L, D) float embeddings, zero-padded back to the encoder's length."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no text-embedding cache; make one with "
                                    "`python -m backend.train text-cache --out {path}`")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        self.prompts = json.loads(meta["prompts"])
        self.length = int(meta["length"])
        self._index = {p: i for i, p in enumerate(self.prompts)}
        self._embeddings = load_file(str(path))["embeddings"].float()

    def __getitem__(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in self._index]
        if missing:
            raise KeyError(f"prompts not in the text cache (rebuild it): {missing[:3]}")
        rows = self._embeddings[[self._index[p] for p in prompts]]
        return torch.nn.functional.pad(rows, (0, 0, 0, self.length - rows.shape[1]))
