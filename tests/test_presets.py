"""Offline loading of the tiny and full presets: exact round trips and a clear error for every bad file."""

import json
import re
import shutil
import socket
import sys

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import load_file, save_file

from animax_addon.core.cameras import make_camera_rig
from backend.model.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, make_lora_config, save_adapter
from backend.model.checked_files import WeightsError
from backend.model.loading import build_tiny_pipeline, load_full, load_tiny, save_tiny, tiny_preset
from backend.data.rig_world import FAMILIES, TRAIN_FAMILIES
from backend.model.presets import TINY, TINY_TRANSFORMER, TINY_WEIGHTS, tiny_vae_config
from backend.model.transformer_animax import AnimaXTransformer3DModel
from wan_stand_in import WAN, WAN_FILES, save_wan_stand_in

SIZE, FRAMES = 32, 5  # 8x8 latents, 2 latent frames with both presets' 4x VAEs
TINY_FILES = ["animax.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]


def generate(pipe, steps=2):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2)]
    return pipe("the fox pounces forward", *images, make_camera_rig(np.zeros(3), 1.0, SIZE), num_frames=FRAMES,
                num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).pose_videos


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


# --- tiny -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pipe = build_tiny_pipeline(seed=0)
    directory = tmp_path_factory.mktemp("tiny")
    save_tiny(pipe, directory)
    return pipe, directory


def test_tiny_round_trip_is_exact_in_float32(tiny, tmp_path):
    pipe, _ = tiny
    save_tiny(pipe, tmp_path, weights_dtype=torch.float32)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(TINY_FILES)
    loaded = load_tiny(tmp_path)
    assert_same_weights(pipe.transformer, loaded.transformer)
    assert_same_weights(pipe.vae, loaded.vae)
    assert loaded.config.max_sequence_length == TINY.max_sequence_length
    assert loaded.scheduler.config.shift == 3.0
    np.testing.assert_array_equal(generate(loaded), generate(pipe))


def test_tiny_stores_16_bit_weights_by_default_and_computes_in_float32(tiny, tmp_path):
    pipe, directory = tiny
    for name in ("transformer", "vae"):
        stored = load_file(directory / name / "diffusion_pytorch_model.safetensors")
        assert {v.dtype for v in stored.values()} == {torch.float16}
    loaded = load_tiny(directory)
    for model, original in ((loaded.transformer, pipe.transformer), (loaded.vae, pipe.vae)):
        kept = original.state_dict()
        for key, value in model.state_dict().items():
            assert value.dtype == torch.float32 and torch.equal(value, kept[key].half().float()), key
    assert np.abs(generate(loaded).astype(float) - generate(pipe)).mean() < 1.0  # of 255: rounding, not damage
    huge = build_tiny_pipeline(seed=1)
    with torch.no_grad():
        huge.vae.encoder.conv_in.weight[0, 0, 0, 0, 0] = 1e6
    with pytest.raises(ValueError, match=r"vae weights \['encoder.conv_in.weight'\] do not fit torch.float16"):
        save_tiny(huge, tmp_path)


def test_tiny_keeps_its_prompt_guidance_and_older_directories_load_without_it(tiny, tmp_path):
    pipe, directory = tiny
    pipe.register_to_config(text_guidance_scale=2.5)
    save_tiny(pipe, tmp_path / "guided")
    pipe.register_to_config(text_guidance_scale=1.0)
    assert load_tiny(tmp_path / "guided").config.text_guidance_scale == 2.5
    meta = tmp_path / "guided" / "animax.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "text_guidance_scale"}))
    assert load_tiny(tmp_path / "guided").config.text_guidance_scale == 1.0
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "text_guidance_scale": 0.5}))
    with pytest.raises(WeightsError, match="text_guidance_scale >= 1"):
        load_tiny(tmp_path / "guided")


def test_tiny_records_the_view_size_it_was_trained_at_for_its_worker(tiny, tmp_path):
    pipe, directory = tiny
    assert tiny_preset(directory) == TINY and tiny_preset(TINY_WEIGHTS).size == TINY.size
    save_tiny(pipe, tmp_path / "large", size=96)
    preset = tiny_preset(tmp_path / "large")
    assert preset.size == 96 and preset.num_frames == TINY.num_frames and preset.name == TINY.name
    meta = tmp_path / "large" / "animax.json"
    written = json.loads(meta.read_text())
    meta.write_text(json.dumps({k: v for k, v in written.items() if k != "size"}))
    assert tiny_preset(tmp_path / "large").size == TINY.size  # written before other sizes were trained
    for bad in (90, 0, "96"):
        meta.write_text(json.dumps({**written, "size": bad}))
        with pytest.raises(WeightsError, match="a multiple of 16"):
            tiny_preset(tmp_path / "large")


