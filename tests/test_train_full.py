"""Training the full preset's LoRA adapter on a stand-in Wan2.1, and training on `animax dataset` samples."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import load_file

import backend.train.__main__ as train
from animax_addon.core.cameras import make_camera_rig
from backend.data.dataset import Samples, build_samples
from backend.model.adapter import make_lora_config
from backend.model.checked_files import WeightsError
from backend.model.loading import build_tiny_pipeline, load_full, load_tiny, save_tiny, tiny_preset, tiny_transformer
from backend.model.presets import tiny_vae_config
from backend.model.transformer_animax import POSE, AnimaXTransformer3DModel
from backend.train.latents import encode_samples
from backend.train.loop import train_stage
from backend.train.stages import flow_loss, trainable_parameters
from backend.train.text import TextCache
from wan_stand_in import WAN_FILES, save_wan_stand_in

STEPS = ["--joint-steps", "3", "--batch", "2", "--multiview-steps", "2", "--multiview-batch", "1"]


def is_trained_here(name):
    return "lora_" in name or ".attn_mv." in name or ".norm_mv." in name or \
        name.startswith(("patch_embedding.", "modality_embedder."))


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wan") / "wan"
    save_wan_stand_in(directory)
    return directory


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    samples = build_samples(2, seed=0, size=32, frames=5)
    path = tmp_path_factory.mktemp("data") / "samples.npz"
    samples.save(path)
    return path, samples


@pytest.fixture(scope="module")
def full_run(wan, dataset, tmp_path_factory):
    """A run cut by its deadline after one step, then resumed to the end."""
    out = tmp_path_factory.mktemp("run")
    argv = ["run", "--preset", "full", "--wan", str(wan), "--dataset", str(dataset[0]), "--out", str(out),
            "--lora-rank", "4", *STEPS]
    train.main(argv + ["--deadline-min", "1e-9"])
    first = train.recorded_runs(out)
    train.main(argv + ["--resume"])
    return out, first


def test_full_run_resumes_and_writes_an_adapter_of_lora_and_new_parameters(wan, full_run):
    out, first = full_run
    assert not first[0]["finished"] and first[0]["steps"] == {"joint": 1}
    runs = train.recorded_runs(out)
    assert len(runs) == 2 and runs[1]["finished"] and runs[1]["steps"] == {"joint": 3, "multiview": 2}
    assert runs[1]["data"]["clips"] == 2 and (out / "loss.png").is_file()
    # Each run records the speed of the steps it made: their number, the first's and the others' mean time.
    assert first[0]["speed"]["joint"]["steps"] == 1
    speed = runs[1]["speed"]
    assert (speed["joint"]["steps"], speed["multiview"]["steps"]) == (2, 2)
    assert all(s["seconds_per_step"] > 0 and s["first_step_seconds"] > 0 and s["peak_memory_gib"] is None
               for s in speed.values())

    pipe = load_full(wan, out / "adapter", dtype=torch.float32)
    assert pipe.transformer.peft_config["default"].r == 4
    base = WanTransformer3DModel.from_pretrained(wan / "transformer").state_dict()
    state = pipe.transformer.state_dict()
    frozen = {k for k in state if not is_trained_here(k)}
    assert len(frozen) == len(base) - 2  # all of Wan but its patch embedding, which AnimaX widens
    for key in frozen:  # the base is Wan's, untouched (LoRA wraps its linears as `base_layer`)
        assert torch.equal(state[key], base[key.replace(".base_layer", "")]), key
    in_channels = base["patch_embedding.weight"].shape[1]
    # trained: LoRA B and the modality embedding (zero at start), the ray channels (zero until stage 2)
    assert state["blocks.0.attn1.to_q.lora_B.default.weight"].abs().max() > 0
    assert state["modality_embedder.linear_2.weight"].abs().max() > 0
    assert state["patch_embedding.weight"][:, in_channels:].abs().max() > 0
    assert state["blocks.1.attn_mv.to_out.0.weight"].abs().max() > 0
    adapter = load_file(out / "adapter" / "animax_adapter.safetensors")
    assert all(is_trained_here(k) for k in adapter)


def test_full_run_of_the_pose_video_alone_writes_an_adapter_that_loads_as_such(wan, dataset, full_run, tmp_path):
    out = tmp_path / "pose-only"
    train.main(["run", "--preset", "full", "--wan", str(wan), "--dataset", str(dataset[0]), "--out", str(out),
                "--lora-rank", "4", "--no-rgb-video", *STEPS])
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["rgb_video"] is False
    assert json.loads((full_run[0] / "adapter" / "adapter_config.json").read_text())["rgb_video"] is True
    pipe = load_full(wan, out / "adapter", dtype=torch.float32)
    assert pipe.transformer.generated == (POSE,)
    assert train.recorded_runs(out)[-1]["finished"]
    images = np.random.default_rng(0).integers(0, 255, (2, 4, 32, 32, 3), dtype=np.uint8)
    output = pipe(prompt="the fox pounces forward", rgb_templates=images[0], pose_templates=images[1],
                  cameras=make_camera_rig(np.zeros(3), 1.0, 32), num_frames=5, num_inference_steps=1)
    assert output.pose_videos.shape == (4, 5, 32, 32, 3) and output.rgb_videos is None
    del config["rgb_video"]  # an adapter written before the layout was recorded generates both videos
    (out / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    assert load_full(wan, out / "adapter", dtype=torch.float32).transformer.config.rgb_video is True
    (out / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "rgb_video": "no"}))
    with pytest.raises(WeightsError, match="expected rgb_video true or false"):
        load_full(wan, out / "adapter", dtype=torch.float32)


def test_full_joint_stage_trains_lora_and_the_new_inputs_only():
    model = AnimaXTransformer3DModel.from_wan(WanTransformer3DModel(num_layers=1, num_attention_heads=2,
                                                                    attention_head_dim=12, in_channels=4,
                                                                    out_channels=4, text_dim=32, freq_dim=32,
                                                                    ffn_dim=32))
    model.add_adapter(make_lora_config(4))
    joint = {id(p) for p in trainable_parameters(model, "joint")}
    names = {n for n, p in model.named_parameters() if id(p) in joint}
    assert names == {n for n, _ in model.named_parameters()
                     if "lora_" in n or n.startswith(("patch_embedding.", "modality_embedder."))}
    assert "blocks.0.attn1.to_q.lora_A.default.weight" in names and "modality_embedder.linear_1.weight" in names
    assert all(p.requires_grad == (n in names) for n, p in model.named_parameters())
    multiview = {n for n, p in model.named_parameters() if id(p) in
                 {id(q) for q in trainable_parameters(model, "multiview")}}
    assert not any("lora_" in n for n in multiview) and "blocks.0.attn_mv.to_q.weight" in multiview


def test_full_loss_of_a_fixed_batch_falls(wan, dataset, tmp_path):
    base, vae, _, _ = train.load_wan(wan, torch.float32)
    model = AnimaXTransformer3DModel.from_wan(base)
    model.add_adapter(make_lora_config(4))
    model.enable_gradient_checkpointing()
    text = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    data = encode_samples(vae, dataset[1], text, "cpu", frame_choices=2)
    generator = torch.Generator()

    def step_fn(model, step):
        generator.manual_seed(0)  # one fixed batch
        return flow_loss(model, data.take(torch.arange(2)), "joint", generator)

    losses, finished = train_stage("joint", model, trainable_parameters(model, "joint"), step_fn, 30, 3e-3, tmp_path)
    assert finished
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize("name", ["transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                  "tokenizer/tokenizer.json", "vae/config.json"])
def test_full_missing_wan_file_is_named(wan, dataset, tmp_path, name):
    assert name in WAN_FILES
    shutil.copytree(wan, tmp_path / "wan")
    path = tmp_path / "wan" / name
    path.unlink()
    with pytest.raises(WeightsError, match=re.escape(str(path)) + ".* is missing: expected a diffusers-format Wan"):
        train.main(["run", "--preset", "full", "--wan", str(tmp_path / "wan"), "--dataset", str(dataset[0]),
                    "--out", str(tmp_path / "out"), *STEPS])


def test_full_needs_wan_and_dataset(tmp_path):
    with pytest.raises(SystemExit, match="--preset full needs --wan"):
        train.main(["run", "--preset", "full", "--out", str(tmp_path)])


@pytest.mark.parametrize("crop, message", [
    (dict(size=28), "its images are 28 px, not a multiple of 8"),
    (dict(frames=4), "its clips have 4 frames, not 1 \\+ 4k"),
])
def test_dataset_that_does_not_fit_the_vae_says_what_to_change(wan, dataset, tmp_path, crop, message):
    s = dataset[1]
    size, frames = crop.get("size", 32), crop.get("frames", 5)
    Samples(s.rgb[:, :, :frames, :size, :size], s.pose[:, :, :frames, :size, :size], s.rgb_rest[:, :, :size, :size],
            s.pose_rest[:, :, :size, :size], s.prompts, s.motions, s.families).save(tmp_path / "bad.npz")
    with pytest.raises(SystemExit, match=message + ".*animax dataset ASSETS --out DIR --size 480 --frames 81"):
        train.main(["run", "--preset", "full", "--wan", str(wan), "--dataset", str(tmp_path / "bad.npz"),
                    "--out", str(tmp_path / "out"), *STEPS])


def test_tiny_trains_on_a_dataset_with_captions_added_to_the_text_cache(dataset, tmp_path, monkeypatch):
    path, samples = dataset
    captions = ["a treasure chest snaps shut", "Fox_Walk cycle"]  # captions of real assets, not procedural
    Samples(samples.rgb, samples.pose, samples.rgb_rest, samples.pose_rest, captions, samples.motions,
            samples.families).save(tmp_path / "assets.npz")
    cache = tmp_path / "text.safetensors"
    monkeypatch.setattr(train, "all_prompts", lambda: ["the fox jumps"])  # the procedural prompts, shortened
    train.main(["text-cache", "--out", str(cache)])
    assert TextCache(cache).prompts == ["the fox jumps"]
    out = tmp_path / "run"
    argv = ["run", "--dataset", str(tmp_path / "assets.npz"), "--text-cache", str(cache), "--out", str(out),
            "--vae-steps", "2", "--vae-batch", "2", *STEPS]
    with pytest.raises(SystemExit, match="2 captions of .* are not in .*text-cache --dataset"):
        train.main(argv)
    train.main(["text-cache", "--out", str(cache), "--dataset", str(tmp_path / "assets.npz")])
    assert TextCache(cache).prompts == ["the fox jumps"] + captions  # kept, then added
    train.main(argv)
    record = train.recorded_runs(out)[-1]
    assert record["finished"] and record["data"]["source"] == str(tmp_path / "assets.npz")
    assert (record["data"]["clips"], record["data"]["size"], record["data"]["frames"]) == (2, 32, 5)
    assert record["steps"] == {"vae": 2, "joint": 3, "multiview": 2}
    pipe = load_tiny(out / "model")
    assert pipe.transformer.blocks[0].attn_mv.to_out[0].weight.abs().max() > 0


def test_tiny_keeps_a_trained_vae_and_reuses_its_cached_latents(dataset, tmp_path, capsys):
    first = tmp_path / "first"
    base = ["--dataset", str(dataset[0]), *STEPS]  # procedural prompts: in the shipped text cache
    train.main(["run", "--out", str(first), "--vae-steps", "2", "--vae-batch", "2", *base])
    assert (first / "vae" / "config.json").is_file() and (first / "latents" / "index.json").is_file()

    second = tmp_path / "second"
    train.main(["run", "--out", str(second), "--vae-from", str(first / "model"), *base, "--deadline-min", "1e-9"])
    record = train.recorded_runs(second)[-1]
    assert "vae" not in record["steps"] and "encode" in record["seconds"]  # no VAE stage; the data was encoded
    kept = load_file(first / "model" / "vae" / "diffusion_pytorch_model.safetensors")
    saved = load_file(second / "model" / "vae" / "diffusion_pytorch_model.safetensors")
    assert kept.keys() == saved.keys() and all(torch.equal(kept[k], saved[k]) for k in kept)

    capsys.readouterr()
    train.main(["run", "--out", str(second), "--vae-from", str(first / "model"), *base, "--resume"])
    assert "latents: reusing" in capsys.readouterr().out
    record = train.recorded_runs(second)[-1]
    assert record["finished"] and "encode" not in record["seconds"] and record["data"]["clips"] == 2
    joint_only = tmp_path / "joint-only"  # a stage of no steps is skipped, not trained with a schedule of 0
    train.main(["run", "--out", str(joint_only), "--vae-from", str(first / "model"), *base, "--multiview-steps", "0"])
    record = train.recorded_runs(joint_only)[-1]
    assert record["finished"] and record["steps"] == {"joint": 3}
    with pytest.raises(SystemExit, match="config.json is missing"):
        train.main(["run", "--out", str(tmp_path / "third"), "--vae-from", str(tmp_path), *base])


@pytest.fixture(scope="module")
def kept_model(dataset, tmp_path_factory):
    """A tiny model of 4 blocks without the pooled prompt, trained a few steps, whose transformer (and
    VAE) the runs below keep."""
    out = tmp_path_factory.mktemp("kept")
    train.main(["run", "--out", str(out), "--vae-steps", "2", "--vae-batch", "2", "--dataset", str(dataset[0]),
                "--blocks", "4", "--no-pooled-text", *STEPS])
    return out / "model"


def transformer_weights(model_dir):
    return load_file(model_dir / "transformer" / "diffusion_pytorch_model.safetensors")


def test_tiny_trains_on_from_a_kept_transformer(dataset, kept_model, tmp_path):
    base = ["--dataset", str(dataset[0]), *STEPS]
    kept = transformer_weights(kept_model)
    source = ["--vae-from", str(kept_model), "--transformer-from", str(kept_model), "--no-pooled-text"]

    untouched = tmp_path / "untouched"  # no diffusion steps: the model written is the one kept
    train.main(["run", "--out", str(untouched), *source, *base, "--joint-steps", "0", "--multiview-steps", "0"])
    saved = transformer_weights(untouched / "model")
    assert kept.keys() == saved.keys() and all(torch.equal(kept[k], saved[k]) for k in kept)

    further = tmp_path / "further"
    train.main(["run", "--out", str(further), *source, *base])
    trained = transformer_weights(further / "model")
    assert any(not torch.equal(kept[k], trained[k]) for k in kept)
    assert train.recorded_runs(further)[-1]["steps"] == {"joint": 3, "multiview": 2}
    with pytest.raises(SystemExit, match="transformer.config.json is missing"):
        train.main(["run", "--out", str(tmp_path / "nowhere"), "--transformer-from", str(tmp_path), *base])
    narrow = build_tiny_pipeline()  # a model directory whose VAE has 4 latent channels
    narrow.vae, narrow.transformer = AutoencoderKLWan(**tiny_vae_config(base_dim=8, z_dim=4)), tiny_transformer(4)
    save_tiny(narrow, tmp_path / "narrow")
    with pytest.raises(SystemExit, match="latents of 16 channels, the VAE's have 4; give --vae-from"):
        train.main(["run", "--out", str(tmp_path / "other-vae"), "--transformer-from", str(kept_model),
                    "--vae-from", str(tmp_path / "narrow"), *base])


def test_tiny_trains_a_kept_model_on_other_families_and_view_size_and_records_them(dataset, kept_model, tmp_path):
    assert tiny_preset(kept_model).size == 32  # the dataset's own size
    assert not tiny_preset(kept_model).retargets  # trained on a library: shown the rigs themselves
    source = ["--vae-from", str(kept_model), "--transformer-from", str(kept_model), "--no-pooled-text"]
    out = tmp_path / "larger"
    train.main(["run", "--out", str(out), *source, "--samples", "3", "--size", "48", "--families", "laptop,lamp",
                *STEPS])
    record = train.recorded_runs(out)[-1]
    assert record["finished"] and record["data"]["size"] == 48 and tiny_preset(out / "model").size == 48
    assert tiny_preset(out / "model").retargets  # procedural creatures alone
    assert set(record["data"]["families"]) <= {"laptop", "lamp"}
    assert tiny_preset(out / "model").cast  # half its clips from the cast, by default: its worker draws other
    assert record["settings"]["cast_share"] == 0.5  # rigs as cast members
    uncast = tmp_path / "uncast"
    train.main(["run", "--out", str(uncast), *source, "--samples", "3", "--cast-share", "0", *STEPS])
    assert not tiny_preset(uncast / "model").cast  # the nearest reference, then
    with pytest.raises(SystemExit, match="--cast-share: .*a --dataset keeps its own"):
        train.main(["run", "--out", str(tmp_path / "cast_dataset"), *source, "--dataset", str(dataset[0]),
                    "--cast-share", "0.5", *STEPS])
    with pytest.raises(SystemExit):  # argparse: not a share
        train.main(["run", "--out", str(tmp_path / "over"), *source, "--cast-share", "1.5", *STEPS])
    with pytest.raises(SystemExit, match="--families: .*a --dataset keeps its own"):
        train.main(["run", "--out", str(tmp_path / "families"), *source, "--dataset", str(dataset[0]),
                    "--families", "lamp", *STEPS])
    with pytest.raises(SystemExit, match="--size 40: .*a multiple of 16"):
        train.main(["run", "--out", str(tmp_path / "odd"), *source, "--samples", "2", "--size", "40", *STEPS])
    with pytest.raises(SystemExit, match="--size 48: .*a --dataset keeps its own"):
        train.main(["run", "--out", str(tmp_path / "both"), *source, "--dataset", str(dataset[0]), "--size", "48",
                    *STEPS])


def test_pooled_text_joins_a_kept_transformer_at_zero_and_then_trains(dataset, kept_model, tmp_path):
    base = ["--dataset", str(dataset[0]), *STEPS]
    kept = transformer_weights(kept_model)
    assert not any(k.startswith("pooled_text_embedder.") for k in kept)
    source = ["--vae-from", str(kept_model), "--transformer-from", str(kept_model)]  # the pooled prompt by default

    untouched = tmp_path / "untouched"  # no steps: the kept weights, and the new path at its zero output
    train.main(["run", "--out", str(untouched), *source, *base, "--joint-steps", "0", "--multiview-steps", "0"])
    saved = transformer_weights(untouched / "model")
    assert all(torch.equal(kept[k], saved[k]) for k in kept)
    assert not saved["pooled_text_embedder.linear_2.weight"].any()

    further = tmp_path / "further"
    train.main(["run", "--out", str(further), *source, *base])
    pipeline = load_tiny(further / "model", text_encoder=False)
    assert pipeline.transformer.config.pooled_text
    assert pipeline.transformer.pooled_text_embedder.linear_2.weight.abs().sum() > 0  # stage joint trains it


def test_blocks_deepen_a_kept_transformer_that_then_trains(dataset, kept_model, tmp_path):
    base = ["--dataset", str(dataset[0]), *STEPS]
    kept = transformer_weights(kept_model)
    source = ["--vae-from", str(kept_model), "--transformer-from", str(kept_model)]

    untouched = tmp_path / "untouched"  # no steps: the kept blocks at 0, 1, 3, 4 of 6, the new ones silent
    train.main(["run", "--out", str(untouched), *source, "--blocks", "6", *base, "--joint-steps", "0",
                "--multiview-steps", "0"])
    saved = transformer_weights(untouched / "model")
    assert all(torch.equal(v, saved[re.sub(r"^blocks\.(\d)\.", lambda m: f"blocks.{int(m[1]) * 3 // 2}.", k)])
               for k, v in kept.items())
    assert not saved["blocks.2.ffn.net.2.weight"].any() and not saved["blocks.5.attn1.to_out.0.weight"].any()

    further = tmp_path / "further"
    train.main(["run", "--out", str(further), *source, "--blocks", "6", *base])
    pipeline = load_tiny(further / "model", text_encoder=False)
    assert len(pipeline.transformer.blocks) == 6
    assert pipeline.transformer.blocks[2].ffn.net[2].weight.abs().sum() > 0  # stage joint trains the new blocks
    with pytest.raises(SystemExit, match="has 6 blocks; a kept transformer only gains blocks"):
        train.main(["run", "--out", str(tmp_path / "shallower"), "--vae-from", str(further / "model"),
                    "--transformer-from", str(further / "model"), "--blocks", "4", *base])


def test_tiny_trains_only_a_vae_when_the_diffusion_stages_have_no_steps(dataset, tmp_path, monkeypatch):
    path, samples = dataset
    monkeypatch.setattr(train, "VAE_CROP_SIZE", 16)  # windows of 16 px and 3 frames of the 32 px, 5-frame clips
    monkeypatch.setattr(train, "VAE_CROP_FRAMES", 3)
    seen, vae_loss = [], train.vae_loss

    def recording_loss(model, video, is_pose):
        seen.append((video.clone(), is_pose.clone()))
        return vae_loss(model, video, is_pose)

    monkeypatch.setattr(train, "vae_loss", recording_loss)
    out = tmp_path / "vae-only"
    train.main(["run", "--dataset", str(path), "--out", str(out), "--vae-steps", "2", "--vae-batch", "2",
                "--joint-steps", "0", "--multiview-steps", "0"])
    record = train.recorded_runs(out)[-1]
    assert record["finished"] and record["steps"] == {"vae": 2}
    assert not (out / "latents").exists()  # no diffusion stage, so no encoded dataset
    pipe = load_tiny(out / "model")
    vae = pipe.vae.config
    assert (vae.base_dim, vae.z_dim, vae.scale_factor_temporal) == (32, 16, 2)  # the tiny preset's VAE
    assert pipe.transformer.config.in_channels == pipe.transformer.config.out_channels == 16

    # Every step trained on one window of single views, cut from the clips themselves.
    assert len(seen) == 2
    videos = {True: samples.pose, False: samples.rgb}
    for video, is_pose in seen:
        assert video.shape == (2, 3, 3, 16, 16)
        frames = ((video.movedim(1, -1) + 1) * 127.5).round().to(torch.uint8).numpy()
        for window, pose in zip(frames, is_pose.tolist()):
            source = videos[pose]
            assert any(np.array_equal(window, source[n, v, t:t + 3, y:y + 16, x:x + 16])
                       for n in range(source.shape[0]) for v in range(source.shape[1])
                       for t in range(3) for y in range(17) for x in range(17))
