"""``python -m backend.train``: training both presets, resumable after a stop.

    python -m backend.train text-cache [--dataset DATASET]  # once, where MiniLM is installed
    python -m backend.train run --out runs/tiny [--dataset DATASET] [--resume]  # vae -> joint -> multiview
    python -m backend.train run --preset full --wan WAN_DIR --dataset DATASET --out runs/full [--resume]
    python -m backend.train recipe backend/train/recipes/tiny.json --out runs/tiny  # the shipped model, stage by stage

A tiny run writes ``OUT/model`` (a tiny-model directory that ``load_tiny`` reads); a full run writes
``OUT/adapter`` (an AnimaX adapter that ``load_full(WAN_DIR, OUT/adapter)`` reads). Both write
``OUT/loss.png``, ``OUT/training.json`` (settings, data size, steps and seconds per stage) and
checkpoints.

``accelerate launch --num_processes N -m backend.train run ...`` runs the same recipe data-parallel
on N GPUs: each step's batch is split over the processes (docs/training.md, "Several GPUs").
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from diffusers import AutoencoderKLWan

from backend.data.dataset import Samples, SampleShards, build_samples
from backend.data.motions import all_prompts
from backend.data.rig_world import FAMILIES, HELDOUT_FAMILIES, TRAIN_FAMILIES
from backend.model.adapter import make_lora_config, save_adapter
from backend.model.checked_files import DIFFUSERS_WEIGHTS
from backend.model.loading import load_wan, save_tiny, tiny_transformer
from backend.model.pipeline_animax import AnimaXPipeline
from backend.model.presets import FULL, PRESETS, TINY, TINY_VAE, is_view_size
from backend.model.samplers import make_scheduler
from backend.model.transformer_animax import AnimaXTransformer3DModel
from backend.multi_gpu import turn_multicast_off

from .batches import LOADER_WORKERS, step_batches, step_seed
from .latent_shards import LATENTS, LatentShards, encode_library, file_key
from .latents import LatentSet, encode_samples, latent_stats, to_video
from .loop import batch_part, save_loss_plot, train_stage
from .recipe import RecipeError, changed_settings, load_recipe
from .stages import POSE_WEIGHT, REST_TEMPLATE_PROBABILITY, TEXT_DROP, flow_loss, trainable_parameters, vae_loss
from .text import TextCache, build_text_cache

DEFAULT_TEXT_CACHE = Path(__file__).with_name("text_cache.safetensors")
# Per-preset defaults of the diffusion stages. The tiny preset's are the shipped model's settings (its
# last stage in backend/train/recipes/tiny.json), but for the step counts and learning rate, which the
# recipe sets stage by stage: these are a run from scratch's. The full preset's are starting points for a
# LoRA on a 1.3B base (one H100: a few single views, one four-view sample per step) with the paper's
# conditioning; no full run was made yet.
STAGE_DEFAULTS = {
    "tiny": dict(joint_steps=8000, batch=256, lr=5e-4, multiview_steps=3000, multiview_batch=32, multiview_lr=3e-4,
                 rest_template_probability=REST_TEMPLATE_PROBABILITY, text_drop=TEXT_DROP, pose_weight=POSE_WEIGHT),
    "full": dict(joint_steps=2000, batch=4, lr=1e-4, multiview_steps=1000, multiview_batch=1, multiview_lr=1e-4,
                 rest_template_probability=0.5, text_drop=0.1, pose_weight=1.0),
}
# The shipped tiny model's transformer depth (a kept transformer keeps its own unless --blocks says more),
# and the prompt guidance its animax.json records.
TINY_BLOCKS = 10
TEXT_GUIDANCE_SCALE = 2.0
# Stage vae trains on windows of 9 frames (1 + 2 latent frames at 4x, 1 + 4 at 2x) and 32 px: a quarter of a
# view, half the frames, an eighth of the cost of whole clips.
VAE_CROP_FRAMES, VAE_CROP_SIZE = 9, 32
# How long processes wait for each other, above all for the main process building and encoding the
# dataset (the others then load its cache); the default 10 or 30 minutes is too short for full data.
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


def text_cache_main(args) -> None:
    """Encode the procedural prompts, the captions of every ``--dataset`` and what ``--out`` holds."""
    from backend.model.loading import build_tiny_pipeline

    kept = TextCache(args.out).prompts if Path(args.out).is_file() else []
    captions = [caption for path in args.dataset for caption in SampleShards(path).prompts]
    procedural = all_prompts()
    prompts = list(dict.fromkeys(kept + procedural + captions))  # ordered, without repeats
    build_text_cache(build_tiny_pipeline(), prompts, args.out)
    print(f"wrote {len(prompts)} prompt embeddings to {args.out} "
          f"({len(set(captions) - set(procedural))} dataset captions)")


def load_dataset(path: Path, vae, patch_size: int, preset: str) -> SampleShards:
    """``animax dataset``'s samples (a dataset folder or one samples file), checked against the VAE's
    compression and the patch size."""
    samples = SampleShards(path)
    frames, size = samples.shape[1], samples.shape[2]
    multiple = vae.config.scale_factor_spatial * patch_size
    step = vae.config.scale_factor_temporal
    problems = ([f"its images are {size} px, not a multiple of {multiple}"] if size % multiple else []) + \
               ([f"its clips have {frames} frames, not 1 + {step}k"] if (frames - 1) % step else [])
    if problems:
        default = PRESETS[preset]
        raise SystemExit(f"{path} does not fit the {preset} preset's VAE and patch size: {'; '.join(problems)}. "
                         f"Build it again with `animax dataset ASSETS --out DIR --size {default.size} "
                         f"--frames {default.num_frames}` (or another multiple of {multiple} and 1 + {step}k)")
    return samples


def cached_latents(out: Path, key: dict, device, encode) -> tuple[LatentSet, dict]:
    """``encode()``'s (latents, description of the data), kept in ``OUT/latents.pt`` under ``key``, so
    that a resumed run skips building and encoding the procedural clips when nothing they depend on
    changed. The file is replaced, never rewritten in place: a recipe's stages share it through hard
    links."""
    cache = out / "latents.pt"
    state = PartialState()
    with state.main_process_first():  # several processes: the main one encodes, the others load its cache
        if cache.is_file():
            saved = torch.load(cache, map_location=device)
            if saved.pop("key") == key:
                print(f"latents: reusing {cache}", flush=True)
                return LatentSet(**saved.pop("latents")), saved["description"]
        data, description = encode()
        if state.is_main_process:
            partial = cache.with_suffix(".partial")
            torch.save({"key": key, "latents": vars(data), "description": description}, partial)
            partial.replace(cache)
        return data, description


def streamed_latents(out: Path, key: dict, shards: SampleShards, encode, source: str) -> tuple[LatentShards, dict]:
    """A library's latents in ``OUT/latents``, one latent shard per shard of ``shards``, each encoded
    with ``encode(samples, first)`` unless an earlier run (or a stopped one) encoded it under ``key``;
    returns them to be streamed, and the description of the data. The main process encodes."""
    state = PartialState()
    if state.is_main_process:
        encode_library(shards, out / LATENTS, key, encode, describe(shards, source))
    state.wait_for_everyone()
    latents = LatentShards(out / LATENTS)
    return latents, latents.description


def encode_full(args, vae, text_encoder, tokenizer, transformer, device) -> tuple[LatentShards, dict]:
    """The dataset's latents under the frozen Wan VAE and its captions under UMT5, a shard at a time
    (kept in ``OUT/latents``)."""
    shards = load_dataset(Path(args.dataset), vae, transformer.config.patch_size[1], "full")

    @functools.cache
    def pipeline() -> AnimaXPipeline:  # UMT5 goes to the device only where a shard is encoded
        return AnimaXPipeline(tokenizer, text_encoder.to(device), vae.to(device), transformer, make_scheduler(),
                              FULL.max_sequence_length)

    def encode(samples: Samples, first: int) -> LatentSet:
        text = embedded_captions(pipeline(), samples.prompts, device)
        # chunk=1: full-size videos go through the VAE one at a time
        return encode_samples(pipeline().vae, samples, text, device, seed=args.seed, chunk=1, first=first)
    key = dict(wan=str(Path(args.wan).resolve()), seed=args.seed)
    return streamed_latents(Path(args.out), key, shards, encode, str(args.dataset))


@torch.no_grad()
def embedded_captions(pipeline: AnimaXPipeline, captions: list[str], device) -> torch.Tensor:
    """(N, L, D) float embeddings of ``captions``, as ``AnimaXPipeline.encode_prompt`` gives at inference
    (FULL's 512 tokens, padding zeroed); each distinct caption encoded once."""
    distinct = sorted(set(captions))
    embedded = torch.cat([pipeline.encode_prompt(caption, device) for caption in distinct]).float()
    return embedded[[distinct.index(caption) for caption in captions]]


def train_diffusion(transformer, data: LatentSet | LatentShards, args, out: Path, device, deadline: float,
                    precision: str, record: dict, losses: dict) -> bool:
    """Stages ``joint`` and ``multiview`` on latents on the device or streamed from shards; whether both
    finished before the deadline."""
    generator = torch.Generator(device)
    if args.compile:  # diffusers' regional compilation: each block compiles once, reused four (or 30) times
        transformer.compile_repeated_blocks(fullgraph=True)

    def diffusion_step(stage, batch, batches):
        part = batch_part(batch)

        def step_fn(model, step):  # every process draws the whole batch and trains on its part
            generator.manual_seed(step_seed(args.seed, step))
            return flow_loss(model, batches(step), stage, generator, part, args.rest_template_probability,
                             args.text_drop, args.pose_weight)
        return step_fn

    for name, steps, batch, lr in (("joint", args.joint_steps, args.batch, args.lr),
                                   ("multiview", args.multiview_steps, args.multiview_batch, args.multiview_lr)):
        if not steps:  # e.g. stage joint alone, to be followed by stage multiview in a later run
            continue
        params = trainable_parameters(transformer, name)
        batches = step_batches(data, batch, args.seed, steps, device, args.loader_workers)
        began = time.time()
        try:
            losses[name], done = train_stage(name, transformer, params, diffusion_step(name, batch, batches), steps,
                                             lr, out / "checkpoints" / name, deadline, mixed_precision=precision,
                                             speed=record.setdefault("speed", {}).setdefault(name, {}))
        finally:
            batches.close()
        record["seconds"][name] = time.time() - began
        if not done:
            return False
    return True


def describe(samples: Samples | SampleShards, source: str) -> dict:
    return {"source": source, "clips": len(samples), "views": samples.shape[0], "frames": samples.shape[1],
            "size": samples.shape[2], "families": sorted(set(samples.families)),
            "motions": sorted(set(samples.motions)), "prompts": len(set(samples.prompts))}


def tiny_samples(args, vae, transformer, text_cache: TextCache, device) -> Samples:
    """``--dataset``'s samples (whose captions must be in the text cache) or procedural clips."""
    if not args.dataset:
        return build_samples(args.samples, args.seed, args.size or TINY.size, TINY.num_frames, args.families,
                             device=str(device), processes=args.processes, cast_share=args.cast_share)
    return tiny_dataset(args, vae, transformer, text_cache).load_all()


def tiny_dataset(args, vae, transformer, text_cache: TextCache) -> SampleShards:
    """``--dataset``'s shards for the tiny preset; its captions must be in the text cache."""
    shards = load_dataset(args.dataset, vae, transformer.config.patch_size[1], "tiny")
    unknown = sorted(set(shards.prompts) - set(text_cache.prompts))
    if unknown:
        raise SystemExit(f"{len(unknown)} captions of {args.dataset} are not in {args.text_cache} (e.g. "
                         f"{unknown[0]!r}): add them with `python -m backend.train text-cache --dataset "
                         f"{args.dataset} --out {args.text_cache}` where MiniLM is installed")
    return shards


def train_tiny_vae(vae, args, samples: Samples, out: Path, device, precision: str, deadline: float, record: dict,
                   losses: dict):
    """Stage ``vae`` (on ``vae``, on the device) on single views of both modalities; the trained VAE
    (with its latent statistics) goes to ``OUT/vae`` when the stage finishes, else None."""
    videos = {m: torch.from_numpy(getattr(samples, m)).to(device) for m in ("rgb", "pose")}
    n, views = samples.rgb.shape[:2]
    part = batch_part(args.vae_batch)

    frames, size = samples.rgb.shape[2:4]
    crop_frames, crop_size = min(VAE_CROP_FRAMES, frames), min(VAE_CROP_SIZE, size)

    def vae_step(model, step):  # every process draws the whole batch and trains on its part
        g = np.random.default_rng((args.seed, step))
        index, view = g.integers(n, size=args.vae_batch)[part], g.integers(views, size=args.vae_batch)[part]
        is_pose = torch.from_numpy(g.random(args.vae_batch)[part] < 0.5).to(device)
        # One window of the clips: the VAE is convolutional in space and causal in time, so a crop
        # teaches it what the whole does, at a fraction of the cost.
        t, y, x = (int(g.integers(extent - crop + 1)) for extent, crop in
                   ((frames, crop_frames), (size, crop_size), (size, crop_size)))
        window = (index, view, slice(t, t + crop_frames), slice(y, y + crop_size), slice(x, x + crop_size))
        pick = torch.where(is_pose.view(-1, 1, 1, 1, 1), videos["pose"][window], videos["rgb"][window])
        return vae_loss(model, to_video(pick, device), is_pose)

    began = time.time()
    losses["vae"], finished = train_stage("vae", vae, list(vae.parameters()), vae_step, args.vae_steps, args.vae_lr,
                                          out / "checkpoints" / "vae", deadline, mixed_precision=precision,
                                          speed=record.setdefault("speed", {}).setdefault("vae", {}))
    record["seconds"]["vae"] = time.time() - began
    if not finished:
        return None
    mean, std = latent_stats(vae, samples, device)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    state = PartialState()
    if state.is_main_process:
        vae.cpu().save_pretrained(out / "vae", safe_serialization=True)
    state.wait_for_everyone()  # the others read the saved file's key next
    return vae.to(device)


def families_list(text: str) -> tuple[str, ...]:
    """``--families``: procedural family names, comma-separated."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{','.join(unknown) or 'none given'}: name families of "
                                         f"{','.join(FAMILIES)}")
    return names


CAST_SHARE = 0.5
"""Share of the procedural clips drawn from the cast: the shipped model's last stage."""


def share(text: str) -> float:
    """A share in [0, 1] (``--cast-share``)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a share between 0 and 1")
    return value


def trained_part(flag: str, model_dir: Path, part: str) -> Path:
    """``model_dir / part`` of a tiny model directory given to ``flag``; a clear stop when it is not one."""
    path = Path(model_dir) / part
    if not (path / "config.json").is_file():
        raise SystemExit(f"{flag} {model_dir}: {path / 'config.json'} is missing; it takes a tiny model "
                         f"directory written by training (e.g. backend/model/weights/tiny)")
    return path


def kept_transformer(model_dir: Path, z_dim: int, pooled_text: bool = False,
                     blocks: int | None = None, rgb_video: bool | None = None) -> AnimaXTransformer3DModel:
    """The trained transformer of a tiny model directory, for ``--transformer-from``: training goes on
    from it (new stages, new data or switches) instead of from random weights. ``pooled_text`` adds the
    pooled-prompt embedding where it has none and ``blocks`` deepens it to that many blocks, each new
    part at its neutral start, so the model starts as the kept one; ``rgb_video`` (where not None)
    switches the RGB video it generates on or off."""
    path = trained_part("--transformer-from", model_dir, "transformer")
    transformer = AnimaXTransformer3DModel.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
    if transformer.config.out_channels != z_dim:
        raise SystemExit(f"--transformer-from {model_dir}: its transformer denoises latents of "
                         f"{transformer.config.out_channels} channels, the VAE's have {z_dim}; give --vae-from the "
                         "same directory")
    try:
        transformer = transformer.deepened(blocks or transformer.config.num_layers)
    except ValueError as error:  # fewer blocks than it has: say so in the flags' terms
        raise SystemExit(f"--blocks {blocks}: the transformer of --transformer-from {model_dir} has "
                         f"{transformer.config.num_layers} blocks; a kept transformer only gains blocks") from error
    transformer = transformer.with_pooled_text() if pooled_text else transformer
    return transformer if rgb_video is None else transformer.with_rgb_video(rgb_video)


def run_tiny(args, out: Path, device, precision: str, deadline: float, record: dict, losses: dict) -> bool:
    """Stage ``vae`` (unless ``--vae-from`` gives a trained one), then the diffusion stages on the
    dataset's latents, which are encoded into ``OUT`` once the VAE is final: procedural clips into
    ``OUT/latents.pt``, held on the device; a ``--dataset`` into the shards of ``OUT/latents``, streamed.
    With ``--joint-steps 0 --multiview-steps 0`` only the VAE trains (to score it with ``animax eval
    --oracle vae``)."""
    text_cache = TextCache(args.text_cache)
    # The kept VAE, or this run's own, which is OUT/vae once its stage ends.
    vae_dir = trained_part("--vae-from", args.vae_from, "vae") if args.vae_from else out / "vae"
    trained = (vae_dir / "config.json").is_file()
    if trained:
        vae = AutoencoderKLWan.from_pretrained(vae_dir, local_files_only=True, torch_dtype=torch.float32).to(device)
    else:
        torch.manual_seed(args.seed)
        vae = AutoencoderKLWan(**TINY_VAE).to(device)
    torch.manual_seed(args.seed)
    if args.blocks is not None and args.blocks < 1:
        raise SystemExit(f"--blocks {args.blocks}: a transformer needs at least one block")
    if args.transformer_from:
        transformer = kept_transformer(args.transformer_from, vae.config.z_dim, args.pooled_text,
                                       args.blocks, args.rgb_video).to(device)
    else:
        transformer = tiny_transformer(vae.config.z_dim, args.pooled_text, args.blocks or TINY_BLOCKS,
                                       bool(args.rgb_video)).to(device)

    def build() -> Samples:
        began = time.time()
        samples = tiny_samples(args, vae, transformer, text_cache, device)
        record["seconds"]["dataset"] = time.time() - began
        print(f"dataset: {len(samples)} clips in {record['seconds']['dataset']:.0f} s", flush=True)
        return samples

    def encode(samples: Samples, first: int = 0) -> LatentSet:  # all clips, or a shard's
        began = time.time()
        data = encode_samples(vae, samples, text_cache[samples.prompts], device, seed=args.seed, first=first)
        record["seconds"]["encode"] = record["seconds"].get("encode", 0.0) + time.time() - began
        return data

    def encoded(clips: Samples | None) -> tuple[LatentSet, dict]:  # procedural clips, built unless stage vae did
        clips = build() if clips is None else clips
        return encode(clips), describe(clips, "procedural")

    # What the saved model records: a library's clips are drawn in the training families' colours.
    samples, size, families = None, args.size or TINY.size, args.families or TRAIN_FAMILIES
    if not trained:  # the dataset's size checks use the new VAE's config
        samples = build()
        size = samples.shape[2]
        vae = train_tiny_vae(vae, args, samples, out, device, precision, deadline, record, losses)
        if vae is None:
            return False
    finished = True
    if args.joint_steps or args.multiview_steps:
        key = dict(seed=args.seed, vae=file_key(vae_dir / DIFFUSERS_WEIGHTS))
        if args.dataset:  # a library: its latents streamed from shards on disk
            samples = None  # the clips stage vae trained on: the encode reads a shard at a time
            shards = tiny_dataset(args, vae, transformer, text_cache)
            size = shards.shape[2]
            data, record["data"] = streamed_latents(out, key, shards, encode, str(args.dataset))
        else:  # procedural clips, built here: a few thousand small ones, held on the device
            key["source"] = dict(procedural=args.samples, seed=args.seed, size=size, families=list(families))
            if args.cast_share:  # absent at 0, so that latents encoded before the cast existed still fit
                key["source"]["cast_share"] = args.cast_share
            data, record["data"] = cached_latents(out, key, device, lambda: encoded(samples))
            samples = None  # free the clips (gigabytes) for training
        finished = train_diffusion(transformer, data, args, out, device, deadline, precision, record, losses)
    if PartialState().is_main_process:
        save_tiny(AnimaXPipeline(None, None, vae.cpu().eval(), transformer.cpu().eval(),
                                 make_scheduler(), TINY.max_sequence_length, args.text_guidance_scale),
                  out / "model", size=size, families=families, procedural=not args.dataset,
                  cast=bool(args.cast_share))
    return finished


def full_transformer(wan, lora_rank: int, seed: int, rgb_video: bool = True):
    """AnimaX on the Wan transformer ``wan`` with a LoRA of ``lora_rank`` on its base blocks, as the full
    preset trains it, generating the RGB video beside the pose video or not (``rgb_video``); returns
    (transformer, the LoRA's config)."""
    torch.manual_seed(seed)  # AnimaX's new layers and the LoRA start the same in every run and process
    transformer = AnimaXTransformer3DModel.from_wan(wan, rgb_video=rgb_video)
    lora = make_lora_config(lora_rank)
    transformer.add_adapter(lora)
    transformer.enable_gradient_checkpointing()  # activations of 4 x 39,600 tokens otherwise exceed a GPU
    return transformer, lora


def run_full(args, out: Path, device, precision: str, deadline: float, record: dict, losses: dict) -> bool:
    if not args.wan or not args.dataset:
        raise SystemExit("--preset full needs --wan (a local diffusers-format Wan2.1-T2V-1.3B directory) and "
                         "--dataset (a folder from `animax dataset ... --size 480 --frames 81`)")
    began = time.time()
    text_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    wan, vae, text_encoder, tokenizer = load_wan(Path(args.wan), text_dtype)
    vae.requires_grad_(False).eval()  # frozen: the full preset trains no VAE stage
    text_encoder.eval()
    transformer, lora = full_transformer(wan, args.lora_rank, args.seed, args.rgb_video is not False)
    del wan  # its weights now live in `transformer`
    record["seconds"]["load"] = time.time() - began

    began = time.time()
    data, record["data"] = encode_full(args, vae, text_encoder, tokenizer, transformer, device)
    del vae, text_encoder  # frozen, and no longer needed: free their memory for training
    if device.type == "cuda":
        torch.cuda.empty_cache()
    record["seconds"]["encode"] = time.time() - began
    print(f"dataset: {len(data)} clips encoded in {record['seconds']['encode']:.0f} s", flush=True)

    finished = train_diffusion(transformer.to(device), data, args, out, device, deadline, precision, record, losses)
    if PartialState().is_main_process:
        save_adapter(transformer, out / "adapter", lora)
    return finished


def with_preset_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the diffusion stages' settings it leaves out set to its preset's defaults."""
    for key, value in STAGE_DEFAULTS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.cast_share is None:  # the cast is a share of procedural clips
        args.cast_share = CAST_SHARE if args.preset == "tiny" and not args.dataset else 0.0
    return args


def process_state() -> PartialState:
    """This process's state: alone, or one of the processes of `accelerate launch` / torchrun. The
    first state fixes the device, so every command starts with this one."""
    turn_multicast_off()  # before the process group starts
    return PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)


def recorded_runs(out: Path) -> list[dict]:
    """The records of the runs into ``out`` (``OUT/training.json``), oldest first."""
    log_file = Path(out) / "training.json"
    if not log_file.is_file():
        return []
    record = json.loads(log_file.read_text())
    # Folders written before the record's key was "runs" keep their runs under "sessions".
    return record["runs"] if "runs" in record else record.get("sessions", [])


def run_main(args) -> bool:
    """``python -m backend.train run``; whether every stage finished (in every process)."""
    with_preset_defaults(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any((out / "checkpoints").glob("*/progress.json")) and not args.resume:
        raise SystemExit(f"{out} holds checkpoints of an earlier run: pass --resume to continue it, "
                         "or choose another --out")
    deadline = time.time() + 60 * args.deadline_min if args.deadline_min else math.inf
    state = process_state()
    if args.size is not None and (args.dataset or args.preset != "tiny" or not is_view_size(args.size)):
        raise SystemExit(f"--size {args.size}: the view size of the tiny preset's procedural clips, a multiple of "
                         "16 pixels; a --dataset keeps its own")
    if args.cast_share and (args.dataset or args.preset != "tiny"):
        raise SystemExit("--cast-share: a share of the tiny preset's procedural clips; a --dataset keeps its own")
    if args.families and (args.dataset or args.preset != "tiny"):
        raise SystemExit("--families: the procedural families of the tiny preset's clips; a --dataset keeps its own")
    trains_vae = args.preset == "tiny" and not args.vae_from
    for flag in ["batch", "multiview_batch"] + (["vae_batch"] if trains_vae else []):
        batch_part(getattr(args, flag), "--" + flag.replace("_", "-"))  # stop now, not after the dataset
    device = state.device if state.device.type == "cuda" else torch.device("cpu")  # not "cpu:N": torch.load refuses it
    precision = "bf16" if device.type == "cuda" else "no"
    record = {"settings": vars(args), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "processes": state.num_processes, "seconds": {}}
    losses: dict[str, list[float]] = {}
    finished = (run_full if args.preset == "full" else run_tiny)(args, out, device, precision, deadline, record,
                                                                  losses)
    if not state.is_main_process:
        return finished
    save_loss_plot(losses, out / "loss.png")
    record["finished"] = finished
    record["steps"] = {name: len(values) for name, values in losses.items()}
    record["final_loss"] = {name: float(np.mean(values[-100:])) for name, values in losses.items() if values}
    runs = recorded_runs(out) + [record]  # one record per invocation, so a resumed run keeps its history
    (out / "training.json").write_text(json.dumps({"runs": runs}, indent=2, default=str) + "\n")
    print(json.dumps({k: record[k] for k in ("seconds", "steps", "final_loss", "finished")}, indent=1))
    if not finished:
        print("not finished: run again with --resume to continue")
    return finished


def main_process_says(value):
    """The main process's ``value``, in every process."""
    if PartialState().num_processes == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]


def recipe_main(args, parser: argparse.ArgumentParser) -> bool:
    """``python -m backend.train recipe``: each stage of the recipe as a ``run`` into ``OUT/<stage>``,
    in order; a stage that finished is skipped and one that was stopped resumes, so the same command
    continues a recipe that a deadline (or a crash) cut. ``OUT/model`` is the last stage's model."""
    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as exc:
        raise SystemExit(str(exc)) from None
    out = Path(args.out)
    planned = []
    for stage in recipe.stages:  # every stage's settings checked before the first trains
        argv = stage.argv(out)
        try:
            settings = with_preset_defaults(parser.parse_args(argv))
        except SystemExit:
            raise SystemExit(f"{args.recipe}: stage {stage.name!r} does not parse as `python -m backend.train "
                             f"{' '.join(argv)}` (above)") from None
        if settings.command != "run":
            raise SystemExit(f"{args.recipe}: stage {stage.name!r} must be a run")
        planned.append((stage, argv, settings))
    deadline = time.time() + 60 * args.deadline_min if args.deadline_min else math.inf
    state = process_state()

    def say(line: str) -> None:  # one process reports
        if state.is_main_process:
            print(line, flush=True)
    trained_here = False  # as `run`, a stage started makes at least one step
    for number, (stage, argv, settings) in enumerate(planned):
        stage_out = out / stage.name
        runs = recorded_runs(stage_out)
        now = json.loads(json.dumps(vars(settings), default=str))
        changed = changed_settings(runs[0]["settings"], now) if runs else []
        if changed:
            raise SystemExit(f"{stage_out} was trained with other settings ({', '.join(changed)}) than stage "
                             f"{stage.name!r} of {args.recipe} gives: choose another --out, or delete {stage_out}")
        if runs and runs[-1]["finished"]:
            say(f"[{stage.name}] finished earlier: {stage_out / 'model'}")
            continue
        if trained_here and main_process_says(time.time() > deadline):  # every process stops, or none
            say(f"deadline reached before stage {stage.name!r}: the same command continues")
            return False
        for name in ("latents.pt", LATENTS):  # the data of an earlier stage, used if its key fits
            encoded = [p for p in (out / s.name / name for s, _, _ in planned[:number]) if p.exists()]
            if state.is_main_process and encoded and not (stage_out / name).exists():
                stage_out.mkdir(parents=True, exist_ok=True)
                linked(encoded[-1], stage_out / name)
        state.wait_for_everyone()
        settings.resume = any((stage_out / "checkpoints").glob("*/progress.json"))
        settings.deadline_min = max(deadline - time.time(), 1e-3) / 60 if deadline < math.inf else 0.0
        say(f"[{stage.name}] python -m backend.train {' '.join(argv)}" + (" --resume" if settings.resume else ""))
        trained_here = True
        if not run_main(settings):
            say(f"stopped in stage {stage.name!r}: the same command continues it")
            return False
    if state.is_main_process:
        model = out / "model"
        if model.exists():
            shutil.rmtree(model)
        shutil.copytree(out / recipe.stages[-1].name / "model", model)
        lineage = {"recipe": str(args.recipe),
                   "stages": [{"name": s.name, "runs": recorded_runs(out / s.name)} for s in recipe.stages]}
        (model / "training.json").write_text(json.dumps(lineage, indent=2) + "\n")
        say(f"recipe finished: {model}")
    state.wait_for_everyone()
    return True


def linked(source: Path, target: Path) -> None:
    """``source`` (a file, or a folder of files) hard-linked at ``target``, or copied on another file system.
    Encoded data is replaced, never rewritten in place, so stages can share its files."""
    if source.is_dir():
        target.mkdir()
        for file in source.iterdir():
            linked(file, target / file.name)
        return
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend.train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cache = sub.add_parser("text-cache", help="precompute the MiniLM embeddings of every procedural prompt "
                                              "(and of the captions of --dataset) for the tiny preset")
    cache.add_argument("--out", type=Path, default=DEFAULT_TEXT_CACHE,
                       help="the cache; prompts it already holds are kept")
    cache.add_argument("--dataset", type=Path, action="append", default=[],
                       help="a dataset (`animax dataset`'s folder, or a samples file) whose captions to add "
                            "(repeatable)")
    run = sub.add_parser("run", help="train a preset: tiny from scratch (vae, joint, multiview); full as a "
                                     "LoRA adapter on a local Wan2.1 (joint, multiview)")
    run.add_argument("--out", required=True)
    run.add_argument("--preset", choices=sorted(STAGE_DEFAULTS), default="tiny")
    run.add_argument("--resume", action="store_true", help="continue the checkpoints in --out")
    run.add_argument("--dataset", type=Path, help="train on this dataset (`animax dataset`'s folder, or a samples "
                                                  "file) instead of procedural clips; required for full")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--loader-workers", type=int, default=LOADER_WORKERS,
                     help="processes that read a --dataset's encoded latents ahead of the diffusion stages "
                          "(0: read in the training process; default %(default)s)")
    tiny = run.add_argument_group("tiny preset")
    tiny.add_argument("--samples", type=int, default=6000, help="procedural clips (4 views each)")
    tiny.add_argument("--families", type=families_list,
                      help="comma-separated procedural families the clips are drawn from (default: "
                           f"{','.join(TRAIN_FAMILIES)}; the others, {','.join(HELDOUT_FAMILIES)}, are held out "
                           "for animax eval's heldout-families split)")
    tiny.add_argument("--cast-share", type=share,
                      help="share of the procedural clips whose creature is a member of the model's cast "
                           f"(joint_colours.cast), drawn as its worker draws it (default {CAST_SHARE}, the shipped "
                           "model's); a model trained with one animates every rig as a cast member")
    tiny.add_argument("--processes", type=int, default=0, help="processes that sample clips and draw pose maps")
    tiny.add_argument("--text-cache", type=Path, default=DEFAULT_TEXT_CACHE)
    tiny.add_argument("--size", type=int,
                      help=f"view size in pixels of the procedural clips (default {TINY.size}; a --dataset has its "
                           "own), recorded in OUT/model/animax.json for the worker's templates; the VAE and the "
                           "transformer are convolutional and rotary, so --vae-from and --transformer-from may "
                           "come from another size")
    tiny.add_argument("--vae-steps", type=int, default=3000)
    tiny.add_argument("--vae-batch", type=int, default=128,
                      help="windows of single views per step (default %(default)s)")
    tiny.add_argument("--vae-lr", type=float, default=1e-3)
    tiny.add_argument("--vae-from", type=Path, help="a tiny model directory whose trained VAE to keep (skips "
                                                    "stage vae), e.g. backend/model/weights/tiny")
    tiny.add_argument("--transformer-from", type=Path,
                      help="a tiny model directory whose trained transformer the diffusion stages start from "
                           "(instead of random weights; its VAE usually goes to --vae-from)")
    tiny.add_argument("--pooled-text", action=argparse.BooleanOptionalAction, default=True,
                      help="give the transformer the pooled-prompt embedding (the prompt's mean token added to "
                           "every timestep embedding; docs/training.md), also one kept by --transformer-from, "
                           "where it starts at zero (default: on)")
    tiny.add_argument("--blocks", type=int,
                      help=f"transformer blocks (default {TINY_BLOCKS}); with --transformer-from, the kept "
                           "transformer gains blocks spread among its own, each starting as an identity "
                           "(default: as many as it has)")
    tiny.add_argument("--text-guidance-scale", type=float, default=TEXT_GUIDANCE_SCALE,
                      help="the prompt guidance that OUT/model/animax.json records for generation (default "
                           "%(default)s)")
    full = run.add_argument_group("full preset")
    full.add_argument("--wan", type=Path, help="local diffusers-format Wan2.1-T2V-1.3B directory")
    full.add_argument("--lora-rank", type=int, default=32, help="rank (and alpha) of the LoRA on the base blocks")
    stages = run.add_argument_group("diffusion stages (defaults per preset: " + "; ".join(
        f"{p}: " + ", ".join(f"{k}={v}" for k, v in d.items()) for p, d in STAGE_DEFAULTS.items()) + ")")
    stages.add_argument("--rgb-video", action=argparse.BooleanOptionalAction, default=None,
                        help="generate the RGB video beside the pose video (the paper's joint sequence, about "
                             "2.2x the work a step at 64 px) or, with --no-rgb-video, the pose video alone from "
                             "both templates (default: full, the paper's; tiny, as the transformer of "
                             "--transformer-from does, else the pose video alone, as the shipped model does)")
    stages.add_argument("--joint-steps", type=int)
    stages.add_argument("--batch", type=int, help="single views per step in stage 1")
    stages.add_argument("--lr", type=float)
    stages.add_argument("--multiview-steps", type=int)
    stages.add_argument("--multiview-batch", type=int, help="four-view samples per step in stage 2")
    stages.add_argument("--multiview-lr", type=float)
    stages.add_argument("--rest-template-probability", type=float,
                        help="share of samples whose image condition is the rest template, not a frame of "
                             "the clip (the paper: 0.5)")
    stages.add_argument("--text-drop", type=float,
                        help="share of samples trained without their prompt, for prompt guidance")
    stages.add_argument("--pose-weight", type=float,
                        help="weight of the pose half of the flow loss against the RGB half (1: the plain loss)")
    stages.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="compile the transformer's blocks with torch.compile: faster steps on a GPU once a "
                             "compile of a minute or so is paid (benchmarks/tiny_training_gpu.py)")
    run.add_argument("--deadline-min", type=float, default=0.0,
                     help="checkpoint and stop after this many minutes (0: no limit); --resume continues")
    recipe = sub.add_parser("recipe", help="train a model as its recipe file says, stage by stage (e.g. the shipped "
                                           "one: backend/train/recipes/tiny.json)")
    recipe.add_argument("recipe", type=Path, help="a recipe file (backend/train/recipe.py describes the format)")
    recipe.add_argument("--out", type=Path, required=True,
                        help="folder of the stages' runs (OUT/<stage>) and of the finished model (OUT/model)")
    recipe.add_argument("--deadline-min", type=float, default=0.0,
                        help="checkpoint and stop after this many minutes (0: no limit); the same command "
                             "continues")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "recipe":
        recipe_main(args, parser)
    else:
        {"text-cache": text_cache_main, "run": run_main}[args.command](args)


if __name__ == "__main__":
    main()
