"""Training and evaluation samples from the procedural rig world.

A sample is what the model sees for one clip (paper §3.1): the four-view RGB and pose-map videos,
and the templates of the rig at rest in the same views, all from the product's camera rig around
the rig's rest bounding sphere. Pose maps come from the project's one drawing function; RGB from
the capsule renderer. Clips are sampled in worker processes (NumPy); RGB is rendered in the main
process on ``device`` so a GPU can do it. ``SampleShards`` reads a dataset of ``Samples`` files
(``animax dataset``'s folder) a file at a time.
"""

from __future__ import annotations

import json
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import render_pose_maps

from .joint_colours import cast
from .motions import MOTIONS, capable_families, play, sample_creature
from .render import appearance, render_capsules, skeleton_capsules, to_uint8
from .rig_world import FAMILIES, TRAIN_FAMILIES, Creature
from .variety import varied_rest

DATASET_FORMAT_VERSION = 1


@dataclass
class Samples:
    """N samples of V views and T frames at S x S pixels (uint8 images)."""

    rgb: np.ndarray  # (N, V, T, S, S, 3)
    pose: np.ndarray  # (N, V, T, S, S, 3)
    rgb_rest: np.ndarray  # (N, V, S, S, 3) templates: the rig at rest
    pose_rest: np.ndarray  # (N, V, S, S, 3)
    prompts: list[str]
    motions: list[str]
    families: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def shape(self) -> tuple[int, ...]:
        """A clip's (V, T, S, S, 3), as ``SampleShards.shape``."""
        return self.rgb.shape[1:]

    def save(self, path: str | Path) -> None:
        np.savez(path, format_version=DATASET_FORMAT_VERSION, rgb=self.rgb, pose=self.pose,
                 rgb_rest=self.rgb_rest, pose_rest=self.pose_rest, prompts=np.array(self.prompts),
                 motions=np.array(self.motions), families=np.array(self.families))

    @classmethod
    def load(cls, path: str | Path) -> "Samples":
        with _opened(path) as data:
            return cls(data["rgb"], data["pose"], data["rgb_rest"], data["pose_rest"],
                       data["prompts"].tolist(), data["motions"].tolist(), data["families"].tolist())

    @classmethod
    def concatenate(cls, parts: list["Samples"]) -> "Samples":
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("rgb", "pose", "rgb_rest", "pose_rest")),
                   *([x for p in parts for x in getattr(p, k)] for k in ("prompts", "motions", "families")))


def _opened(path: str | Path):
    data = np.load(path)
    if int(data["format_version"]) != DATASET_FORMAT_VERSION:
        data.close()
        raise ValueError(f"{path} is a version {int(data['format_version'])} dataset; this code reads "
                         f"version {DATASET_FORMAT_VERSION}: build it again")
    return data


SHARDS = "shards"
"""The folder of a dataset's shards: ``<name>.json`` records, each listing the ``.npz`` parts (``Samples``
files) it completed."""


def shard_records(folder: str | Path) -> list[dict]:
    """The records of a dataset folder's finished assets (``shards/*.json``), in the order of their assets."""
    return sorted((json.loads(p.read_text(encoding="utf-8")) for p in (Path(folder) / SHARDS).glob("*.json")),
                  key=lambda record: record["asset"])