def test_tiny_records_the_families_it_was_trained_on_for_its_joint_colours(tiny, tmp_path):
    pipe, directory = tiny
    assert tiny_preset(directory).families == TRAIN_FAMILIES
    save_tiny(pipe, tmp_path / "every", families=tuple(FAMILIES))
    assert tiny_preset(tmp_path / "every").families == tuple(FAMILIES)
    meta = tmp_path / "every" / "animax.json"
    written = json.loads(meta.read_text())
    for bad in ([], ["dragon"], "laptop"):
        meta.write_text(json.dumps({**written, "families": bad}))
        with pytest.raises(WeightsError, match="expected families"):
            tiny_preset(tmp_path / "every")


def test_tiny_records_whether_it_knows_procedural_creatures_alone(tiny, tmp_path):
    """A model trained on procedural creatures animates rigs through their counterpart creature; one
    trained on a library of rigged assets is shown the rigs themselves."""
    pipe, directory = tiny
    assert tiny_preset(directory).retargets and tiny_preset(TINY_WEIGHTS).retargets
    save_tiny(pipe, tmp_path / "library", procedural=False)
    assert not tiny_preset(tmp_path / "library").retargets
    meta = tmp_path / "library" / "animax.json"
    written = json.loads(meta.read_text())
    meta.write_text(json.dumps({k: v for k, v in written.items() if k != "procedural"}))
    assert tiny_preset(tmp_path / "library").retargets  # written when every model was procedural
    meta.write_text(json.dumps({**written, "procedural": "no"}))
    with pytest.raises(WeightsError, match="expected procedural"):
        tiny_preset(tmp_path / "library")


def test_tiny_records_whether_it_trained_on_its_cast(tiny, tmp_path):
    pipe, directory = tiny
    assert not tiny_preset(directory).cast  # absent: trained before the cast existed
    assert tiny_preset(TINY_WEIGHTS).cast  # the shipped model's last stage drew half its clips from the cast
    save_tiny(pipe, tmp_path / "cast", cast=True)
    assert tiny_preset(tmp_path / "cast").cast
    meta = tmp_path / "cast" / "animax.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "cast": 1}))
    with pytest.raises(WeightsError, match="expected cast"):
        tiny_preset(tmp_path / "cast")


