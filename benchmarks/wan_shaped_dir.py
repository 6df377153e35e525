"""A Wan2.1-T2V-1.3B-shaped diffusers directory with random weights, standing in for the real one.

    python benchmarks/wan_shaped_dir.py OUT [--device cuda]

The layout, configs and tensor shapes of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``: ``model_index.json``;
``transformer/`` (30 blocks of 1536, 12 heads, feed-forward 8960, 16 latent channels, 4096-d text:
1.4 B parameters) and ``text_encoder/`` (UMT5-XXL's encoder: 24 layers of 4096, 64 heads of 64,
gated-GELU feed-forward 10240, 256,384 embeddings: 5.7 B) as float32 safetensors in shards of at
most 5 GB with their index, as the real ones are (2 and 5 shards); ``vae/`` (``AutoencoderKLWan``'s
defaults, which are Wan2.1's: z_dim 16, base_dim 96; float32); ``scheduler/`` (UniPC, flow shift
3.0); ``tokenizer/`` (a T5 tokenizer of UMT5's size, 256,000 pieces and 300 extra ids, built
offline: the procedural prompts' words and ASCII characters, the rest filler pieces that never
match). About 29 GB on disk.

Each model draws its weights with its own initialisation on ``--device`` (a GPU draws UMT5-XXL in
seconds); saving copies a shard at a time to the CPU, so RAM holds about one 5 GB shard. What the
real directory has and this one has not: trained weights, and ``tokenizer/spiece.model`` (the
tokenizer loads from ``tokenizer.json``).
"""

from __future__ import annotations

import argparse
import json
import string
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from pipeline_gpu import UMT5_XXL  # beside this script
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformer_gpu import WAN_1_3B
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

from backend.data.motions import all_prompts

# The real text encoder's config beyond the shapes (as its config.json records them).
UMT5_CONFIG = dict(UMT5_XXL, dense_act_fn="gelu_new", tie_word_embeddings=False, scalable_attention=True,
                   architectures=["UMT5EncoderModel"])
UMT5_PIECES, UMT5_EXTRA_IDS = 256_000, 300  # sentencepiece pieces (ids 0-3: pad, eos, bos, unk) + <extra_id_N>
SHARD_SIZE = "5GB"
MODEL_INDEX = {
    "_class_name": "WanPipeline", "_diffusers_version": "0.33.0.dev0",
    "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
}


def umt5_tokenizer(pieces: int = UMT5_PIECES, extra_ids: int = UMT5_EXTRA_IDS) -> T5TokenizerFast:
    """A sentencepiece-style (Unigram) tokenizer of ``pieces`` pieces plus ``extra_ids`` sentinel tokens,
    built from a vocabulary in code: the procedural prompts tokenise into words, other text into
    characters, and the vocabulary has UMT5's size."""
    text = " ".join(all_prompts())
    words = sorted(set(text.split()))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in words]
    characters = set(text.replace(" ", "")) | set(string.ascii_letters + string.digits + string.punctuation + "▁")
    vocab += [(c, -5.0) for c in sorted(characters)]
    if len(vocab) > pieces:
        raise ValueError(f"{pieces} pieces cannot hold the prompts' {len(vocab)} words and characters")
    vocab += [(f"<filler_{i}>", -20.0) for i in range(pieces - len(vocab))]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=3))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=extra_ids)


def write_wan_dir(out: str | Path, device: str | torch.device = "cpu", transformer: dict | None = None,
                  text_encoder: dict | None = None, vae: dict | None = None, pieces: int = UMT5_PIECES,
                  extra_ids: int = UMT5_EXTRA_IDS, shard_size: int | str = SHARD_SIZE, seed: int = 0) -> dict:
    """Write the directory into ``out``; the keyword dicts override parts of each config (tests use
    small ones). Returns the seconds each part took."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    seconds = {}
    parts = (  # the VAE is one file, as the real one (0.5 GB)
        ("text_encoder", lambda: UMT5EncoderModel(UMT5Config(**{**UMT5_CONFIG, **(text_encoder or {})})), shard_size),
        ("transformer", lambda: WanTransformer3DModel(**{**WAN_1_3B, **(transformer or {})}), shard_size),
        ("vae", lambda: AutoencoderKLWan(**(vae or {})), "10GB"),
    )
    for name, build, shard in parts:  # one model at a time on the device
        began = time.time()
        with torch.device(device):
            model = build()
        model.save_pretrained(out / name, max_shard_size=shard, safe_serialization=True)
        del model
        seconds[name] = time.time() - began
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    scheduler.save_pretrained(out / "scheduler")
    umt5_tokenizer(pieces, extra_ids).save_pretrained(out / "tokenizer")
    # Written last, so that a directory holding it is complete.
    (out / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cpu", help="where the weights are drawn (default %(default)s)")
    args = parser.parse_args()
    seconds = write_wan_dir(args.out, args.device)
    print(f"wrote {args.out}: " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()))


if __name__ == "__main__":
    main()
