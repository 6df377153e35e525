"""AnimaXTransformer3DModel on tiny random configs: it starts as Wan applied per view, and each
new part (shared RoPE, modality embedding, condition timesteps, rays, multi-view attention)
does what the paper says once it is trained away from its neutral start."""

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from safetensors.torch import load_file

from backend.model.transformer_animax import (
    AnimaXPooledTextEmbedding,
    AnimaXRotaryPosEmbed,
    AnimaXTransformer3DModel,
    AnimaXTransformerBlock,
)

CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
              text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=64)
B, V, C, F, H, W = 1, 3, 4, 6, 4, 6  # f + 2 = 3 latent frames per half


@pytest.fixture
def wan():
    torch.manual_seed(0)
    return WanTransformer3DModel(**CONFIG).eval()


@pytest.fixture
def model(wan):
    return AnimaXTransformer3DModel.from_wan(wan).eval()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(B, V, C, F, H, W, generator=g), timestep=torch.tensor([700.0]),
                encoder_hidden_states=torch.randn(B, 5, 16, generator=g), plucker=torch.randn(B, V, 6, H, W, generator=g))


@torch.no_grad()
def run(model, **changes):
    return model(**{**inputs(), **changes}).sample


def randomise_(module):
    torch.manual_seed(3)
    for p in module.parameters():
        p.data.normal_(0, 0.5)