def test_build_tiny_pipeline_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = build_tiny_pipeline(0), build_tiny_pipeline(0), build_tiny_pipeline(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same_weights(a.transformer, b.transformer)
    assert not torch.equal(a.transformer.proj_out.weight, c.transformer.proj_out.weight)


@pytest.mark.parametrize("name", TINY_FILES)
def test_tiny_missing_file_is_named(tiny, tmp_path, name):
    shutil.copytree(tiny[1], tmp_path, dirs_exist_ok=True)
    (tmp_path / name).unlink()
    expected = f"{tmp_path / name} is missing: expected a tiny AnimaX model directory"
    with pytest.raises(WeightsError, match=re.escape(expected)):
        load_tiny(tmp_path)


@pytest.mark.parametrize("folder", ["transformer", "vae"])
def test_tiny_truncated_weights_are_named(tiny, tmp_path, folder):
    shutil.copytree(tiny[1], tmp_path, dirs_exist_ok=True)
    weights = tmp_path / folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(WeightsError, match=re.escape(f"{weights} is not a complete safetensors file")):
        load_tiny(tmp_path)


@pytest.mark.parametrize("change, message", [
    (dict(num_layers=TINY_TRANSFORMER["num_layers"] + 1), "does not match .*missing keys"),  # diffusers only warns
    (dict(ffn_dim=48), "does not load as the AnimaXTransformer3DModel"),
    (dict(_class_name="WanTransformer3DModel"), "expected _class_name 'AnimaXTransformer3DModel'"),
])
def test_tiny_config_that_does_not_fit_the_weights(tiny, tmp_path, change, message):
    shutil.copytree(tiny[1], tmp_path, dirs_exist_ok=True)
    config = tmp_path / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    with pytest.raises(WeightsError, match=message):
        load_tiny(tmp_path)


def test_tiny_metadata_is_checked(tiny, tmp_path):
    shutil.copytree(tiny[1], tmp_path, dirs_exist_ok=True)
    meta = tmp_path / "animax.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "preset": "full"}))
    with pytest.raises(WeightsError, match=re.escape(f"{meta}: expected preset 'tiny', found 'full'")):
        load_tiny(tmp_path)
    meta.write_text("{")
    with pytest.raises(WeightsError, match=re.escape(f"{meta} is not a readable JSON file")):
        load_tiny(tmp_path)


def test_the_shipped_tiny_model_fits_the_20_mb_budget_and_loads_with_its_prompt_guidance():
    assert sum((TINY_WEIGHTS / name).stat().st_size for name in TINY_FILES) <= 20_000_000  # issue 7's budget
    pipe = load_tiny(TINY_WEIGHTS, text_encoder=False)
    assert pipe.config.text_guidance_scale == 2.0  # the guidance docs/quality.md scores it with
    assert all(p.dtype == torch.float32 for p in pipe.transformer.parameters())


# --- full -----------------------------------------------------------------------------------------
def is_adapter_parameter(name):
    return "lora_" in name or ".attn_mv." in name or ".norm_mv." in name or \
        name.startswith(("patch_embedding.", "modality_embedder."))


def forward(transformer):
    g = torch.Generator().manual_seed(0)
    return transformer(torch.randn(1, 4, 4, 6, 8, 8, generator=g), torch.tensor([500.0]),
                       torch.randn(1, 8, 32, generator=g), torch.randn(1, 4, 6, 8, 8, generator=g)).sample


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A tiny stand-in for Wan2.1-T2V-1.3B in diffusers' layout, and a trained-looking adapter."""
    root = tmp_path_factory.mktemp("full")
    wan = save_wan_stand_in(root / "wan")

    transformer = AnimaXTransformer3DModel.from_wan(wan).eval()
    lora = make_lora_config(rank=4, alpha=8)
    transformer.add_adapter(lora)
    with torch.no_grad():  # as after training: the zero-initialised parts (LoRA B, attn_mv out) are not zero
        for name, parameter in transformer.named_parameters():
            if is_adapter_parameter(name):
                parameter.normal_(std=0.1)
    save_adapter(transformer, root / "adapter", lora)
    return root / "wan", root / "adapter", transformer


@pytest.fixture
def full_copy(full, tmp_path):
    wan_dir, adapter_dir = tmp_path / "wan", tmp_path / "adapter"
    shutil.copytree(full[0], wan_dir)
    shutil.copytree(full[1], adapter_dir)
    return wan_dir, adapter_dir


def test_adapter_holds_only_the_new_modules_and_lora(full):
    _, adapter_dir, transformer = full
    assert sorted(p.name for p in adapter_dir.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    state = load_file(adapter_dir / ADAPTER_WEIGHTS)
    assert all(is_adapter_parameter(key) for key in state) and not any("base_layer" in key for key in state)
    for key in ["patch_embedding.weight", "modality_embedder.linear_2.bias", "blocks.1.attn_mv.to_out.0.weight",
                "blocks.0.norm_mv.weight", "blocks.0.attn1.to_q.lora_A.weight", "blocks.1.ffn.net.2.lora_B.weight"]:
        assert key in state
    assert not any("attn_mv" in key and "lora" in key for key in state)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    assert config["lora"]["r"] == 4 and config["lora"]["lora_alpha"] == 8
    assert config["base_geometry"]["num_layers"] == 2 and config["ray_channels"] == 6


def test_load_full_reproduces_the_saved_transformer(full):
    wan_dir, adapter_dir, saved = full
    pipe = load_full(wan_dir, adapter_dir, dtype=torch.float32)
    assert_same_weights(saved, pipe.transformer)
    with torch.no_grad():
        torch.testing.assert_close(forward(pipe.transformer), forward(saved), rtol=0, atol=0)
        before = forward(pipe.transformer)
        pipe.transformer.blocks[0].attn1.to_q.lora_B["default"].weight.add_(0.5)  # LoRA is live, not merged away
        assert not torch.equal(forward(pipe.transformer), before)
    assert pipe.scheduler.config.shift == 3.0 and pipe.config.max_sequence_length == 512
    assert generate(pipe, steps=1).shape == (4, FRAMES, SIZE, SIZE, 3)


def test_load_full_casts_like_diffusers(full):
    pipe = load_full(full[0], full[1])  # bfloat16 by default
    block = pipe.transformer.blocks[0]
    assert block.attn1.to_q.base_layer.weight.dtype == torch.bfloat16
    assert block.attn1.to_q.lora_A["default"].weight.dtype == torch.bfloat16
    assert block.norm_mv.weight.dtype == block.scale_shift_table.dtype == torch.float32
    assert pipe.transformer.modality_embedder.linear_1.weight.dtype == torch.float32
    assert pipe.text_encoder.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    assert generate(pipe, steps=1).shape == (4, FRAMES, SIZE, SIZE, 3)  # the mixed dtypes run together


@pytest.mark.parametrize("name", WAN_FILES + [f"adapter:{ADAPTER_CONFIG}", f"adapter:{ADAPTER_WEIGHTS}"])
def test_full_missing_file_is_named(full_copy, name):
    wan_dir, adapter_dir = full_copy
    path = adapter_dir / name.split(":")[1] if name.startswith("adapter:") else wan_dir / name
    path.unlink()
    with pytest.raises(WeightsError, match=re.escape(str(path)) + ".* is missing: expected "):
        load_full(wan_dir, adapter_dir)


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("target, edit, message", [
    ("adapter/adapter_config.json", lambda c: c["base_geometry"].update(num_layers=30),
     "was trained for another base transformer than .*num_layers=30 but the base has num_layers=2"),
    ("adapter/adapter_config.json", lambda c: c["base_geometry"].update(attention_head_dim=128), "attention_head_dim"),
    ("adapter/adapter_config.json", lambda c: c.update(format_version=2), "expected format_version 1, found 2"),
    ("wan/transformer/config.json", lambda c: c.update(image_dim=1280), "image-to-video"),
    ("wan/text_encoder/config.json", lambda c: c.update(model_type="t5"), "expected model_type 'umt5'"),
])
def test_full_mismatched_config_is_named(full_copy, target, edit, message):
    path = full_copy[0].parent / target
    edit_json(path, edit)
    with pytest.raises(WeightsError, match=re.escape(str(path)) + ".*" + message):
        load_full(*full_copy)


def test_adapter_weights_must_fit_its_config(full_copy):
    wan_dir, adapter_dir = full_copy
    config, weights = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    edit_json(config, lambda c: c["lora"].update(r=8))  # weights were saved with rank 4
    with pytest.raises(WeightsError, match=re.escape(f"{weights} does not fit") + ".*lora_A.weight has shape"):
        load_full(wan_dir, adapter_dir)
    edit_json(config, lambda c: c["lora"].update(r=4))
    state = load_file(weights)
    state["patch_embedding.weight"] = state["patch_embedding.weight"][:, :4].contiguous()
    save_file(state, weights)
    with pytest.raises(WeightsError, match=re.escape(f"{weights} does not fit") + ".*patch_embedding.weight has shape"):
        load_full(wan_dir, adapter_dir)
    weights.write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match=re.escape(f"{weights} is not a complete safetensors file")):
        load_full(wan_dir, adapter_dir)


def test_truncated_wan_weights_are_named(full_copy):
    weights = full_copy[0] / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=re.escape(f"{weights} is not a complete safetensors file")):
        load_full(*full_copy)


