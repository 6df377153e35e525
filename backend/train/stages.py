"""The losses and trainable parameters of each training stage.

``vae``: reconstruction of single-view RGB and pose-map videos (pose-map pixels that carry a joint
colour weigh more: the colours are what reconstruction clusters) plus a small KL term.
``joint`` / ``multiview``: rectified-flow matching as Wan trains (x_t = (1 - s) x_0 + s e, target
e - x_0, s shifted like the sampler's schedule) on the noisy frames of ``[c_rgb, x_rgb, c_pose,
x_pose]`` (of ``[c_rgb, c_pose, x_pose]`` for a transformer without the RGB video); the image
condition is the rest template or a frame of the clip, zeroed 20% of the time so that image
classifier-free guidance has an unconditional branch to use. The prompt is zeroed too
(independently), for the pipeline's guidance on the prompt; the paper drops only the image.
``pose_weight`` weighs the pose half of the loss against the RGB half (the pose maps are what
reconstruction reads); the weights keep a mean of 1, so 1 is the plain loss.

The defaults are the shipped tiny model's settings: the rest template always (the paper: half the
time, else a frame), the prompt dropped 20% of the time, the pose half weighted 3x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.model.samplers import SCHEDULER_SHIFT
from backend.model.transformer_animax import AnimaXTransformer3DModel

from .latents import LatentSet

STAGES = ("vae", "joint", "multiview")
CONDITION_DROP = 0.2
TEXT_DROP = 0.2
REST_TEMPLATE_PROBABILITY = 1.0
POSE_WEIGHT = 3.0
POSE_COLOUR_WEIGHT = 10.0
KL_WEIGHT = 1e-6


def vae_loss(vae, video: torch.Tensor, is_pose: torch.Tensor) -> torch.Tensor:
    """video (B, 3, T, S, S) in [-1, 1]; is_pose (B,) bool."""
    posterior = vae.encode(video).latent_dist
    recon = vae.decode(posterior.sample()).sample
    coloured = (video > -0.9).any(dim=1, keepdim=True) & is_pose.view(-1, 1, 1, 1, 1)
    weight = 1.0 + (POSE_COLOUR_WEIGHT - 1.0) * coloured.float()
    return (weight * (recon - video).abs()).mean() + KL_WEIGHT * posterior.kl().mean()


def trainable_parameters(model: AnimaXTransformer3DModel, stage: str) -> list[torch.nn.Parameter]:
    """Stage 1 trains the base and leaves the (zero-output) multi-view layers alone; stage 2 freezes
    the base and trains the camera input (patch embedding, which holds the ray channels) and the
    multi-view attention (paper §3.2).

    With a LoRA adapter (the full preset: ``model.add_adapter``), stage 1 keeps the pretrained base
    frozen and trains the LoRA weights and AnimaX's new inputs (patch embedding, modality
    embedding) instead; stage 2 is the same as without.
    """
    if stage == "joint" and getattr(model, "peft_config", None):
        chosen = {n for n, _ in model.named_parameters()
                  if "lora_" in n or n.startswith(("patch_embedding.", "modality_embedder."))}
    elif stage == "joint":
        chosen = {n for n, _ in model.named_parameters() if ".attn_mv." not in n and ".norm_mv." not in n}
    elif stage == "multiview":
        chosen = {n for n, _ in model.named_parameters()
                  if n.startswith("patch_embedding.") or ".attn_mv." in n or ".norm_mv." in n}
    else:
        raise ValueError(f"the transformer trains in stages 'joint' and 'multiview', not {stage!r}")
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
        if name in chosen:
            params.append(param)
    return params


def flow_loss(model, clips: LatentSet, stage: str, generator: torch.Generator, part: slice = slice(None),
              rest_probability: float = REST_TEMPLATE_PROBABILITY, text_drop: float = TEXT_DROP,
              pose_weight: float = POSE_WEIGHT) -> torch.Tensor:
    """The flow-matching loss of ``clips[part]`` (``clips``: a step's batch, from memory or streamed from
    shards): one random view each in stage 1, all in stage 2.

    The image condition is the rest template with ``rest_probability``, else a frame of the clip;
    the prompt is zeroed with ``text_drop``; the pose half's error weighs ``pose_weight`` times the
    RGB half's (a transformer without the RGB video learns the pose video alone). The random
    choices are drawn for all of ``clips``, so that N data-parallel processes, each given its
    ``part``, draw exactly what one process draws for the whole batch."""
    device = clips.video.device
    batch = len(clips)
    draw = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
    x0 = clips.video.float()  # (B, 2, V, C, t, h, w)
    choices = clips.condition.shape[1]
    rest = draw(batch) < rest_probability
    choice = torch.where(rest, 0, 1 + (draw(batch) * (choices - 1)).long().clamp(max=choices - 2))
    condition = clips.condition[torch.arange(batch, device=device), choice].float()  # (B, 2, V, C, 1, h, w)
    keep = (draw(batch) >= CONDITION_DROP).float().view(-1, 1, 1, 1, 1, 1, 1)
    condition = condition * keep
    rays = clips.rays.expand(batch, *clips.rays.shape)
    if stage == "joint":  # single views, camera-blind: the ray channels see zeros until stage 2
        view = (draw(batch) * x0.shape[2]).long().clamp(max=x0.shape[2] - 1)
        pick = lambda t: t[torch.arange(batch, device=device), :, view].unsqueeze(2)  # noqa: E731
        x0, condition, rays = pick(x0), pick(condition), torch.zeros_like(rays[:, :1])
    u = draw(batch)
    sigma = SCHEDULER_SHIFT * u / (1 + (SCHEDULER_SHIFT - 1) * u)
    noise = torch.randn(x0.shape, generator=generator, device=device)
    s = sigma.view(-1, 1, 1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    generated = model.generated
    if len(generated) == 1:  # the pose video alone; the same draws as with both, so runs compare
        noisy, noise, x0 = noisy[:, 1:], noise[:, 1:], x0[:, 1:]
    sequence = model.sequence(condition, noisy)
    text = clips.text.float() * (draw(batch) >= text_drop).float().view(-1, 1, 1)
    flow = model(sequence[part], (sigma * 1000)[part], text[part], rays[part], return_dict=False)[0]
    flow = model.generated_flow(flow)  # (B, G, V, C, t, h, w)
    if len(generated) == 1:
        return F.mse_loss(flow.float(), (noise - x0)[part])
    halves = torch.tensor([1.0, pose_weight], device=device).view(1, 2, 1, 1, 1, 1, 1) * 2 / (1 + pose_weight)
    return (halves * F.mse_loss(flow.float(), (noise - x0)[part], reduction="none")).mean()
