"""AnimaXPipeline: four-view videos and pose-map videos of a rig from its templates and a prompt.

Follows diffusers' ``WanPipeline``: text encoder -> VAE-encoded templates -> flow-matching
denoising of the joint sequence ``[c_rgb, x_rgb, c_pose, x_pose]`` of every view with
classifier-free guidance on the image condition (paper: scale 3.0, 50 steps) -> VAE decode of
the pose videos (and the RGB videos on request).

Two additions to the paper's sampler, both off by default: guidance on the prompt as well
(``text_guidance_scale``; the null prompt is all zeros, as training drops it) and guidance on the
first steps only (``guidance_end``), which saves model evaluations where guidance matters least.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from animax_addon.core.cameras import CameraRig

from .transformer_animax import AnimaXTransformer3DModel


@dataclass
class AnimaXPipelineOutput(BaseOutput):
    """pose_videos / rgb_videos: (V, T, H, W, 3) uint8, None when not decoded or interrupted."""

    pose_videos: np.ndarray | None
    rgb_videos: np.ndarray | None
    interrupted: bool = False


class AnimaXPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, tokenizer, text_encoder, vae: AutoencoderKLWan, transformer: AnimaXTransformer3DModel,
                 scheduler, max_sequence_length: int = 512, text_guidance_scale: float = 1.0,
                 guidance_end: float = 1.0):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
        # Sampler defaults that belong to the model or the deployment (as WanPipeline keeps its
        # boundary_ratio in its config): guidance on the prompt, the share of guided steps.
        self.register_to_config(max_sequence_length=max_sequence_length, text_guidance_scale=text_guidance_scale,
                                guidance_end=guidance_end)
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial
        self._interrupt = False

    # --- properties the callbacks use, as in diffusers' pipelines ---------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def text_guidance_scale(self) -> float:
        return self._text_guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # --- stages -----------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, device: torch.device) -> torch.Tensor:
        """(1, L, text_dim) token embeddings; padding positions are zero, as Wan trains them."""
        tokens = self.tokenizer(
            [prompt], padding="max_length", max_length=self.config.max_sequence_length, truncation=True,
            return_attention_mask=True, return_tensors="pt",
        )
        mask = tokens.attention_mask.to(device)
        hidden = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
        return (hidden * mask[..., None]).to(self.transformer.dtype)

    def _normalise(self, latents: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean).view(shape).to(latents)
        std = torch.tensor(self.vae.config.latents_std).view(shape).to(latents)
        return latents * std + mean if inverse else (latents - mean) / std

    def encode_videos(self, videos: np.ndarray, device: torch.device) -> torch.Tensor:
        """(V, T, H, W, 3) uint8 -> (V, C, t, h, w) normalised latents (the mode of the posterior)."""
        video = torch.from_numpy(np.ascontiguousarray(videos)).to(device, self.vae.dtype)
        video = video.permute(0, 4, 1, 2, 3) / 127.5 - 1.0
        return self._normalise(self.vae.encode(video).latent_dist.mode())

    def encode_templates(self, images: np.ndarray, device: torch.device) -> torch.Tensor:
        """(V, H, W, 3) uint8 -> (V, C, 1, h, w) normalised latents."""
        return self.encode_videos(np.asarray(images)[:, None], device)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(V, C, f + 1, h, w) normalised latents -> (V, T, H, W, 3) uint8 videos."""
        video = self.vae.decode(self._normalise(latents.to(self.vae.dtype), inverse=True)).sample
        video = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu().numpy()

    def plucker(self, cameras: CameraRig, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(1, V, 6, h, w) Plücker rays at latent resolution."""
        rays = cameras.resized(width, height).plucker_rays()
        return torch.from_numpy(rays).permute(0, 3, 1, 2)[None].to(device, self.transformer.dtype)

    def check_inputs(self, prompt, rgb_templates, pose_templates, cameras, num_frames, num_inference_steps,
                     guidance_scale, callback_on_step_end_tensor_inputs, prompt_embeds=None,
                     text_guidance_scale=1.0, guidance_end=1.0) -> None:
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if prompt_embeds is not None:
            if not torch.is_tensor(prompt_embeds) or prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1 \
                    or prompt_embeds.shape[2] != self.transformer.config.text_dim:
                raise ValueError(f"`prompt_embeds` must be a (1, L, {self.transformer.config.text_dim}) tensor, got "
                                 f"{getattr(prompt_embeds, 'shape', type(prompt_embeds).__name__)}")
        elif not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("`prompt` must be a non-empty string describing the motion")
        if not isinstance(cameras, CameraRig):
            raise ValueError(f"`cameras` must be a CameraRig, got {type(cameras).__name__}")
        views, size = cameras.num_views, cameras.width
        for name, images in (("rgb_templates", rgb_templates), ("pose_templates", pose_templates)):
            images = np.asarray(images)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"`{name}` must be uint8 images (V, H, W, 3), got {images.dtype} {images.shape}")
            if len(images) != views:
                raise ValueError(f"`{name}` has {len(images)} views but the cameras have {views}")
            if images.shape[1:3] != (cameras.height, size):
                raise ValueError(f"`{name}` are {images.shape[2]}x{images.shape[1]} but the cameras render "
                                 f"{size}x{cameras.height}")
        multiple = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        if cameras.height != size or size % multiple:
            raise ValueError(f"the template size must be square and a multiple of {multiple}, got "
                             f"{size}x{cameras.height}")
        step = self.vae_scale_factor_temporal
        if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % step:
            raise ValueError(f"`num_frames` must be 1 + {step}k (e.g. {1 + 4 * step}), got {num_frames}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}")
        for name, scale in (("guidance_scale", guidance_scale), ("text_guidance_scale", text_guidance_scale)):
            if not np.isfinite(scale) or scale < 1.0:
                raise ValueError(f"`{name}` must be >= 1 (1 turns that guidance off), got {scale}")
        if not 0.0 < guidance_end <= 1.0:
            raise ValueError(f"`guidance_end` is the share of steps that are guided, in (0, 1], got {guidance_end}")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may name {self._callback_tensor_inputs}, "
                             f"not {sorted(unknown)}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None,
        rgb_templates: np.ndarray,
        pose_templates: np.ndarray,
        cameras: CameraRig,
        num_frames: int = 81,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        decode_rgb: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        prompt_embeds: torch.Tensor | None = None,
        text_guidance_scale: float | None = None,
        guidance_end: float | None = None,
    ) -> AnimaXPipelineOutput:
        """Generate pose-map videos (and RGB videos when ``decode_rgb``) for every view.

        Args:
            prompt: the motion, e.g. "the fox pounces forward".
            rgb_templates, pose_templates: (V, H, W, 3) uint8 renders of the rig at rest.
            cameras: the views the templates were rendered from (``CameraRig``).
            num_frames: frames per video, 1 + 4k for Wan's VAE (81 = 5 s at 16 fps).
            guidance_scale: classifier-free guidance on the image condition; 1 turns it off.
            text_guidance_scale: guidance on the prompt (towards it, away from the null prompt)
                added to the image guidance; 1 (the paper's sampler) turns it off; None takes the
                pipeline's ``config.text_guidance_scale``. Each guidance adds one model evaluation
                per guided step.
            guidance_end: the share of steps, from the first, that are guided; the later, low-noise
                steps then run the conditional branch alone. None takes ``config.guidance_end``.
            callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> tensors`` after each step;
                setting ``pipe._interrupt = True`` there stops before the next step (cancel).
            prompt_embeds: (1, L, text_dim) text-encoder output to use instead of ``prompt`` (e.g.
                precomputed embeddings where the text encoder is not installed).
        """
        text_guidance_scale = self.config.text_guidance_scale if text_guidance_scale is None else text_guidance_scale
        guidance_end = self.config.guidance_end if guidance_end is None else guidance_end
        self.check_inputs(prompt, rgb_templates, pose_templates, cameras, num_frames, num_inference_steps,
                          guidance_scale, callback_on_step_end_tensor_inputs, prompt_embeds, text_guidance_scale,
                          guidance_end)
        self._guidance_scale = guidance_scale
        self._text_guidance_scale = text_guidance_scale
        self._interrupt = False
        device = self._execution_device
        dtype = self.transformer.dtype

        text = self.encode_prompt(prompt, device) if prompt_embeds is None else prompt_embeds.to(device, dtype)
        c_rgb = self.encode_templates(np.asarray(rgb_templates), device).to(dtype)
        c_pose = self.encode_templates(np.asarray(pose_templates), device).to(dtype)
        views, channels, _, height, width = c_rgb.shape
        rays = self.plucker(cameras, height, width, device)

        latent_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        shape = (1, 2, views, channels, latent_frames, height, width)  # (B, rgb/pose, V, C, f+1, h, w)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        condition = torch.stack([c_rgb, c_pose])[None]  # (1, 2, V, C, 1, h, w)
        # One batch of branches: [conditional, templates dropped, prompt dropped], the last two when guided.
        scales, conditions, texts = [], [condition], [text]
        if self.do_classifier_free_guidance:
            scales.append(guidance_scale)
            conditions.append(torch.zeros_like(condition))
            texts.append(text)
        if text_guidance_scale > 1.0:
            scales.append(text_guidance_scale)
            conditions.append(condition)
            texts.append(torch.zeros_like(text))
        condition, text = torch.cat(conditions), torch.cat(texts)
        rays = rays.expand(len(condition), *rays.shape[1:])

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        guided_steps = round(guidance_end * len(timesteps)) if scales else 0
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    break
                branches = len(condition) if i < guided_steps else 1
                noisy = latents.to(dtype).expand(branches, *shape[1:])
                sequence = torch.cat([condition[:branches], noisy], dim=4)  # per half: [c, x] along time
                sequence = torch.cat([sequence[:, 0], sequence[:, 1]], dim=3)  # [c_rgb, x_rgb, c_pose, x_pose]
                flow = self.transformer(sequence, t.expand(branches), text[:branches], rays[:branches],
                                        return_dict=False)[0]
                flow = flow.unflatten(3, (2, -1))[:, :, :, :, 1:].permute(0, 3, 1, 2, 4, 5, 6).float()
                # cond + sum of (s - 1)(cond - dropped): with image guidance alone this is Wan's
                # uncond + s (cond - uncond).
                flow = flow[:1] + sum((s - 1.0) * (flow[:1] - dropped[None])
                                      for s, dropped in zip(scales[:branches - 1], flow[1:]))
                latents = self.scheduler.step(flow, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    available = {"latents": latents}
                    outputs = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                progress_bar.update()

        if self._interrupt:
            return AnimaXPipelineOutput(pose_videos=None, rgb_videos=None, interrupted=True)
        pose = self.decode(latents[0, 1])
        rgb = self.decode(latents[0, 0]) if decode_rgb else None
        self.maybe_free_model_hooks()
        return AnimaXPipelineOutput(pose_videos=pose, rgb_videos=rgb)
