"""Each diffusion step's batch of clips, from one of two sources.

- ``MemoryBatches``: latents held on the device (the procedural tiny preset: a few thousand clips of
  64 px, built in the run itself), gathered there; no host-to-device traffic at all.
- ``StreamedBatches``: a library's latent shards on disk (``--dataset``, either preset), read by a
  torch DataLoader whose workers load the next batches while the GPU trains; RAM holds a few
  batches, whatever the library's size.

Both draw step s's clips from the whole dataset with a CPU generator seeded by (seed, s), so they
give the same batches, and a resumed stage continues with the batches it would have had. Every
data-parallel process draws (and reads) the whole step's batch; ``flow_loss`` trains on its part.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Sampler

from .latent_shards import LatentShards
from .latents import LatentSet

LOADER_WORKERS = min(8, os.cpu_count() or 1)


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s random draws (its clips here, its noise in ``flow_loss``): a resumed
    stage draws what an unbroken one would."""
    return seed * 1_000_003 + step


def step_clips(clips: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """The dataset indices of step ``step``'s ``batch`` clips, drawn from all ``clips``."""
    return torch.randint(clips, (batch,), generator=torch.Generator().manual_seed(step_seed(seed, step)))


class MemoryBatches:
    """Step batches gathered from latents on the device."""

    def __init__(self, data: LatentSet, batch: int, seed: int):
        self.data, self.batch, self.seed = data, batch, seed

    def __call__(self, step: int) -> LatentSet:
        index = step_clips(len(self.data), self.batch, self.seed, step)
        return self.data.take(index.to(self.data.video.device))

    def close(self) -> None:
        pass


class _Steps(Sampler[list[int]]):
    """A DataLoader's batch sampler: the clips of steps ``first`` .. ``last``, one step a batch."""

    def __init__(self, clips: int, batch: int, seed: int, last: int):
        self.clips, self.batch, self.seed, self.last = clips, batch, seed, last
        self.first = 1

    def __iter__(self):
        return (step_clips(self.clips, self.batch, self.seed, step).tolist()
                for step in range(self.first, self.last + 1))

    def __len__(self) -> int:
        return max(self.last - self.first + 1, 0)


class StreamedBatches:
    """Step batches of ``steps`` steps read from latent shards by a DataLoader with ``workers`` worker
    processes (0: read in this process), pinned and moved to ``device`` without waiting for the copy."""

    def __init__(self, shards: LatentShards, batch: int, seed: int, steps: int, device: torch.device,
                 workers: int = LOADER_WORKERS):
        self.device = torch.device(device)
        self._steps = _Steps(len(shards), batch, seed, steps)
        self._loader = DataLoader(shards, batch_sampler=self._steps, num_workers=workers,
                                  pin_memory=self.device.type == "cuda", persistent_workers=workers > 0)
        self._rays = shards.rays.to(self.device)
        self._batches, self._next = None, None

    def __call__(self, step: int) -> LatentSet:
        if step != self._next:  # the stage's first step here (1, or where a resumed stage goes on)
            self._steps.first = step
            self._batches = iter(self._loader)
        self._next = step + 1
        clips = next(self._batches)
        return LatentSet(**{name: clips[name].to(self.device, non_blocking=True) for name in clips},
                         rays=self._rays)

    def close(self) -> None:
        """Ends the workers (they would otherwise live as long as this object)."""
        self._batches = self._loader = None


def step_batches(data: LatentSet | LatentShards, batch: int, seed: int, steps: int, device,
                 workers: int = LOADER_WORKERS) -> MemoryBatches | StreamedBatches:
    """The batches of a stage of ``steps`` steps: gathered from ``data`` on the device, or streamed from
    its shards."""
    if isinstance(data, LatentSet):
        return MemoryBatches(data, batch, seed)
    return StreamedBatches(data, batch, seed, steps, device, workers)