class SampleShards:
    """The clips of a dataset, read one shard (a ``Samples`` file) at a time, so that RAM holds one
    shard, never the dataset. ``path`` is a dataset folder (``animax dataset``: ``shards/*.json`` and
    the parts they list, in the order of their assets) or one ``Samples`` file, a dataset of one shard.
    What describes the clips (their count, shape and captions) is read without their images."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            self.files = [path / SHARDS / part for record in shard_records(path) for part in record["parts"]]
            if not self.files:
                raise ValueError(f"{path} holds no complete shard with clips ({path / SHARDS}/*.json): "
                                 "build it with `animax dataset ASSETS --out DIR`")
        else:
            self.files = [path]
        self.prompts, self.motions, self.families, self.counts = [], [], [], []
        for file in self.files:
            with _opened(file) as data:
                prompts = data["prompts"].tolist()
                self.prompts += prompts
                self.motions += data["motions"].tolist()
                self.families += data["families"].tolist()
            self.counts.append(len(prompts))
        self.shape = _array_shape(self.files[0], "rgb")[1:]  # (V, T, S, S, 3)

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return (Samples.load(file) for file in self.files)

    def load_all(self) -> Samples:
        """Every clip in RAM: for small datasets (the tiny preset's VAE stage, tests)."""
        return Samples.concatenate(list(self))


def _array_shape(path: Path, name: str) -> tuple[int, ...]:
    """The shape of array ``name`` of an .npz file, from its header alone."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
        major, _ = np.lib.format.read_magic(member)
        header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        return header(member)[0]


def cast_creature(rng, families, motions) -> Creature:
    """A member of the model's cast (``joint_colours.cast``) of ``families`` that can do one of
    ``motions``: a family first, as ``sample_creature`` draws one, then one of its members."""
    members = sorted(cast(tuple(TRAIN_FAMILIES if families is None else families)))
    able = sorted({family for family, _ in members} & set(capable_families(families, motions)))
    family = able[int(rng.integers(len(able)))]
    seeds = [seed for name, seed in members if name == family]
    return FAMILIES[family](np.random.default_rng(seeds[int(rng.integers(len(seeds)))]))


def draw_clip(seed: int, size: int, frames: int, families, motions, rested: bool = False,
              cast_share: float = 0.0) -> dict:
    """One clip with its cameras, pose maps and look: a training sample before its RGB is rendered
    (runs in a worker process), and a held-out evaluation clip (``evaluation.evaluate.draw_item``).
    ``rested``: the creature is first re-rested in a pose of its own (``variety.varied_rest``).
    ``cast_share``: the share of clips whose creature is a member of the cast, in the look the worker
    draws it in (``worker.model_body``); at 0 no draw is spent on it, so older clips stay as they were."""
    rng = np.random.default_rng(seed)
    in_cast = cast_share > 0 and rng.random() < cast_share
    creature = cast_creature(rng, families, motions) if in_cast else sample_creature(rng, families, motions)
    if rested:
        rng.random()  # the draw that once chose which rigs to re-rest: the split keeps the clips it was scored on
        creature = varied_rest(creature, rng, frames)
    clip = play(creature, rng, frames, motions)
    rig = clip.creature.rig
    center, radius = rig.bounding_sphere()
    cameras = make_camera_rig(center, radius, size)
    # the cast in the look of the first appearance seed, as the worker shows it
    colours, radii = appearance(rig.joints_rest, rig.joint_parents, np.random.default_rng(0) if in_cast else rng)
    return dict(
        clip=clip, cameras=cameras, colours=colours, radii=radii,
        pose=render_pose_maps(cameras, clip.joints, rig.joint_parents),
        pose_rest=render_pose_maps(cameras, rig.joints_rest[None], rig.joint_parents)[:, 0],
    )


def build_samples(count: int, seed: int = 0, size: int = 64, frames: int = 17, families=None, motions=None,
                  device: str = "cpu", processes: int = 0, render_batch: int = 8, cast_share: float = 0.0) -> Samples:
    """``count`` samples; sample i depends only on (seed, i), so a dataset can be rebuilt exactly;
    ``cast_share`` as ``draw_clip`` takes it."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    motions = tuple(MOTIONS) if motions is None else tuple(motions)
    seeds = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64).tolist()
    args = [(s, size, frames, families, motions, False, cast_share) for s in seeds]
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            return _collect(list(pool.map(draw_clip, *zip(*args), chunksize=16)), device, render_batch)
    return _collect([draw_clip(*a) for a in args], device, render_batch)


def _render_group(items: list[dict], device: str) -> list[np.ndarray]:
    """RGB of several clips in one batch of frames: each clip's frames, then its rest pose."""
    parts = []
    for item in items:
        rig = item["clip"].creature.rig
        joints = np.concatenate([item["clip"].joints, rig.joints_rest[None]])
        parts.append(skeleton_capsules(item["cameras"], joints, rig.joint_parents, item["colours"], item["radii"]))
    width = max(len(radius) for _, _, radius, _ in parts)
    a, b, radius, colour = [], [], [], []
    for pa, pb, pr, pc in parts:
        frames_here = len(pa)
        a.append(np.pad(pa, ((0, 0), (0, width - pa.shape[1]), (0, 0))))
        b.append(np.pad(pb, ((0, 0), (0, width - pb.shape[1]), (0, 0))))
        radius.append(np.broadcast_to(np.pad(pr, (0, width - len(pr))), (frames_here, width)))
        colour.append(np.broadcast_to(np.pad(pc, ((0, width - len(pc)), (0, 0))), (frames_here, width, 3)))
    tensor = lambda x: torch.as_tensor(np.concatenate(x), dtype=torch.float32, device=device)  # noqa: E731
    # Cameras differ between rigs only by centre and radius, which the normalised points already hold.
    images = to_uint8(render_capsules(items[0]["cameras"], tensor(a), tensor(b), tensor(radius), tensor(colour)))
    bounds = np.cumsum([0] + [len(pa) for pa, _, _, _ in parts])
    return [images[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def _collect(drawn: list[dict], device: str, render_batch: int) -> Samples:
    rgb = []
    for i in range(0, len(drawn), render_batch):
        rgb += _render_group(drawn[i:i + render_batch], device)
    clips = [item["clip"] for item in drawn]
    return Samples(
        rgb=np.stack([video[:, :-1] for video in rgb]), pose=np.stack([item["pose"] for item in drawn]),
        rgb_rest=np.stack([video[:, -1] for video in rgb]), pose_rest=np.stack([item["pose_rest"] for item in drawn]),
        prompts=[c.prompt for c in clips], motions=[c.motion for c in clips],
        families=[c.creature.family for c in clips],
    )
