"""AnimaXTransformer3DModel: Wan2.1's video DiT extended to joint multi-view video-pose diffusion.

Per view the token sequence is ``[c_rgb, x_rgb, c_pose, x_pose]`` along latent time: the clean
template latent, the noisy RGB video, the clean pose-map template, the noisy pose video, so
``2 * (f + 2)`` latent frames for ``f + 1`` generated ones (paper Eq. 3). A model without the RGB
video (``rgb_video=False``, the tiny preset) reads ``[c_rgb, c_pose, x_pose]``, ``f + 3`` frames:
the RGB template still conditions, the pose video is generated alone. On top of Wan:

- shared RoPE (Eq. 4): the pose half's positions equal the RGB half's;
- a modality embedding (0 = RGB, 1 = pose; frequency encoding -> MLP) added to every token's
  timestep embedding, and timestep 0 for the clean condition frames;
- Plücker ray maps of each view concatenated to the latent channels (new input channels
  zero-initialised);
- a multi-view attention layer in every block over all views' tokens of one latent frame, its
  output zero-initialised.

With the new parts at their initial values the model is the base Wan model applied to each view,
so a pretrained Wan2.1 starts training from what it already knows (see :meth:`from_wan`).
Timestep and modality are constant within a latent frame, so modulation is computed per frame
and broadcast over its tokens: per-token tables would cost gigabytes at 480x480. The per-frame
conditioning is :class:`AnimaXTimeTextEmbedding` (Wan's time and text embedding, one timestep per
frame) with what :class:`AnimaXModalityEmbedding` and :class:`AnimaXPooledTextEmbedding` add to it.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanRotaryPosEmbed,
    WanTransformer3DModel,
    WanTransformerBlock,
)

RGB, POSE = 0, 1


class AnimaXRotaryPosEmbed(WanRotaryPosEmbed):
    """Wan's 3D RoPE over ``[c, x]`` of the pose half, shared by the RGB half: its frames, or with
    ``rgb_video`` False its one template frame alone, take the positions of the pose half's."""

    def __init__(self, *args, rgb_video: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.rgb_video = rgb_video

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = hidden_states.shape[2]
        if self.rgb_video and frames % 2:
            raise ValueError(f"the joint sequence needs an even number of latent frames, got {frames}")
        if not self.rgb_video and frames < 3:
            raise ValueError(f"the sequence [c_rgb, c_pose, x_pose] needs at least 3 latent frames, got {frames}")
        rgb_frames = frames // 2 if self.rgb_video else 1
        cos, sin = super().forward(hidden_states[:, :, rgb_frames:])  # reads only the shape
        tokens = rgb_frames * cos.shape[1] // (frames - rgb_frames)
        return torch.cat([cos[:, :tokens], cos], dim=1), torch.cat([sin[:, :tokens], sin], dim=1)


class AnimaXTimeTextEmbedding(nn.Module):
    r"""Wan's time and text embedding with one timestep per latent frame, plus per-frame embeddings
    (modality, pooled prompt) added to the time embedding before it becomes the blocks' modulation.

    Its modules and their state-dict keys are those of Wan's text-to-video ``WanTimeTextImageEmbedding``,
    so Wan2.1 weights load as they are.
    """

    def __init__(self, dim: int, time_freq_dim: int, time_proj_dim: int, text_embed_dim: int):
        super().__init__()
        self.timesteps_proj = Timesteps(num_channels=time_freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(in_channels=time_freq_dim, time_embed_dim=dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, time_proj_dim)
        self.text_embedder = PixArtAlphaTextProjection(text_embed_dim, dim, act_fn="gelu_tanh")

    def forward(
        self,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        frame_embeds: tuple[torch.Tensor, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """timestep (B, F), one per latent frame; frame_embeds, each broadcast to (B, F, D).

        Returns the time embedding (B, F, D), the modulation (B, F, 6, D) and the prompt (B, L, D).
        """
        t_freq = self.timesteps_proj(timestep.flatten()).unflatten(0, timestep.shape)
        temb = self.time_embedder(t_freq.to(self.time_embedder.linear_1.weight.dtype))
        for embeds in frame_embeds:
            temb = temb + embeds
        temb = temb.type_as(encoder_hidden_states)
        timestep_proj = self.time_proj(self.act_fn(temb)).unflatten(2, (6, -1))
        return temb, timestep_proj, self.text_embedder(encoder_hidden_states)


class AnimaXModalityEmbedding(TimestepEmbedding):
    """Modality (0 = RGB, 1 = pose) -> frequency encoding -> MLP. The last layer starts at zero, so
    the model starts as Wan; the encoding has no weights, so the keys are ``TimestepEmbedding``'s."""

    def __init__(self, freq_dim: int, dim: int):
        super().__init__(in_channels=freq_dim, time_embed_dim=dim)
        self.modality_proj = Timesteps(num_channels=freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, modality: torch.Tensor) -> torch.Tensor:
        """(F,) modality ids -> (F, D)."""
        return super().forward(self.modality_proj(modality).to(self.linear_1.weight.dtype))


class AnimaXPooledTextEmbedding(TimestepEmbedding):
    """The prompt's mean token embedding -> MLP, so the prompt modulates every block as a class label
    does in DiT. The last layer starts at zero, so the model starts as the one without it."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__(in_channels=text_dim, time_embed_dim=dim)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, text_dim) prompt -> (B, D)."""
        return super().forward(self.pool(encoder_hidden_states).to(self.linear_1.weight.dtype))

    @staticmethod
    def pool(encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, text_dim) mean of the prompt's tokens. Padding tokens are zero (as Wan encodes them)
        and are left out; a dropped prompt (all zero) pools to zero."""
        used = (encoder_hidden_states.abs().sum(-1, keepdim=True) > 0).to(encoder_hidden_states.dtype)
        return (encoder_hidden_states * used).sum(1) / used.sum(1).clamp(min=1)


def _per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, F * HW, D) tokens as (B, F, HW, D), to broadcast per-frame modulation."""
    return x.unflatten(1, (frames, -1))


class AnimaXTransformerBlock(WanTransformerBlock):
    """Wan's block with per-frame modulation and a multi-view attention layer after self-attention.

    The Wan sub-modules keep their names, so Wan2.1 weights load as they are; ``attn_mv`` and
    ``norm_mv`` are new.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: str, cross_attn_norm: bool, eps: float):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        self.norm_mv = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.attn_mv = WanAttention(dim=dim, heads=num_heads, dim_head=dim // num_heads, eps=eps, processor=WanAttnProcessor())
        nn.init.zeros_(self.attn_mv.to_out[0].weight)
        nn.init.zeros_(self.attn_mv.to_out[0].bias)
        # Set by backend.model.view_parallel while the views are split across ranks: maps this
        # rank's multi-view tokens (B*F, local V*HW, D) to those of all views, in view order.
        self.gather_views = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        num_views: int,
    ) -> torch.Tensor:
        """hidden_states (B*V, F*HW, D); temb (B*V, F, 6, D): one modulation per latent frame."""
        frames = temb.shape[1]
        mod = (self.scale_shift_table.unsqueeze(0) + temb.float()).unsqueeze(3)  # (BV, F, 6, 1, D)
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = mod.unbind(2)

        # 1. Self-attention over the view's whole joint sequence
        norm = _per_frame(self.norm1(hidden_states.float()), frames) * (1 + scale_msa) + shift_msa
        attn = self.attn1(norm.flatten(1, 2).type_as(hidden_states), None, None, rotary_emb)
        hidden_states = (hidden_states.float() + (_per_frame(attn, frames) * gate_msa).flatten(1, 2)).type_as(hidden_states)

        # 2. Multi-view attention: each latent frame's tokens of all views attend to each other
        hidden_states = hidden_states + self._multiview(hidden_states, num_views, frames)

        # 3. Cross-attention to the prompt
        norm = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm, encoder_hidden_states, None, None)

        # 4. Feed-forward
        norm = _per_frame(self.norm3(hidden_states.float()), frames) * (1 + c_scale) + c_shift
        ff = self.ffn(norm.flatten(1, 2).type_as(hidden_states))
        return (hidden_states.float() + (_per_frame(ff.float(), frames) * c_gate).flatten(1, 2)).type_as(hidden_states)

    def _multiview(self, hidden_states: torch.Tensor, num_views: int, frames: int) -> torch.Tensor:
        bv, tokens, dim = hidden_states.shape
        per_view = tokens // frames
        x = hidden_states.reshape(bv // num_views, num_views, frames, per_view, dim)
        x = x.permute(0, 2, 1, 3, 4).reshape(-1, num_views * per_view, dim)  # (B*F, V*HW, D)
        x = self.norm_mv(x.float()).type_as(hidden_states)
        # queries of the local views; keys and values of all views when they are split across ranks
        x = self.attn_mv(x, None if self.gather_views is None else self.gather_views(x), None, None)
        x = x.reshape(bv // num_views, frames, num_views, per_view, dim).permute(0, 2, 1, 3, 4)
        return x.reshape(bv, tokens, dim)


class AnimaXTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin):
    r"""The AnimaX joint multi-view video-pose transformer.

    Its modules carry [`WanTransformer3DModel`]'s names, with AnimaX's versions of its rotary
    embedding, condition embedder and blocks built in their place, so Wan2.1 weights load as they are.

    Args (beyond [`WanTransformer3DModel`]'s):
        ray_channels (`int`, defaults to 6): channels of the Plücker ray maps concatenated to the
            ``in_channels`` latent channels.
        pooled_text (`bool`, defaults to False): also add the prompt's mean token embedding, through a
            zero-initialised MLP, to every frame's timestep embedding, so the prompt modulates each
            block as a class does in DiT, besides reaching it through cross-attention. Not in Wan or
            the paper: through cross-attention alone the tiny preset gives the prompted motion on
            only 60% of its own training clips (docs/quality.md). Zero-initialised, it starts as the
            model without it.
        rgb_video (`bool`, defaults to True): generate the RGB video beside the pose video, as the
            paper does (``[c_rgb, x_rgb, c_pose, x_pose]``); False generates the pose video alone
            from both templates (``[c_rgb, c_pose, x_pose]``), at about 0.4x the tiny preset's work
            per step. Not in the paper: the tiny preset, trained from scratch, has no video prior
            for an RGB video to bring, and its users see only the pose video's motion.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]
    _no_split_modules = ["AnimaXTransformerBlock"]
    _repeated_blocks = ["AnimaXTransformerBlock"]
    _keep_in_fp32_modules = ["rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3",
                             "modality_embedder", "pooled_text_embedder", "norm_mv"]
    _cp_plan = None  # the sequence is split by views and halves; context parallelism is not planned yet

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        ray_channels: int = 6,
        pooled_text: bool = False,
        rgb_video: bool = True,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        pos_embed_seq_len: int | None = None,
    ) -> None:
        # Wan's image-to-video inputs, kept in the signature because Wan's own config records them
        if image_dim is not None or added_kv_proj_dim is not None or pos_embed_seq_len is not None:
            raise ValueError("AnimaX builds on the text-to-video Wan2.1 (T2V); this is an image-to-video model")
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels

        # Wan's modules in Wan's order (the parameters' order, which optimiser states follow), then
        # what AnimaX adds.
        self.rope = AnimaXRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len, rgb_video=rgb_video)
        self.patch_embedding = nn.Conv3d(in_channels + ray_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        with torch.no_grad():  # the ray channels start at zero, so the model starts camera-blind as Wan
            self.patch_embedding.weight[:, in_channels:].zero_()
        # The per-frame conditioning; the keys stay Wan's (condition_embedder) and the top-level
        # modality_embedder / pooled_text_embedder, which the adapter format and training name.
        self.condition_embedder = AnimaXTimeTextEmbedding(inner_dim, freq_dim, inner_dim * 6, text_dim)
        self.blocks = nn.ModuleList(
            AnimaXTransformerBlock(inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps)
            for _ in range(num_layers)
        )
        self.norm_out = FP32LayerNorm(inner_dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(inner_dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, inner_dim) / inner_dim**0.5)
        self.modality_embedder = AnimaXModalityEmbedding(freq_dim, inner_dim)
        self.pooled_text_embedder = AnimaXPooledTextEmbedding(text_dim, inner_dim) if pooled_text else None

        self.gradient_checkpointing = False

    @classmethod
    def from_wan(cls, wan: WanTransformer3DModel, ray_channels: int = 6,
                 rgb_video: bool = True) -> "AnimaXTransformer3DModel":
        """An AnimaX model that starts as ``wan``: Wan's weights, the new parts at their neutral start;
        ``rgb_video`` False generates the pose video alone (no weight depends on it)."""
        state = wan.state_dict()
        patch = state["patch_embedding.weight"]  # the ray channels join Wan's latent channels at zero
        state["patch_embedding.weight"] = torch.cat([patch, patch.new_zeros(patch.shape[0], ray_channels,
                                                                             *patch.shape[2:])], dim=1)
        return cls._starting_from(wan, state, ray_channels=ray_channels, rgb_video=rgb_video)

    def with_pooled_text(self) -> "AnimaXTransformer3DModel":
        """This model with the pooled-prompt embedding added at its zero start (so it computes what
        this one does); itself if it has one."""
        return self if self.config.pooled_text else self._starting_from(self, self.state_dict(), pooled_text=True)

    def deepened(self, num_layers: int) -> "AnimaXTransformer3DModel":
        """This model with ``num_layers`` blocks: the new blocks are spread evenly among the kept ones
        and start as identities (the outputs of their residual branches are zero, as the multi-view
        layers' are), so it computes what this one does; itself if it has that many."""
        kept = self.config.num_layers
        if num_layers < kept:
            raise ValueError(f"a model of {kept} blocks deepens to more blocks, not to {num_layers}")
        if num_layers == kept:
            return self
        place = [j * num_layers // kept for j in range(kept)]  # where kept block j goes
        state = {}
        for key, value in self.state_dict().items():
            block = re.match(r"blocks\.(\d+)\.", key)
            state[f"blocks.{place[int(block[1])]}.{key[block.end():]}" if block else key] = value
        new = [i for i in range(num_layers) if i not in place]
        model = self._starting_from(self, state, lambda key: key.startswith(tuple(f"blocks.{i}." for i in new)),
                                    num_layers=num_layers)
        for i in new:
            block = model.blocks[i]
            for out in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[-1]):
                nn.init.zeros_(out.weight)
                nn.init.zeros_(out.bias)
        return model

    @classmethod
    def _starting_from(cls, source: WanTransformer3DModel | AnimaXTransformer3DModel, state: dict,
                       new=lambda key: False, **changes) -> "AnimaXTransformer3DModel":
        """A model of ``source``'s config with ``changes``, holding ``state``; only parts that AnimaX
        adds (or that ``new(key)`` names) may be missing from it, and they keep their initialisation."""
        config = {k: v for k, v in source.config.items() if not k.startswith("_")}
        model = cls(**{**config, **changes})
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or not all(cls.is_animax_parameter(key) or new(key) for key in missing):
            raise ValueError(f"{type(source).__name__} weights do not fit: missing {missing}, unexpected {unexpected}")
        return model

    @staticmethod
    def is_animax_parameter(key: str) -> bool:
        """Whether a state-dict key belongs to what AnimaX adds to Wan (the widened patch
        embedding, the modality and pooled-prompt embeddings, the multi-view layers)."""
        return (key.startswith(("patch_embedding.", "modality_embedder.", "pooled_text_embedder."))
                or ".attn_mv." in key or ".norm_mv." in key)

    def enable_cache(self, config) -> None:
        """diffusers' caches across denoising steps (e.g. ``FirstBlockCacheConfig``), as on
        ``WanTransformer3DModel``; the pipeline runs each step in a cache context of its guidance."""
        # A cache finds the blocks it skips by their class, registered with what they return.
        TransformerBlockRegistry.register(AnimaXTransformerBlock, TransformerBlockMetadata(
            return_hidden_states_index=0, return_encoder_hidden_states_index=None))
        super().enable_cache(config)

    def with_rgb_video(self, rgb_video: bool) -> "AnimaXTransformer3DModel":
        """This model's weights generating the RGB video beside the pose video or not (``rgb_video``);
        itself if it already does as asked. No weight belongs to either layout, so both start trained."""
        if rgb_video == self.config.rgb_video:
            return self
        return self._starting_from(self, self.state_dict(), rgb_video=rgb_video)

    @property
    def generated(self) -> tuple[int, ...]:
        """The modalities whose videos the model generates, in the order of ``sequence``'s ``noisy``."""
        return (RGB, POSE) if self.config.rgb_video else (POSE,)

    def layout(self, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per latent frame of the sequence: is it a clean condition frame, and its modality."""
        rgb_frames = num_frames // 2 if self.config.rgb_video else 1
        condition = torch.zeros(num_frames, dtype=torch.bool)
        condition[[0, rgb_frames]] = True
        modality = torch.full((num_frames,), POSE)
        modality[:rgb_frames] = RGB
        return condition, modality

    def sequence(self, condition: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        """The model's input from the templates and the noisy videos.

        Args:
            condition: (B, 2, V, C, 1, h, w) the RGB and pose-map templates' latents.
            noisy: (B, G, V, C, f + 1, h, w) the noisy videos of ``generated`` (G of them).

        Returns:
            (B, V, C, frames, h, w): ``[c_rgb, x_rgb, c_pose, x_pose]``, or ``[c_rgb, c_pose, x_pose]``.
        """
        if noisy.shape[1] != len(self.generated):
            raise ValueError(f"noisy has {noisy.shape[1]} videos a sample; this model generates {len(self.generated)}")
        if self.config.rgb_video:
            halves = torch.cat([condition, noisy], dim=4)  # per half: [c, x] in time
            return torch.cat([halves[:, 0], halves[:, 1]], dim=3)
        return torch.cat([condition[:, 0], condition[:, 1], noisy[:, 0]], dim=3)

    def generated_flow(self, flow: torch.Tensor) -> torch.Tensor:
        """(B, V, C, frames, h, w) output -> (B, G, V, C, f + 1, h, w): the flow of the generated videos."""
        if self.config.rgb_video:
            return flow.unflatten(3, (2, -1))[:, :, :, :, 1:].permute(0, 3, 1, 2, 4, 5, 6)
        return flow[:, :, :, 2:][:, None]

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        plucker: torch.Tensor,
        return_dict: bool = True,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """Predict the flow of every latent frame of every view.

        Args:
            hidden_states: (B, V, C, frames, h, w) the sequence of each view (``sequence``).
            timestep: (B,) the noise level of the noisy frames; condition frames get 0.
            encoder_hidden_states: (B, L, text_dim) the prompt.
            plucker: (B, V, ray_channels, h, w) ray maps at latent resolution.

        Returns:
            (B, V, out_channels, frames, h, w); only the noisy frames' entries are trained
            (``generated_flow``).
        """
        batch, views, channels, frames, height, width = hidden_states.shape
        if plucker.shape != (batch, views, self.config.ray_channels, height, width):
            raise ValueError(
                f"plucker must be (B, V, {self.config.ray_channels}, h, w) = "
                f"{(batch, views, self.config.ray_channels, height, width)}, got {tuple(plucker.shape)}"
            )
        p_t, p_h, p_w = self.config.patch_size
        x = hidden_states.flatten(0, 1)
        rays = plucker.flatten(0, 1).unsqueeze(2).expand(-1, -1, frames, -1, -1).to(x.dtype)
        rotary_emb = self.rope(x)
        x = self.patch_embedding(torch.cat([x, rays], dim=1)).flatten(2).transpose(1, 2).contiguous()

        # Timestep (0 for the clean condition frames), modality and pooled prompt per latent frame,
        # embedded once per sample and shared by its views
        condition, modality = (t.to(x.device) for t in self.layout(frames))
        steps = torch.where(condition, torch.zeros_like(timestep)[:, None], timestep[:, None])  # (B, F)
        frame_embeds = [self.modality_embedder(modality)]
        if self.pooled_text_embedder is not None:
            frame_embeds.append(self.pooled_text_embedder(encoder_hidden_states)[:, None])
        temb, timestep_proj, context = (
            embedded.repeat_interleave(views, dim=0)
            for embedded in self.condition_embedder(steps, encoder_hidden_states, frame_embeds)
        )  # (BV, F, D), (BV, F, 6, D), (BV, L, D)

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, context, timestep_proj, rotary_emb, views)
            else:
                x = block(x, context, timestep_proj, rotary_emb, views)

        shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).unsqueeze(3).unbind(2)
        x = (_per_frame(self.norm_out(x.float()), frames) * (1 + scale) + shift).flatten(1, 2).type_as(x)
        x = self.proj_out(x)
        pf, ph, pw = frames // p_t, height // p_h, width // p_w
        x = x.reshape(batch * views, pf, ph, pw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = x.flatten(6, 7).flatten(4, 5).flatten(2, 3).unflatten(0, (batch, views))
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
