"""AnimaXPipeline: four-view videos and pose-map videos of a rig from its templates and a prompt.

Follows diffusers' ``WanPipeline``: text encoder -> VAE-encoded templates -> flow-matching
denoising of the joint sequence ``[c_rgb, x_rgb, c_pose, x_pose]`` of every view (``[c_rgb, c_pose,
x_pose]`` for a transformer without the RGB video) with classifier-free guidance on the image
condition (paper: scale 3.0, 50 steps) -> VAE decode of the pose videos (and the RGB videos on
request).

Two additions to the paper's sampler, both off by default: guidance on the prompt as well
(``text_guidance_scale``; the null prompt is all zeros, as training drops it) and guidance on the
first steps only (``guidance_end``), which saves model evaluations where guidance matters least.

Several videos of one prompt and rig (``num_videos_per_prompt`` or a list of generators, one per
video) are one batch: the prompt and the templates are encoded once.
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

from .transformer_animax import POSE, RGB, AnimaXTransformer3DModel


@dataclass
class AnimaXPipelineOutput(BaseOutput):
    """pose_videos / rgb_videos: (V, T, H, W, 3) uint8 for one video, (N, V, T, H, W, 3) for a batch
    (a list of generators or ``num_videos_per_prompt``); None when not decoded or interrupted. With
    ``output_type="latent"`` they are the normalised latents, (V, C, f + 1, h, w) or (N, V, C, f + 1, h, w).
    ``rgb_videos`` is None too for a transformer that generates no RGB video (``rgb_video=False``)."""

    pose_videos: np.ndarray | torch.Tensor | None
    rgb_videos: np.ndarray | torch.Tensor | None
    interrupted: bool = False


class AnimaXPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents"]
    _output_types = ("np", "latent")

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

    def plucker(self, intrinsics: np.ndarray, rotations: np.ndarray, translations: np.ndarray, size: int,
                height: int, width: int, device: torch.device) -> torch.Tensor:
        """(1, V, 6, h, w) Plücker rays at latent resolution of the cameras ``K``, ``R``, ``t`` that
        render ``size`` x ``size`` templates."""
        views = CameraRig(K=np.asarray(intrinsics, np.float64), R=np.asarray(rotations, np.float64),
                          t=np.asarray(translations, np.float64), width=size, height=size,
                          center=np.zeros(3), radius=1.0)  # normalised space: the rays need no world map
        rays = views.resized(width, height).plucker_rays()
        return torch.from_numpy(rays).permute(0, 3, 1, 2)[None].to(device, self.transformer.dtype)

    def prepare_latents(self, shape: tuple[int, ...], generator, device: torch.device,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """The starting noise (N, G, V, C, f + 1, h, w) of the G generated videos: ``latents`` where
        given, else drawn; a list of generators draws video n from generator n, as a one-video call
        with that generator does."""
        if latents is not None:
            return latents.to(device, torch.float32)
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    def check_inputs(self, prompt, rgb_templates, pose_templates, cameras, intrinsics, rotations, translations,
                     num_frames, num_inference_steps, guidance_scale, callback_on_step_end_tensor_inputs,
                     prompt_embeds=None, text_guidance_scale=1.0, guidance_end=1.0, generator=None,
                     num_videos=1, latents=None, output_type="np", decode_rgb=False) -> None:
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if prompt_embeds is not None:
            if not torch.is_tensor(prompt_embeds) or prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1 \
                    or prompt_embeds.shape[2] != self.transformer.config.text_dim:
                raise ValueError(f"`prompt_embeds` must be a (1, L, {self.transformer.config.text_dim}) tensor, got "
                                 f"{getattr(prompt_embeds, 'shape', type(prompt_embeds).__name__)}")
        elif not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("`prompt` must be a non-empty string describing the motion")
        arrays = (intrinsics, rotations, translations)
        if (cameras is None) == all(array is None for array in arrays):
            raise ValueError("pass the cameras either as `cameras` (a CameraRig) or as `intrinsics`, `rotations` "
                             "and `translations`, not both")
        if cameras is not None and not isinstance(cameras, CameraRig):
            raise ValueError(f"`cameras` must be a CameraRig, got {type(cameras).__name__}")
        if cameras is None:
            if any(array is None for array in arrays):
                raise ValueError("pass all three of `intrinsics`, `rotations` and `translations`")
            views = len(np.asarray(intrinsics))
            for name, array, shape in (("intrinsics", intrinsics, (views, 3, 3)), ("rotations", rotations, (views, 3, 3)),
                                       ("translations", translations, (views, 3))):
                array = np.asarray(array)
                if array.shape != shape or not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
                    raise ValueError(f"`{name}` must be finite numbers of shape {shape} (one per view), "
                                     f"got {array.dtype} {array.shape}")
        else:
            views = cameras.num_views
        images = {}
        for name, templates in (("rgb_templates", rgb_templates), ("pose_templates", pose_templates)):
            templates = images[name] = np.asarray(templates)
            if templates.dtype != np.uint8 or templates.ndim != 4 or templates.shape[-1] != 3:
                raise ValueError(f"`{name}` must be uint8 images (V, H, W, 3), got {templates.dtype} {templates.shape}")
            if len(templates) != views:
                raise ValueError(f"`{name}` has {len(templates)} views but the cameras have {views}")
            if cameras is not None and templates.shape[1:3] != (cameras.height, cameras.width):
                raise ValueError(f"`{name}` are {templates.shape[2]}x{templates.shape[1]} but the cameras render "
                                 f"{cameras.width}x{cameras.height}")
        height, width = images["rgb_templates"].shape[1:3]
        if images["pose_templates"].shape[1:3] != (height, width):
            raise ValueError(f"`pose_templates` are {images['pose_templates'].shape[2]}x"
                             f"{images['pose_templates'].shape[1]} but `rgb_templates` are {width}x{height}")
        multiple = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        if height != width or width % multiple:
            raise ValueError(f"the template size must be square and a multiple of {multiple}, got "
                             f"{width}x{height}")
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
        if not isinstance(num_videos, int) or num_videos < 1:
            raise ValueError(f"`num_videos_per_prompt` must be a positive integer, got {num_videos}")
        if isinstance(generator, list) and len(generator) != num_videos:
            raise ValueError(f"{len(generator)} generators were passed for {num_videos} videos; pass one per video")
        if latents is not None:
            latent_size = width // self.vae_scale_factor_spatial
            shape = (num_videos, len(self.transformer.generated), views, self.transformer.config.in_channels,
                     (num_frames - 1) // step + 1, latent_size, latent_size)
            if not torch.is_tensor(latents) or tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must be a tensor of shape (N, generated videos, V, C, f + 1, h, w) = "
                                 f"{shape}, got {getattr(latents, 'shape', type(latents).__name__)}")
        if decode_rgb and not self.transformer.config.rgb_video:
            raise ValueError("this transformer generates the pose video alone (its config's rgb_video is false): "
                             "there is no RGB video to decode")
        if output_type not in self._output_types:
            raise ValueError(f"`output_type` must be one of {self._output_types}, got {output_type!r}")
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
        cameras: CameraRig | None = None,
        num_frames: int = 81,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        decode_rgb: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        prompt_embeds: torch.Tensor | None = None,
        text_guidance_scale: float | None = None,
        guidance_end: float | None = None,
        intrinsics: np.ndarray | None = None,
        rotations: np.ndarray | None = None,
        translations: np.ndarray | None = None,
        num_videos_per_prompt: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
    ) -> AnimaXPipelineOutput:
        """Generate pose-map videos (and RGB videos when ``decode_rgb``) for every view.

        Args:
            prompt: the motion, e.g. "the fox pounces forward".
            rgb_templates, pose_templates: (V, H, W, 3) uint8 renders of the rig at rest, square.
            cameras: the views the templates were rendered from, as a ``CameraRig``; or pass
                ``intrinsics`` K (V, 3, 3) for the templates' pixels, ``rotations`` R (V, 3, 3) and
                ``translations`` t (V, 3): OpenCV world-to-camera ``[R|t]`` in normalised rig space.
            num_frames: frames per video, 1 + 4k for Wan's VAE (81 = 5 s at 16 fps).
            guidance_scale: classifier-free guidance on the image condition; 1 turns it off.
            generator: one generator, or a list of one per video (video n is then what a one-video
                call with generator n gives).
            num_videos_per_prompt: videos of this prompt and rig in one batch; None is one video
                without the batch axis (or as many as ``generator`` lists).
            latents: (N, G, V, C, f + 1, h, w) starting noise of the generated videos (RGB and pose, or the
                pose alone: ``transformer.generated``) instead of drawing it.
            output_type: ``"np"`` (uint8 videos) or ``"latent"`` (the normalised latents, not decoded).
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
        batched = num_videos_per_prompt is not None or isinstance(generator, list)
        num_videos = num_videos_per_prompt if num_videos_per_prompt is not None else (
            len(generator) if isinstance(generator, list) else 1)
        self.check_inputs(prompt, rgb_templates, pose_templates, cameras, intrinsics, rotations, translations,
                          num_frames, num_inference_steps, guidance_scale, callback_on_step_end_tensor_inputs,
                          prompt_embeds, text_guidance_scale, guidance_end, generator, num_videos, latents, output_type,
                          decode_rgb)
        if cameras is not None:
            intrinsics, rotations, translations = cameras.K, cameras.R, cameras.t
        self._guidance_scale = guidance_scale
        self._text_guidance_scale = text_guidance_scale
        self._interrupt = False
        device = self._execution_device
        dtype = self.transformer.dtype

        # The prompt and the templates are encoded once for every video.
        text = self.encode_prompt(prompt, device) if prompt_embeds is None else prompt_embeds.to(device, dtype)
        c_rgb = self.encode_templates(np.asarray(rgb_templates), device).to(dtype)
        c_pose = self.encode_templates(np.asarray(pose_templates), device).to(dtype)
        views, channels, _, height, width = c_rgb.shape
        rays = self.plucker(intrinsics, rotations, translations, np.asarray(rgb_templates).shape[2], height, width,
                            device)

        latent_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        generated = self.transformer.generated
        shape = (num_videos, len(generated), views, channels, latent_frames, height, width)  # (N, G, V, C, f+1, h, w)
        latents = self.prepare_latents(shape, generator, device, latents)
        condition = torch.stack([c_rgb, c_pose])[None].expand(num_videos, 2, views, channels, 1, height, width)
        text = text.expand(num_videos, -1, -1)
        # Branches of one batch: [conditional, templates dropped, prompt dropped], the last two when
        # guided; each (N, ...), so the transformer's batch is branch-major.
        scales, conditions, texts = [], [condition], [text]
        if self.do_classifier_free_guidance:
            scales.append(guidance_scale)
            conditions.append(torch.zeros_like(condition))
            texts.append(text)
        if text_guidance_scale > 1.0:
            scales.append(text_guidance_scale)
            conditions.append(condition)
            texts.append(torch.zeros_like(text))
        condition, text = torch.stack(conditions), torch.stack(texts)
        rays = rays.expand(len(conditions) * num_videos, *rays.shape[1:])

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        guided_steps = round(guidance_end * len(timesteps)) if scales else 0
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    break
                branches = len(condition) if i < guided_steps else 1
                batch = branches * num_videos
                noisy = latents.to(dtype).expand(branches, *shape)
                sequence = self.transformer.sequence(condition[:branches].flatten(0, 1), noisy.flatten(0, 1))
                # A cache across steps (transformer.enable_cache) keeps one state per batch layout.
                with self.transformer.cache_context("guided" if branches > 1 else "conditional"):
                    flow = self.transformer(sequence, t.expand(batch), text[:branches].flatten(0, 1), rays[:batch],
                                            return_dict=False)[0]
                flow = self.transformer.generated_flow(flow).float()
                conditional, *dropped = flow.unflatten(0, (branches, num_videos))
                # cond + sum of (s - 1)(cond - dropped): with image guidance alone this is Wan's
                # uncond + s (cond - uncond).
                flow = conditional + sum((s - 1.0) * (conditional - d) for s, d in zip(scales[:branches - 1], dropped))
                latents = self.scheduler.step(flow, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    available = {"latents": latents}
                    outputs = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                progress_bar.update()

        if self._interrupt:
            self.maybe_free_model_hooks()
            return AnimaXPipelineOutput(pose_videos=None, rgb_videos=None, interrupted=True)
        pose_index = generated.index(POSE)
        rgb_index = generated.index(RGB) if RGB in generated else None
        if output_type == "latent":
            pose, rgb = latents[:, pose_index], None if rgb_index is None else latents[:, rgb_index]
        else:  # one video at a time: decoding holds all frames of its views at full size
            pose = np.stack([self.decode(video[pose_index]) for video in latents])
            rgb = np.stack([self.decode(video[rgb_index]) for video in latents]) if decode_rgb else None
        self.maybe_free_model_hooks()
        if not batched:
            pose, rgb = pose[0], None if rgb is None else rgb[0]
        return AnimaXPipelineOutput(pose_videos=pose, rgb_videos=rgb)