def test_save_adapter_refuses_lora_outside_the_base_blocks(tmp_path):
    transformer = AnimaXTransformer3DModel.from_wan(WanTransformer3DModel(**WAN))
    with pytest.raises(ValueError, match="no LoRA adapter"):
        save_adapter(transformer, tmp_path, make_lora_config(4))
    everywhere = make_lora_config(4)
    everywhere.target_modules = {"to_q"}  # also matches attn_mv.to_q
    transformer.add_adapter(everywhere)
    with pytest.raises(ValueError, match=r"not \['blocks.0.attn_mv.to_q'"):
        save_adapter(transformer, tmp_path, everywhere)


# --- offline --------------------------------------------------------------------------------------
def test_loading_uses_no_network(tiny, full, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading weights")

    # The hub helpers are also imported by name into diffusers and transformers modules: patch every copy.
    for name in ("hf_hub_download", "snapshot_download", "model_info", "list_repo_files"):
        original = getattr(huggingface_hub, name)
        for module in list(sys.modules.values()):
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert load_tiny(tiny[1]).transformer is not None
    assert load_full(full[0], full[1], dtype=torch.float32).transformer is not None


@pytest.mark.parametrize("compression, latent_frames", [(4, 5), (2, 9)])
def test_tiny_vae_config_compresses_time_as_it_says(compression, latent_frames):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**tiny_vae_config(base_dim=8, z_dim=4, temporal_compression=compression)).eval()
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 17, 16, 16)).latent_dist.mode()
        assert latents.shape == (1, 4, latent_frames, 4, 4)
        assert vae.decode(latents).sample.shape == (1, 3, 17, 16, 16)  # every frame comes back
    with pytest.raises(ValueError, match="temporal_compression must be 2 or 4, got 3"):
        tiny_vae_config(temporal_compression=3)
