"""A tiny random stand-in for Wan2.1-T2V-1.3B in diffusers' layout, built offline (no download).

Shared by the tests of loading the full preset and of training its adapter.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

WAN = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=32, freq_dim=32,
           ffn_dim=32, num_layers=2)
WAN_FILES = ["model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
             "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json", "tokenizer/tokenizer.json"]


def t5_tokenizer():
    """A T5 (sentencepiece-style Unigram) tokenizer built from a vocabulary in code, no download."""
    words = "the fox pounces forward a chest opens its lid and waves".split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in words]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0)


def save_wan_stand_in(directory: Path, seed: int = 0) -> WanTransformer3DModel:
    """Write the stand-in Wan directory (4x VAE like the tiny preset's, so 32 px -> 8x8 latents) and
    return its transformer."""
    torch.manual_seed(seed)
    wan = WanTransformer3DModel(**WAN)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4, scale_factor_temporal=4,
                           scale_factor_spatial=4)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    WanPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=wan,
                scheduler=scheduler).save_pretrained(directory)
    return wan
