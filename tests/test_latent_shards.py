"""A library's latents encoded into shards on disk and streamed by a DataLoader: the same batches and
losses as latents held in memory, a stopped encode resumed, a changed key encoded again, files written
whole, and readers that never hold the library."""

import json
import os
import pickle
import shutil

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

import backend.train.latent_shards as latent_shards
from backend.data.dataset import SHARDS, Samples, SampleShards, build_samples
from backend.model.transformer_animax import AnimaXTransformer3DModel
from backend.train.__main__ import linked
from backend.train.batches import MemoryBatches, StreamedBatches, step_batches
from backend.train.latent_shards import INDEX, LatentShards, encode_library
from backend.train.latents import encode_samples
from backend.train.stages import flow_loss
from test_train import TOY_TRANSFORMER, TOY_VAE

SHARD_CLIPS = (2, 1, 2)
KEY = dict(vae="toy", seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset folder as `animax dataset` writes it: three assets' shards of 2, 1 and 2 clips."""
    folder = tmp_path_factory.mktemp("dataset")
    (folder / SHARDS).mkdir()
    samples = build_samples(sum(SHARD_CLIPS), seed=3, size=32, frames=5)
    first = 0
    for number, count in enumerate(SHARD_CLIPS):
        clips = slice(first, first + count)
        part = Samples(samples.rgb[clips], samples.pose[clips], samples.rgb_rest[clips], samples.pose_rest[clips],
                       samples.prompts[clips], samples.motions[clips], samples.families[clips])
        part.save(folder / SHARDS / f"asset{number}-000.npz")
        (folder / SHARDS / f"asset{number}.json").write_text(
            json.dumps({"asset": f"asset{number}", "parts": [f"asset{number}-000.npz"]}))
        first += count
    return folder


@pytest.fixture(scope="module")
def toy_vae():
    torch.manual_seed(0)
    return AutoencoderKLWan(**TOY_VAE).eval()


def encoder(vae, seed=0, calls=None, fail_after=None):
    """``encode(samples, first)`` as training gives it: each prompt's text embedding depends on the prompt
    alone. ``calls`` notes the first clip of each shard encoded; past ``fail_after`` calls it raises."""
    def encode(samples, first):
        if calls is not None:
            if fail_after is not None and len(calls) == fail_after:
                raise KeyboardInterrupt("stopped")
            calls.append(first)
        text = torch.stack([torch.randn(8, 384, generator=torch.Generator().manual_seed(sum(map(ord, p))))
                            for p in samples.prompts])
        return encode_samples(vae, samples, text, "cpu", frame_choices=2, seed=seed, first=first)
    return encode


def encoded(dataset, vae, folder, key=KEY, **kwargs) -> int:
    shards = SampleShards(dataset)
    return encode_library(shards, folder, key, encoder(vae, key["seed"], **kwargs), {"clips": len(shards)})


def shard_tensors(folder):
    return {path.name: load_file(path) for path in sorted(folder.glob("*.safetensors"))}


def test_streamed_batches_give_the_losses_of_latents_in_memory(dataset, toy_vae, tmp_path):
    memory = encoder(toy_vae)(SampleShards(dataset).load_all(), 0)  # every clip encoded at once
    encoded(dataset, toy_vae, tmp_path)
    library = LatentShards(tmp_path)
    assert len(library) == len(memory) == 5 and library.description == {"clips": 5}
    torch.testing.assert_close(library.rays, memory.rays)
    torch.manual_seed(0)
    model = AnimaXTransformer3DModel(**TOY_TRANSFORMER)
    in_memory = step_batches(memory, 4, 0, 3, "cpu")
    streamed = step_batches(library, 4, 0, 3, torch.device("cpu"), workers=1)  # a worker process reads
    assert isinstance(in_memory, MemoryBatches) and isinstance(streamed, StreamedBatches)
    resumed = StreamedBatches(library, 4, 0, 3, torch.device("cpu"), workers=0)
    try:
        for stage in ("joint", "multiview"):
            for step in (1, 2, 3):
                batches = [in_memory(step), streamed(step)] + ([resumed(step)] if step == 3 else [])
                for clips in batches[1:]:  # the same clips, encoded a shard at a time: equal within float16
                    for name in ("video", "condition", "text"):
                        assert getattr(clips, name).dtype == torch.float16
                        torch.testing.assert_close(getattr(clips, name), getattr(batches[0], name),
                                                   atol=2e-3, rtol=2e-3)
                losses = [flow_loss(model, clips, stage, torch.Generator().manual_seed(step)).item()
                          for clips in batches]
                assert losses[1:] == pytest.approx(losses[:1] * (len(losses) - 1), rel=1e-3)
    finally:
        streamed.close()
        resumed.close()


def test_a_stopped_encode_resumes_with_the_shards_it_lacks(dataset, toy_vae, tmp_path):
    whole = tmp_path / "whole"
    assert encoded(dataset, toy_vae, whole) == 3
    stopped, calls = tmp_path / "stopped", []
    with pytest.raises(KeyboardInterrupt):
        encoded(dataset, toy_vae, stopped, calls=calls, fail_after=1)
    assert calls == [0] and sorted(p.name for p in stopped.iterdir()) == ["00000.safetensors"]  # no index yet
    first_shard = (stopped / "00000.safetensors").stat().st_mtime_ns

    calls.clear()
    assert encoded(dataset, toy_vae, stopped, calls=calls) == 2
    assert calls == [2, 3]  # the second and third shards' first clips: the first shard was kept
    assert (stopped / "00000.safetensors").stat().st_mtime_ns == first_shard
    again, kept = shard_tensors(stopped), shard_tensors(whole)
    assert again.keys() == kept.keys() == {"00000.safetensors", "00001.safetensors", "00002.safetensors",
                                           "rays.safetensors"}
    for name in kept:
        assert kept[name].keys() == again[name].keys()
        assert all(torch.equal(kept[name][part], again[name][part]) for part in kept[name])
    assert json.loads((stopped / INDEX).read_text()) == json.loads((whole / INDEX).read_text())


def test_a_changed_key_or_shard_encodes_again(dataset, toy_vae, tmp_path, capsys):
    assert encoded(dataset, toy_vae, tmp_path) == 3
    capsys.readouterr()
    calls = []
    assert encoded(dataset, toy_vae, tmp_path, calls=calls) == 0 and calls == []
    assert "latents: reusing" in capsys.readouterr().out
    assert encoded(dataset, toy_vae, tmp_path, key=dict(KEY, seed=1), calls=calls) == 3  # e.g. another seed
    assert json.loads((tmp_path / INDEX).read_text())["key"] == dict(KEY, seed=1)
    assert encoded(dataset, toy_vae, tmp_path, key=dict(KEY, vae="other", seed=1)) == 3  # or another VAE

    changed = tmp_path / "changed"  # a copy of the dataset, whose second shard is then built again
    shutil.copytree(dataset, changed)
    calls.clear()
    assert encoded(changed, toy_vae, tmp_path / "latents", calls=calls) == 3
    part = changed / SHARDS / "asset1-000.npz"
    written = part.stat()
    os.utime(part, ns=(written.st_atime_ns, written.st_mtime_ns + 10**9))  # what building it again changes
    calls.clear()
    assert encoded(changed, toy_vae, tmp_path / "latents", calls=calls) == 1
    assert calls == [2]  # the second shard, whose first clip is the dataset's third


def test_shard_files_are_written_whole_or_not_at_all(dataset, toy_vae, tmp_path, monkeypatch):
    assert encoded(dataset, toy_vae, tmp_path) == 3
    before = shard_tensors(tmp_path)
    save_file = latent_shards.save_file

    def cut_short(tensors, path, metadata=None):  # the process dies while the file is being written
        save_file(tensors, path, metadata)
        with open(path, "r+b") as written:
            written.truncate(100)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(latent_shards, "save_file", cut_short)
    with pytest.raises(KeyboardInterrupt):
        encoded(dataset, toy_vae, tmp_path, key=dict(KEY, seed=1))
    # The old shard is whole under its name, no partial file is left, and no index stands for the folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.safetensors", "00001.safetensors",
                                                          "00002.safetensors", "rays.safetensors"]
    after = shard_tensors(tmp_path)
    assert all(torch.equal(before[f][part], after[f][part]) for f in before for part in before[f])

    monkeypatch.undo()
    assert encoded(dataset, toy_vae, tmp_path, key=dict(KEY, seed=1)) == 3


def test_a_reader_opens_shards_lazily_and_holds_few(dataset, toy_vae, tmp_path):
    encoded(dataset, toy_vae, tmp_path)
    library = LatentShards(tmp_path, open_files=1)
    assert library._opened == {}  # nothing read until a clip is asked for
    clip_bytes = sum(t.numel() * t.element_size() for t in library[0].values())
    # What goes to each DataLoader worker is the index and the rays, not clips or open files.
    assert len(pickle.dumps(library)) < clip_bytes
    for clip in (4, 0, 2, 3, 1, 4):
        assert set(library[clip]) == {"video", "condition", "text"}
        assert len(library._opened) == 1  # the shard of the clip just read, no other
    with pytest.raises(IndexError):
        library[5]


def test_a_stage_folder_shares_the_encoded_files_of_an_earlier_one(dataset, toy_vae, tmp_path):
    encoded(dataset, toy_vae, tmp_path / "earlier")
    linked(tmp_path / "earlier", tmp_path / "later")
    for path in (tmp_path / "earlier").iterdir():
        assert (tmp_path / "later" / path.name).stat().st_ino == path.stat().st_ino  # hard links, no copies
    assert encoded(dataset, toy_vae, tmp_path / "later") == 0
