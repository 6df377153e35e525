"""Training code on a CPU with toy sizes: losses fall, stages train the right parameters, resume."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from backend.data.dataset import build_samples
from backend.model.loading import build_tiny_pipeline
from backend.model.transformer_animax import AnimaXTransformer3DModel
from backend.train.latents import encode_samples, to_video
from backend.train.loop import train_stage
from backend.train.stages import flow_loss, trainable_parameters, vae_loss
from backend.train.text import TextCache, build_text_cache

TOY_TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, text_dim=384,
                       freq_dim=32, ffn_dim=64, num_layers=1)
# 2x compression in space and time: 32 px, 5 frames -> 16 x 16 latents, 3 latent frames.
TOY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
               scale_factor_temporal=2, scale_factor_spatial=2, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)


@pytest.fixture(scope="module")
def samples():
    return build_samples(3, seed=1, size=32, frames=5)


@pytest.fixture(scope="module")
def toy_vae():
    torch.manual_seed(0)
    return AutoencoderKLWan(**TOY_VAE).eval()


def with_forward(forward, rgb_video=True):
    """A toy transformer (its sequence layout) whose forward is ``forward``."""
    model = AnimaXTransformer3DModel(**TOY_TRANSFORMER, rgb_video=rgb_video)
    model.forward = forward
    return model


def _falls(losses, factor):
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < factor * first, (first, last)


def test_vae_loss_falls(samples, toy_vae, tmp_path):
    video = to_video(samples.pose[:2, 0], "cpu")  # two fixed pose-map videos
    is_pose = torch.ones(2, dtype=torch.bool)
    losses, finished = train_stage("vae", toy_vae, list(toy_vae.parameters()),
                                   lambda model, step: vae_loss(model, video, is_pose), 30, 3e-3, tmp_path)
    assert finished and len(losses) == 30
    _falls(losses, 0.85)


def test_flow_loss_falls_and_resumes(samples, toy_vae, tmp_path):
    text = torch.randn(len(samples), 32, 384)
    data = encode_samples(toy_vae, samples, text, "cpu", frame_choices=2)
    assert data.video.shape[:3] == (3, 2, 4) and data.condition.shape[:4] == (3, 3, 2, 4)
    torch.manual_seed(0)
    model = AnimaXTransformer3DModel(**TOY_TRANSFORMER)
    generator = torch.Generator()

    def step_fn(model, step):
        generator.manual_seed(step % 4)  # four fixed batches: the model can fit them
        return flow_loss(model, data.take(torch.arange(3)), "multiview", generator)

    params = trainable_parameters(model, "joint")
    first, finished = train_stage("joint", model, params, step_fn, 60, 3e-3, tmp_path, deadline=0.0)
    assert not finished and len(first) == 1  # past its deadline: one step, saved, stopped
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 1
    losses, finished = train_stage("joint", model, params, step_fn, 60, 3e-3, tmp_path)
    assert finished and len(losses) == 60 and losses[0] == first[0]
    _falls(losses, 0.8)


@pytest.mark.parametrize("rest_probability, text_drop", [(1.0, 0.0), (0.0, 1.0)])
def test_flow_loss_draws_the_conditions_it_is_told(samples, toy_vae, rest_probability, text_drop):
    data = encode_samples(toy_vae, samples, torch.randn(len(samples), 32, 384) + 3.0, "cpu", frame_choices=2)
    seen = {}

    def noting(sequence, timestep, text, rays, return_dict):  # notes what the transformer is given
        seen.update(sequence=sequence, text=text)
        return (torch.zeros_like(sequence),)

    model = with_forward(noting)
    index = torch.tensor([0, 1, 2] * 6)
    flow_loss(model, data.take(index), "multiview", torch.Generator().manual_seed(0), rest_probability=rest_probability,
              text_drop=text_drop)
    frames = data.video.shape[4]  # per half: [condition, video frames]
    conditions = seen["sequence"].unflatten(3, (2, frames + 1))[:, :, :, :, :1]  # (B, V, C, 2, 1, h, w)
    given = conditions.permute(0, 3, 1, 2, 4, 5, 6)  # (B, 2, V, C, 1, h, w) as data.condition[index, choice]
    dropped = given.flatten(1).abs().amax(1) == 0  # the image condition is dropped 20% of the time
    assert 0 < dropped.sum() < len(index)
    # Choice 0 is the rest template, choices 1 and 2 are frames of the clip.
    matches = torch.stack([(given == data.condition[index, k].float()).flatten(1).all(1) for k in range(3)], 1)
    allowed = [0] if rest_probability == 1.0 else [1, 2]
    assert matches[~dropped][:, allowed].any(1).all()
    prompts_kept = seen["text"].flatten(1).abs().amax(1) > 0
    assert prompts_kept.all() if text_drop == 0.0 else not prompts_kept.any()


def test_flow_loss_weighs_the_pose_half_as_told(samples, toy_vae):
    data = encode_samples(toy_vae, samples, torch.randn(len(samples), 32, 384), "cpu", frame_choices=2)
    frames = data.video.shape[4] + 1  # per half: [condition, video frames]

    def model_guessing(pose_value):  # zero flow for the RGB half, a constant for the pose half
        def guess(sequence, timestep, text, rays, return_dict):
            out = torch.zeros_like(sequence)
            out[:, :, :, frames:] = pose_value
            return (out,)
        return with_forward(guess)

    def loss(pose_value, pose_weight):
        return flow_loss(model_guessing(pose_value), data.take(torch.tensor([0, 1, 2])), "multiview",
                         torch.Generator().manual_seed(0), pose_weight=pose_weight).item()

    assert loss(0.0, 0.0) == pytest.approx(loss(5.0, 0.0))  # weight 0: the pose half does not count
    assert loss(5.0, 1.0) > loss(0.0, 1.0) + 1.0
    # The weights keep a mean of 1: weight w gives (rgb + w pose) / (1 + w) of the halves' errors.
    rgb, pose = loss(0.0, 0.0), loss(0.0, 1e9)
    assert loss(0.0, 1.0) == pytest.approx((rgb + pose) / 2, rel=1e-5)
    assert loss(0.0, 3.0) == pytest.approx((rgb + 3 * pose) / 4, rel=1e-5)


def test_stages_train_their_own_parameters():
    model = AnimaXTransformer3DModel(**TOY_TRANSFORMER)
    joint = {id(p) for p in trainable_parameters(model, "joint")}
    names = {n for n, p in model.named_parameters() if id(p) in joint}
    assert not any(".attn_mv." in n for n in names) and "patch_embedding.weight" in names
    assert any(n.startswith("blocks.0.attn1.") for n in names)
    multiview = {n for n, p in model.named_parameters() if id(p) in
                 {id(q) for q in trainable_parameters(model, "multiview")}}
    assert multiview == {n for n, _ in model.named_parameters()
                         if n.startswith("patch_embedding.") or ".attn_mv." in n or ".norm_mv." in n}
    assert all(p.requires_grad == (n in multiview) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="stages"):
        trainable_parameters(model, "vae")


def test_text_cache_equals_the_pipeline_encoder(tmp_path):
    pipe = build_tiny_pipeline()
    prompts = ["the fox jumps", "a spider walking", "the lamp nods"]
    build_text_cache(pipe, prompts, tmp_path / "text.safetensors")
    cache = TextCache(tmp_path / "text.safetensors")
    got = cache[["a spider walking", "the fox jumps"]]
    want = torch.cat([pipe.encode_prompt(p, torch.device("cpu")) for p in ["a spider walking", "the fox jumps"]])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.float(), atol=2e-3, rtol=2e-3)  # stored in float16
    with pytest.raises(KeyError, match="rebuild"):
        cache[["the fox sings"]]
    with pytest.raises(FileNotFoundError, match="text-cache"):
        TextCache(tmp_path / "missing.safetensors")


def test_runs_recorded_under_the_older_key_are_read(tmp_path):
    from backend.train.__main__ import recorded_runs

    assert recorded_runs(tmp_path) == []
    (tmp_path / "training.json").write_text(json.dumps({"sessions": [{"joint_steps": 5}]}))
    assert recorded_runs(tmp_path) == [{"joint_steps": 5}]
    (tmp_path / "training.json").write_text(json.dumps({"runs": [{"joint_steps": 6}]}))
    assert recorded_runs(tmp_path) == [{"joint_steps": 6}]


def test_without_the_rgb_video_the_loss_is_the_pose_videos_alone(samples, toy_vae):
    """The pose-only layout gets [c_rgb, c_pose, x_pose] and is scored on the pose video alone: its
    loss is the pose half's error of the joint layout on the same draws."""
    data = encode_samples(toy_vae, samples, torch.randn(len(samples), 32, 384), "cpu", frame_choices=2)
    frames = data.video.shape[4]
    seen = []

    def guess(value, joint_frames):
        def forward(sequence, timestep, text, rays, return_dict):
            seen.append(sequence.shape[3])
            out = torch.full_like(sequence, value)
            out[:, :, :, :joint_frames] = 0.0  # the joint layout's RGB half: not counted with pose weight 1e9
            return (out,)
        return forward

    def loss(model, **kwargs):
        return flow_loss(model, data.take(torch.tensor([0, 1, 2])), "multiview", torch.Generator().manual_seed(0),
                         **kwargs).item()

    pose_only = loss(with_forward(guess(2.0, 0), rgb_video=False))
    joint = loss(with_forward(guess(2.0, frames + 1)), pose_weight=1e9)
    assert seen == [frames + 2, 2 * (frames + 1)]
    assert pose_only == pytest.approx(joint, rel=1e-5)