def test_pose_half_shares_the_rgb_half_rotary_positions():
    rope = AnimaXRotaryPosEmbed(12, (1, 2, 2), 64)
    stock = WanRotaryPosEmbed(12, (1, 2, 2), 64)
    x = torch.zeros(1, 4, F, H, W)
    cos, sin = rope(x)
    tokens_per_half = (F // 2) * (H // 2) * (W // 2)
    for table in (cos, sin):
        assert torch.equal(table[:, :tokens_per_half], table[:, tokens_per_half:])
    stock_cos, stock_sin = stock(x[:, :, : F // 2])
    assert torch.equal(cos[:, :tokens_per_half], stock_cos) and torch.equal(sin[:, :tokens_per_half], stock_sin)
    # and not what stock Wan gives the whole sequence: its frames f+2.. would get new positions
    assert not torch.equal(cos, stock(x)[0])


def test_at_initialisation_it_is_wan_applied_to_each_view(wan, model):
    out = run(model)
    condition, _ = model.layout(F)
    per_frame = torch.where(condition, 0.0, 700.0)
    per_token = per_frame.repeat_interleave((H // 2) * (W // 2))[None].repeat(V, 1)
    wan.rope = model.rope  # Wan with the paper's shared positions, nothing else changed
    x = inputs()
    with torch.no_grad():
        ref = wan(x["hidden_states"].flatten(0, 1), per_token, x["encoder_hidden_states"].repeat(V, 1, 1)).sample
    assert out.shape == (B, V, C, F, H, W)
    torch.testing.assert_close(out.flatten(0, 1), ref, atol=1e-5, rtol=1e-5)


def test_condition_frames_carry_timestep_zero(model):
    seen = []
    model.condition_embedder.timesteps_proj.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    run(model)
    steps = seen[0].reshape(B, F)  # embedded once per sample, shared by its views
    assert torch.equal(steps[:, [0, F // 2]], torch.zeros(B, 2))
    assert (steps[:, [1, 2, 4, 5]] == 700).all()


def test_modality_embedding_starts_neutral_and_then_tells_the_halves_apart(model):
    ids = torch.tensor([0, 1])
    inner_dim = CONFIG["num_attention_heads"] * CONFIG["attention_head_dim"]
    assert torch.equal(model.modality_embedder(ids), torch.zeros(2, inner_dim))
    before = run(model)
    randomise_(model.modality_embedder)
    rgb, pose = model.modality_embedder(ids)
    assert not torch.allclose(rgb, pose)
    assert not torch.allclose(run(model), before)


def test_rays_and_multiview_layers_are_silent_until_trained(model):
    base = run(model)
    other_rays = torch.randn(B, V, 6, H, W)
    assert torch.equal(run(model, plucker=other_rays), base)
    # view 1's content does not reach view 0 before multi-view attention is trained ...
    changed = inputs()["hidden_states"].clone()
    changed[:, 1] += 1.0
    assert torch.equal(run(model, hidden_states=changed)[:, 0], base[:, 0])
    for block in model.blocks:
        randomise_(block.attn_mv.to_out)
    # ... and it does afterwards, while the rays count once their input channels are trained
    assert not torch.allclose(run(model, hidden_states=changed)[:, 0], run(model)[:, 0])
    with torch.no_grad():
        model.patch_embedding.weight[:, C:].normal_()
    assert not torch.allclose(run(model, plucker=other_rays), run(model))


def test_pooled_prompt_starts_silent_then_conditions_every_frame(model):
    widened = model.with_pooled_text().eval()
    assert widened.config.pooled_text and widened.with_pooled_text() is widened
    added = set(widened.state_dict()) - set(model.state_dict())
    assert added and all(k.startswith("pooled_text_embedder.") for k in added)
    assert all(torch.equal(widened.state_dict()[k], v) for k, v in model.state_dict().items())
    assert torch.equal(run(widened), run(model))  # zero-initialised: the same model as without it
    randomise_(widened.pooled_text_embedder)
    text = inputs()["encoder_hidden_states"]
    # only the prompt's mean moves the new path: a prompt of other tokens with the same mean ...
    shuffled = text[:, torch.randperm(text.shape[1])]
    model_delta = run(model, encoder_hidden_states=shuffled) - run(model)
    widened_delta = run(widened, encoder_hidden_states=shuffled) - run(widened)
    torch.testing.assert_close(widened_delta, model_delta, atol=1e-5, rtol=1e-4)
    # ... while another mean changes every view and frame beyond what cross-attention does alone
    other = text + 1.0
    changed = run(widened, encoder_hidden_states=other) - run(widened) - (run(model, encoder_hidden_states=other)
                                                                         - run(model))
    assert (changed.abs().amax(dim=(2, 4, 5)) > 1e-3).all()


def test_deepened_model_starts_as_the_kept_one_with_new_blocks_spread_among_its_own(model):
    randomise_(model)  # a trained model: every branch, the multi-view layers' included, has weight
    deep = model.deepened(5).eval()
    assert deep.config.num_layers == 5 and deep.deepened(5) is deep
    kept = model.state_dict()
    for j, i in enumerate((0, 2)):  # 2 kept blocks in 5: at 0 and 2, new ones at 1, 3 and 4
        block = {k[len(f"blocks.{j}."):]: v for k, v in kept.items() if k.startswith(f"blocks.{j}.")}
        assert all(torch.equal(deep.blocks[i].state_dict()[k], v) for k, v in block.items())
    assert all(torch.equal(deep.state_dict()[k], v) for k, v in kept.items() if not k.startswith("blocks."))
    torch.testing.assert_close(run(deep), run(model))  # the new blocks start as identities
    randomise_(deep.blocks[3])  # ... and compute once trained
    assert not torch.allclose(run(deep), run(model), atol=1e-3)
    with pytest.raises(ValueError, match="deepens to more blocks, not to 1"):
        model.deepened(1)


def test_pooled_prompt_leaves_out_padding_and_pools_a_dropped_prompt_to_zero():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 3, 16, generator=g)
    padded = torch.cat([tokens, torch.zeros(2, 4, 16)], dim=1)
    torch.testing.assert_close(AnimaXPooledTextEmbedding.pool(padded), tokens.mean(1))
    assert torch.equal(AnimaXPooledTextEmbedding.pool(torch.zeros(2, 7, 16)), torch.zeros(2, 16))


def test_each_module_is_built_once_and_kept(monkeypatch):
    """Constructing the model builds exactly the modules it holds: as many blocks as the config
    says, and no Wan module that is then replaced by AnimaX's."""
    built = []
    module_init = nn.Module.__init__

    def recording_init(self, *args, **kwargs):
        module_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(nn.Module, "__init__", recording_init)
    model = AnimaXTransformer3DModel(**CONFIG, pooled_text=True)
    monkeypatch.undo()
    kinds = Counter(type(module) for module in built)
    assert kinds[AnimaXTransformerBlock] == CONFIG["num_layers"]
    assert kinds == Counter(type(module) for module in model.modules())


def test_save_and_load_round_trip(model, tmp_path):
    for block in model.blocks:
        randomise_(block.attn_mv)
    model.save_pretrained(tmp_path)
    again = AnimaXTransformer3DModel.from_pretrained(tmp_path).eval()
    assert isinstance(again.rope, AnimaXRotaryPosEmbed)
    assert again.config.ray_channels == 6
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(run(again), run(model))


def test_gradient_checkpointing_gives_the_same_gradients(model):
    def grads():
        model.zero_grad()
        model(**inputs()).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.train()
    plain = grads()
    model.enable_gradient_checkpointing()
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


def test_bad_inputs(model, wan):
    with pytest.raises(ValueError, match=r"plucker must be \(B, V, 6, h, w\)"):
        run(model, plucker=torch.zeros(B, V, 6, H, W + 2))
    with pytest.raises(ValueError, match="even number of latent frames"):
        run(model, hidden_states=torch.zeros(B, V, C, F - 1, H, W))
    i2v = WanTransformer3DModel(**CONFIG, image_dim=8, added_kv_proj_dim=24)
    with pytest.raises(ValueError, match="text-to-video Wan2.1"):
        AnimaXTransformer3DModel.from_wan(i2v)


REFERENCE = Path(__file__).with_name("data") / "transformer_reference.safetensors"


def reference_case():
    """A tiny model with the pooled prompt, every weight drawn in key order (so it depends on the
    state-dict keys and shapes only, not on how the modules are built), and inputs with two noise
    levels, padded prompts and rays."""
    model = AnimaXTransformer3DModel(**{**CONFIG, "num_attention_heads": 2, "attention_head_dim": 8},
                                     pooled_text=True).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, tensor in sorted(model.state_dict().items()):
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.3)
    prompt = torch.randn(2, 5, 16, generator=g)
    prompt[0, 3:] = 0  # padding, left out of the pooled prompt
    case = dict(hidden_states=torch.randn(2, 2, C, F, 4, 4, generator=g), timestep=torch.tensor([700.0, 35.0]),
                encoder_hidden_states=prompt, plucker=torch.randn(2, 2, 6, 4, 4, generator=g))
    return model, case


@torch.no_grad()
def test_the_output_is_the_reference_the_model_gave_before_its_conditioning_was_a_module():
    """The file holds this case's output computed before the per-frame conditioning (time,
    modality, pooled prompt) moved into a module of its own: same keys, same output."""
    model, case = reference_case()
    torch.testing.assert_close(model(**case).sample, load_file(REFERENCE)["sample"], rtol=1e-5, atol=1e-6)


# --- without the RGB video: [c_rgb, c_pose, x_pose] -----------------------------------------
P = F // 2 + 1  # c_rgb, c_pose and the f + 1 = 2 noisy pose frames


@pytest.fixture
def pose_only(model):
    return model.with_rgb_video(False)


def test_without_the_rgb_video_the_rgb_template_shares_the_pose_template_rotary_positions():
    rope = AnimaXRotaryPosEmbed(12, (1, 2, 2), 64, rgb_video=False)
    stock = WanRotaryPosEmbed(12, (1, 2, 2), 64)
    x = torch.zeros(1, 4, P, H, W)
    frame = (H // 2) * (W // 2)
    for table, stock_table in zip(rope(x), stock(x[:, :, 1:])):
        assert table.shape[1] == P * frame
        assert torch.equal(table[:, frame:], stock_table)  # [c_pose, x_pose] as Wan places [c, x]
        assert torch.equal(table[:, :frame], stock_table[:, :frame])  # c_rgb at c_pose's position
    with pytest.raises(ValueError, match="at least 3 latent frames"):
        rope(torch.zeros(1, 4, 2, H, W))


def test_without_the_rgb_video_the_layout_has_both_templates_then_the_pose_video(model, pose_only):
    condition, modality = pose_only.layout(P)
    assert condition.tolist() == [True, True, False, False]
    assert modality.tolist() == [0, 1, 1, 1]
    assert pose_only.generated == (1,) and model.generated == (0, 1)
    both, _ = model.layout(F)
    assert both.tolist() == [True, False, False, True, False, False]


@pytest.mark.parametrize("rgb_video", [True, False])
def test_sequence_puts_the_noisy_videos_where_generated_flow_reads_them_back(model, rgb_video):
    model = model.with_rgb_video(rgb_video)
    generated = len(model.generated)
    condition = torch.randn(2, 2, V, C, 1, H, W)
    noisy = torch.randn(2, generated, V, C, F // 2 - 1, H, W)
    sequence = model.sequence(condition, noisy)
    assert sequence.shape == (2, V, C, F if rgb_video else P, H, W)
    condition_frames, _ = model.layout(sequence.shape[3])
    templates = sequence[:, :, :, condition_frames]  # the clean frames, RGB template first
    assert torch.equal(templates, condition[:, :, :, :, 0].permute(0, 2, 3, 1, 4, 5))
    assert torch.equal(model.generated_flow(sequence), noisy)
    with pytest.raises(ValueError, match="this model generates"):
        model.sequence(condition, torch.randn(2, 3 - generated, V, C, 2, H, W))


def test_with_rgb_video_keeps_every_weight_and_runs_the_shorter_sequence(model, pose_only):
    assert pose_only.config.rgb_video is False and model.config.rgb_video is True
    assert model.with_rgb_video(True) is model
    for (name, a), (_, b) in zip(model.state_dict().items(), pose_only.state_dict().items()):
        assert torch.equal(a, b), name
    x = inputs()
    out = run(pose_only, hidden_states=x["hidden_states"][:, :, :, :P])
    assert out.shape == (B, V, C, P, H, W) and torch.isfinite(out).all()
    back = pose_only.with_rgb_video(True)
    assert back.config.rgb_video is True
    assert torch.equal(back.state_dict()["proj_out.weight"], model.state_dict()["proj_out.weight"])
