"""The full-size training benchmark's tools at a small size: the Wan2.1-shaped directory writer and
the samples it trains on (benchmarks/wan_shaped_dir.py, benchmarks/full_training_gpu.py)."""

import json
import re
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the scripts import each other

import backend.train.__main__ as train  # noqa: E402
from backend.model.loading import load_wan  # noqa: E402
from full_training_gpu import make_samples  # noqa: E402
from wan_shaped_dir import write_wan_dir  # noqa: E402

SMALL = dict(transformer=dict(num_layers=2, num_attention_heads=2, attention_head_dim=12, ffn_dim=32, text_dim=32,
                              freq_dim=32),
             text_encoder=dict(vocab_size=1024, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
             vae=dict(base_dim=8), pieces=900, extra_ids=100)


def test_wan_shaped_directory_has_the_real_layout_and_loads_as_wan(tmp_path):
    wan = tmp_path / "wan"
    write_wan_dir(wan, **SMALL, shard_size="60KB")  # small shards: both sharded models are, as the real ones
    files = sorted(str(p.relative_to(wan)) for p in wan.rglob("*") if p.is_file())
    shards = {"transformer": r"transformer/diffusion_pytorch_model-0000\d-of-0000(\d)\.safetensors",
              "text_encoder": r"text_encoder/model-0000\d-of-0000(\d)\.safetensors"}
    counts = {name: {re.fullmatch(pattern, f)[1] for f in files if re.fullmatch(pattern, f)}
              for name, pattern in shards.items()}
    assert all(len(n) == 1 and int(*n) >= 2 for n in counts.values()), files
    assert [f for f in files if not any(re.fullmatch(p, f) for p in shards.values())] == [
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.safetensors.index.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors.index.json", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors"]
    index = json.loads((wan / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["tokenizer"] == ["transformers", "T5TokenizerFast"]

    transformer, vae, text_encoder, tokenizer = load_wan(wan, torch.float32)
    # What the small config leaves alone is Wan2.1's and UMT5-XXL's.
    config = transformer.config
    assert (tuple(config.patch_size), config.qk_norm, config.cross_attn_norm, config.in_channels) == \
        ((1, 2, 2), "rms_norm_across_heads", True, 16)
    assert (vae.config.z_dim, vae.config.scale_factor_spatial, vae.config.scale_factor_temporal) == (16, 8, 4)
    assert (text_encoder.config.feed_forward_proj, text_encoder.config.relative_attention_num_buckets) == \
        ("gated-gelu", 32)
    assert len(tokenizer) == 1000  # pieces and extra ids, as UMT5's 256,000 and 300
    ids = tokenizer("the fox pounces forward").input_ids
    assert max(ids) < 900 and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the fox pounces forward"  # no unknown pieces
    with torch.no_grad():
        embedded = text_encoder(torch.tensor([ids])).last_hidden_state
    assert embedded.shape == (1, len(ids), 32) and embedded.isfinite().all()


def test_benchmark_samples_fit_the_full_preset_path(tmp_path):
    path = tmp_path / "samples.npz"
    make_samples(path, clips=1, size=32, frames=5, device="cpu")
    samples = train.load_dataset(path, AutoencoderKLWan(base_dim=8), 2, "full").load_all()  # Wan's 8x / 4x
    assert samples.rgb.shape == (1, 4, 5, 32, 32, 3) and samples.pose_rest.shape == (1, 4, 32, 32, 3)
