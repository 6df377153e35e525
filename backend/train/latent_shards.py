"""A library's latents as shards on disk: encoded once, a shard at a time, and read a clip at a time.

``OUT/latents/`` holds, per shard of the dataset (a ``Samples`` file of ``SampleShards``), one
``NNNNN.safetensors`` of its clips' latents in float16: ``video`` (n, 2, V, C, f+1, h, w),
``condition`` (n, K, 2, V, C, 1, h, w) and ``text`` (n, L, D); ``rays.safetensors``, the views'
Plücker rays (the same for every clip); and ``index.json``, written last: the key (VAE, seed, ...),
each shard's file, source and clip count, and a description of the data.

Every file is written under a temporary name and then replaced, so a stopped encode leaves whole
shards or none. Each shard's metadata names the key and the source it was encoded from, so an encode
run again skips the shards that still fit and continues where a stopped one ended.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from backend.data.dataset import Samples, SampleShards
from backend.files import write_atomically

from .latents import LatentSet, latent_rays

LATENTS = "latents"
INDEX = "index.json"
RAYS = "rays.safetensors"
PARTS = ("video", "condition", "text")
OPEN_FILES = 64
"""Shard files a reading process keeps open (memory-mapped) at most."""


def file_key(path: Path) -> dict:
    """What identifies a file's contents cheaply (for the keys of encoded latents)."""
    path = Path(path).resolve()
    return dict(path=str(path), bytes=path.stat().st_size, mtime_ns=path.stat().st_mtime_ns)


def encode_library(shards: SampleShards, folder: Path, key: dict, encode: Callable[[Samples, int], LatentSet],
                   description: dict, log: Callable[[str], None] = print) -> int:
    """Encode into ``folder`` each shard of ``shards`` that it does not hold under ``key``, with
    ``encode(samples, first)`` (``first``: the dataset index of the shard's first clip); RAM holds one
    shard's clips at a time. Returns how many shards were encoded."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = [dict(file=f"{number:05d}.safetensors", source=file_key(source), clips=count)
               for number, (source, count) in enumerate(zip(shards.files, shards.counts))]
    index = folder / INDEX
    if index.is_file():
        written = json.loads(index.read_text())
        if (written["key"], written["shards"]) == (key, entries):
            log(f"latents: reusing {folder}")
            return 0
        index.unlink()  # no index stands for a folder that is being encoded again
    firsts = np.cumsum([0] + shards.counts[:-1]).tolist()
    encoded = 0
    for number, (entry, source, first) in enumerate(zip(entries, shards.files, firsts)):
        mark = dict(key=key, source=entry["source"], first=first)
        path = folder / entry["file"]
        if _marked(path) == mark:
            continue
        write_shard(path, encode(Samples.load(source), first), mark)
        encoded += 1
        log(f"latents: shard {number + 1}/{len(entries)} encoded ({entry['clips']} clips)")
    for stale in set(folder.glob("[0-9]*.safetensors")) - {folder / e["file"] for e in entries}:
        stale.unlink()  # shards of a dataset that had more
    with safe_open(str(folder / entries[0]["file"]), "pt") as f:
        latent_size = f.get_slice("video").get_shape()[-1]
    write_index(folder, key, entries, latent_rays(shards.shape[2], latent_size, "cpu"), description)
    return encoded


def write_shard(path: Path, latents: LatentSet, mark: dict) -> None:
    """One latent shard: ``latents``' clips in float16, ``mark`` (what they were encoded from) its metadata."""
    tensors = {name: getattr(latents, name).cpu().half().contiguous() for name in PARTS}
    write_atomically(path, lambda p: save_file(tensors, str(p), metadata={"mark": json.dumps(mark)}))


def write_index(folder: Path, key: dict, entries: list[dict], rays: torch.Tensor, description: dict) -> None:
    """The rays and ``index.json`` of a folder whose shards (``entries``: file, source, clips) are written."""
    write_atomically(folder / RAYS, lambda p: save_file({"rays": rays.cpu().contiguous()}, str(p)))
    record = dict(key=key, shards=entries, description=description)
    write_atomically(folder / INDEX, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))


def _marked(path: Path) -> dict | None:
    """What the shard file at ``path`` was encoded from (None: no such file)."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("mark", "null"))


class LatentShards(torch.utils.data.Dataset):
    """The clips of an encoded library (``encode_library``'s folder); item i is clip i as a dict of
    ``PARTS``. A shard file is opened where a clip of it is first read, memory-mapped so that a clip
    reads its own bytes alone, and each process (a DataLoader's worker) keeps at most ``open_files``
    open: no process ever holds the library."""

    def __init__(self, folder: Path, open_files: int = OPEN_FILES):
        folder = Path(folder)
        index = json.loads((folder / INDEX).read_text())
        self.key, self.description = index["key"], index["description"]
        self.files = [folder / entry["file"] for entry in index["shards"]]
        self.starts = np.cumsum([0] + [entry["clips"] for entry in index["shards"]])
        self.rays = load_file(folder / RAYS)["rays"]
        self.open_files = open_files
        self._opened: OrderedDict[int, object] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, clip: int) -> dict[str, torch.Tensor]:
        if not 0 <= clip < len(self):
            raise IndexError(f"clip {clip} of {len(self)}")
        shard = int(np.searchsorted(self.starts, clip, side="right")) - 1
        opened = self._open(shard)
        return {name: opened.get_slice(name)[int(clip - self.starts[shard])] for name in PARTS}

    def _open(self, shard: int):
        if shard in self._opened:
            self._opened.move_to_end(shard)
        else:
            self._opened[shard] = safe_open(str(self.files[shard]), "pt")
            if len(self._opened) > self.open_files:
                self._opened.popitem(last=False)  # unmapped when its last reference goes
        return self._opened[shard]

    def __getstate__(self) -> dict:
        # Sent to each DataLoader worker without open files (which cannot be pickled): each opens its own.
        return {**self.__dict__, "_opened": OrderedDict()}
