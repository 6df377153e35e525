"""The dataset in the tiny VAE's latent space, encoded once so that diffusion training never decodes.

Per sample: the latents of both videos of every view, and the image-condition choices the paper
trains with (A.2): choice 0 is the rest-pose template, the others are frames of the clip itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from animax_addon.core.cameras import make_camera_rig
from backend.data.dataset import Samples

RGB, POSE = 0, 1


def to_video(images, device) -> torch.Tensor:
    """(..., T, S, S, 3) uint8 array or tensor -> (..., 3, T, S, S) float in [-1, 1]."""
    video = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images,
                            device=device).float() / 127.5 - 1.0
    return video.movedim(-1, -4)


@dataclass
class LatentSet:
    video: torch.Tensor  # (N, 2, V, C, f+1, h, w) normalised latents; index 1 is RGB / pose
    condition: torch.Tensor  # (N, K, 2, V, C, 1, h, w); choice 0 is the rest template
    text: torch.Tensor  # (N, L, D)
    rays: torch.Tensor  # (V, 6, h, w) Plücker rays at latent resolution, the same for every sample

    def __len__(self) -> int:
        return self.video.shape[0]

    def take(self, index: torch.Tensor) -> "LatentSet":
        """The clips ``index`` (a step's batch), with the shared rays."""
        return LatentSet(self.video[index], self.condition[index], self.text[index], self.rays)


@torch.no_grad()
def latent_stats(vae, samples: Samples, device, count: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the latents of the first ``count`` samples' videos."""
    mus = []
    for images in (samples.rgb[:count], samples.pose[:count]):
        video = to_video(images.reshape(-1, *images.shape[2:]), device)
        mus.append(vae.encode(video).latent_dist.mode().transpose(0, 1).flatten(1))
    mu = torch.cat(mus, dim=1)
    return mu.mean(1).tolist(), mu.std(1).clamp(min=1e-3).tolist()


@torch.no_grad()
def encode_samples(vae, samples: Samples, text: torch.Tensor, device, frame_choices: int = 3, seed: int = 0,
                   chunk: int = 64, first: int = 0) -> LatentSet:
    """Encode every video and template with ``vae`` (whose config holds the latent mean/std). ``first``
    is the dataset index of the first clip: a clip's condition frames depend only on (``seed``, its
    index), so a dataset encoded a shard at a time equals one encoded whole."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=device).view(shape)
    std = torch.tensor(vae.config.latents_std, device=device).view(shape)

    def encode(images: np.ndarray) -> torch.Tensor:  # (B, T, S, S, 3) -> (B, C, t, h, w), half on device
        out = [((vae.encode(to_video(images[i:i + chunk], device)).latent_dist.mode() - mean) / std).half()
               for i in range(0, len(images), chunk)]
        return torch.cat(out)

    n, views, frames = samples.rgb.shape[:3]
    flat = lambda a: a.reshape(n * views, *a.shape[2:])  # noqa: E731 - (N, V, ...) -> (N*V, ...)
    video = torch.stack([encode(flat(samples.rgb)), encode(flat(samples.pose))], dim=1)
    video = video.unflatten(0, (n, views)).transpose(1, 2)  # (N, 2, V, C, t, h, w)

    picks = np.stack([np.random.default_rng((seed, first + i)).integers(1, frames, size=frame_choices)
                      for i in range(n)])
    rows = np.arange(n)
    choices = [(samples.rgb_rest, samples.pose_rest)] + [
        (samples.rgb[rows, :, picks[:, k]], samples.pose[rows, :, picks[:, k]]) for k in range(frame_choices)
    ]
    condition = torch.stack([
        torch.stack([encode(flat(rgb)[:, None]), encode(flat(pose)[:, None])], dim=1).unflatten(0, (n, views))
        .transpose(1, 2) for rgb, pose in choices
    ], dim=1)  # (N, K, 2, V, C, 1, h, w)
    rays = latent_rays(samples.rgb.shape[3], video.shape[-1], device)
    return LatentSet(video, condition, text.to(device).half(), rays)


def latent_rays(size: int, latent: int, device) -> torch.Tensor:
    """(V, 6, latent, latent) Plücker rays of the camera rig's views of ``size`` px, at latent resolution.
    The rig lives in normalised rig space, so the rays are the same for every clip."""
    cameras = make_camera_rig(np.zeros(3), 1.0, size).resized(latent, latent)
    return torch.from_numpy(cameras.plucker_rays()).permute(0, 3, 1, 2).float().to(device)
