"""Held-out evaluation of a generator of four-view pose-map videos (``animax eval``, see command.py).

Each clip is a procedural creature doing a labelled motion. The generator under test gets what
the worker gets (prompt, RGB and pose-map templates of the rig at rest, cameras) and returns
pose-map videos; the worker's reconstruction turns them into a 3D motion, which is scored:

- action: a classifier trained on ground-truth motions of the training families labels the
  reconstructed motion; correct when the label is the prompted motion;
- multi-view consistency: mean reprojection error (px) of the triangulated joints, over the joints
  the 2D detector found in some view (the share found is reported beside it), and bone-length
  drift (std / mean of each bone's triangulated length over time, in %);
- 2D placement: the share of the per-view 2D joints found within a disc radius of the true
  joint's projection, and the share found two radii or more away (another joint's colour). For the
  oracles it measures the VAE's blur and the detector; for a model it also holds how far the
  motion is from this particular truth (as MPJPE does);
- smoothness: mean joint acceleration of the reconstructed motions over that of the ground truth
  of the same clips (1 = as smooth as the truth, larger = jittery);
- MPJPE: mean joint distance to the ground-truth motion in % of the rig's radius (informative
  only: a prompt does not fix one exact motion).

Splits: ``heldout-families`` draws creatures of families never trained on (many-legged, laptop);
``heldout-proportions`` draws training families from another seed range, so the proportions
(continuous random lengths, counts of spine, tail and leg bones) are new draws.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from animax_addon.core.cameras import CameraRig
from animax_addon.core.pose_maps import disc_radius
from backend.data.motions import Clip
from backend.data.dataset import draw_clip
from backend.data.render import render_rgb
from backend.model.presets import TINY
from backend.reconstruction.reconstruct import GENERATED, Reconstruction, reconstruct

from . import SPLITS
from .classifier import predict, train_classifier

SPLIT_SEEDS = {"heldout-families": 1, "heldout-proportions": 2, "heldout-rests": 3}
"""Mixed into the seed, so the held-out splits draw other clips than training data, which uses
SeedSequence(seed)."""
RESTED_SPLITS = ("heldout-rests",)
"""Splits whose creatures are re-rested before they move, each in a frame of one of its own motions,
as artists model rigs in many poses (``variety.varied_rest``)."""


@dataclass
class EvalItem:
    """One held-out clip with the inputs a generator gets (and the truth it must not see)."""

    clip: Clip
    cameras: CameraRig
    rgb_templates: np.ndarray  # (V, S, S, 3)
    pose_templates: np.ndarray  # (V, S, S, 3)
    pose_truth: np.ndarray  # (V, T, S, S, 3) ground-truth pose maps (the oracle's answer)

    @property
    def prompt(self) -> str:
        return self.clip.prompt


Generator = Callable[[EvalItem], np.ndarray]


def draw_item(seed: int, families, size: int = TINY.size, frames: int = TINY.num_frames,
              rested: bool = False) -> EvalItem:
    """One clip drawn as ``backend.data.dataset`` draws a training sample, with its templates."""
    drawn = draw_clip(seed, size, frames, families, None, rested)
    clip, cameras = drawn["clip"], drawn["cameras"]
    rig = clip.creature.rig
    return EvalItem(
        clip=clip, cameras=cameras,
        rgb_templates=render_rgb(cameras, rig.joints_rest[None], rig.joint_parents, drawn["colours"],
                                 drawn["radii"])[:, 0],
        pose_templates=drawn["pose_rest"], pose_truth=drawn["pose"],
    )


def draw_items(count: int, seed: int, split: str, size: int = TINY.size) -> list[EvalItem]:
    seeds = np.random.SeedSequence((seed, SPLIT_SEEDS[split])).generate_state(count, dtype=np.uint64)
    return [draw_item(int(s), SPLITS[split], size, rested=split in RESTED_SPLITS) for s in seeds]


def model_generator(pipeline, steps: int = TINY.num_inference_steps, guidance: float = TINY.guidance_scale,
                    seed: int = 0, text_guidance: float | None = None, guidance_end: float = 1.0,
                    embed: Callable[[str], torch.Tensor] | None = None) -> Generator:
    """The model under test, called as the worker calls it; sees only prompt, templates, cameras.

    ``embed(prompt)`` gives the prompt's embeddings where the pipeline has no text encoder.
    """
    def generate(item: EvalItem) -> np.ndarray:
        text = dict(prompt=item.prompt) if embed is None else dict(prompt=None, prompt_embeds=embed(item.prompt))
        return pipeline(**text, rgb_templates=item.rgb_templates, pose_templates=item.pose_templates,
                        cameras=item.cameras, num_frames=len(item.clip.joints), num_inference_steps=steps,
                        guidance_scale=guidance, text_guidance_scale=text_guidance, guidance_end=guidance_end,
                        generator=torch.Generator().manual_seed(seed)).pose_videos
    return generate


def oracle_generator(item: EvalItem) -> np.ndarray:
    """Perfect generation: the ground-truth pose maps. Its scores are the reconstruction's ceiling."""
    return item.pose_truth


@torch.no_grad()
def vae_round_trip(pipeline, videos: np.ndarray) -> np.ndarray:
    """``videos`` (V, T, S, S, 3) uint8 encoded and decoded by ``pipeline``'s VAE: what any generator
    that decodes with this VAE can at best draw (perfect latents, the VAE's own blur)."""
    return pipeline.decode(pipeline.encode_videos(videos, pipeline.device))


def vae_oracle_generator(pipeline) -> Generator:
    """The ground-truth pose maps after a round trip through ``pipeline``'s VAE (:func:`vae_round_trip`):
    the ceiling of any generator that decodes with this VAE."""
    def generate(item: EvalItem) -> np.ndarray:
        return vae_round_trip(pipeline, item.pose_truth)
    return generate


GENERATOR_FILE = "generator.json"
"""Beside saved videos: what generated them (a name and its settings)."""


class SavedVideosMissing(FileNotFoundError):
    """A folder or a clip that :func:`saved_generator` has no videos for; the text names it."""


def clip_key(item: EvalItem) -> str:
    """A file name for a clip that depends on the clip alone (its true pose maps), not on the split,
    the position in it or the generator."""
    return hashlib.sha1(item.pose_truth.tobytes()).hexdigest()[:16]


def saving_generator(generate: Generator, folder: str | Path, about: dict) -> Generator:
    """``generate``, keeping each clip's pose-map videos in ``folder`` (one ``.npz`` a clip, and
    ``about`` the generator in GENERATOR_FILE), so that they can be scored again without the model
    (:func:`saved_generator`): after a change of the reconstruction or the classifier, or on a CPU
    machine after generating on a GPU one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / GENERATOR_FILE).write_text(json.dumps(about, indent=1) + "\n")

    def generate_and_keep(item: EvalItem) -> np.ndarray:
        videos = generate(item)
        np.savez_compressed(folder / f"{clip_key(item)}.npz", pose_videos=videos, prompt=item.prompt)
        return videos
    return generate_and_keep


def saved_generator(folder: str | Path) -> tuple[Generator, dict]:
    """The videos that :func:`saving_generator` kept in ``folder``, and what generated them. A clip
    that has none is a :class:`SavedVideosMissing` naming it."""
    folder = Path(folder)
    about = folder / GENERATOR_FILE
    if not about.is_file():
        raise SavedVideosMissing(f"{about} is missing: {folder} holds no videos saved by `animax eval --save-videos`")

    def load(item: EvalItem) -> np.ndarray:
        path = folder / f"{clip_key(item)}.npz"
        if not path.is_file():
            raise SavedVideosMissing(f"no saved videos for the clip {item.prompt!r} ({path}); they are saved for "
                                    "the --seed and the first --count clips of each split they were made with")
        with np.load(path) as data:
            return data["pose_videos"]
    return load, json.loads(about.read_text())


def _mean_acceleration(joints: np.ndarray, radius: float) -> float:
    return float(np.linalg.norm(np.diff(joints, 2, axis=0), axis=-1).mean() / radius)


def bone_length_drift(joints: np.ndarray, joint_parents: np.ndarray) -> float:
    """Mean over bones of std / mean of the bone's length over time (joints (T, J, 3)), in %."""
    child = np.flatnonzero(np.asarray(joint_parents) >= 0)
    lengths = np.linalg.norm(joints[:, child] - joints[:, np.asarray(joint_parents)[child]], axis=-1)
    return float(100 * (lengths.std(axis=0) / np.maximum(lengths.mean(axis=0), 1e-9)).mean())


def placement_2d(item: EvalItem, detected: np.ndarray) -> tuple[float, float]:
    """Shares of the (view, frame, joint) triples whose 2D joint was found within a disc radius of
    where the true joint projects, and found two radii or more away from it (a colour taken for
    another joint's). The rest were not found or lie in between."""
    true_pixels, _ = item.cameras.project(item.cameras.to_normalized(item.clip.joints))
    with np.errstate(invalid="ignore"):
        distance = np.linalg.norm(detected - true_pixels, axis=-1)  # NaN where not found
    radius = disc_radius(item.cameras.width)
    return float((distance < radius).mean()), float((distance >= 2 * radius).mean())


def score(item: EvalItem, result: Reconstruction, classifier) -> dict:
    """The metrics of one clip (see the module doc)."""
    clip, rig = item.clip, item.clip.creature.rig
    radius = rig.bounding_sphere()[1]
    label = predict(classifier, result.joints, rig)
    seen = np.isfinite(result.reprojection_error)  # joints two views detected
    placed, misplaced = placement_2d(item, result.detected)
    return {
        "family": clip.creature.family, "motion": clip.motion, "prompt": clip.prompt, "predicted": label,
        "correct": label == clip.motion, "detected": float(seen.mean()),
        "placed_2d": placed, "misplaced_2d": misplaced,
        "reprojection_px": float(result.reprojection_error[seen].mean()) if seen.any() else None,
        "bone_drift_pct": bone_length_drift(result.triangulated, rig.joint_parents),
        "acceleration": _mean_acceleration(result.joints, radius),
        "truth_acceleration": _mean_acceleration(clip.joints, radius),
        "mpjpe_pct": float(100 * np.linalg.norm(result.joints - clip.joints, axis=-1).mean() / radius),
        "confidence": float(result.confidence.mean()),
    }


def summarise(clips: list[dict]) -> dict:
    """Aggregates over clips; smoothness is a ratio of means, so near-still clips cannot dominate it.

    The reprojection error is averaged over the clips where any joint was detected (None if none).
    """
    def mean(key):
        values = [c[key] for c in clips if c[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "clips": len(clips), "accuracy": mean("correct"), "detected": mean("detected"),
        "placed_2d": mean("placed_2d"), "misplaced_2d": mean("misplaced_2d"),
        "reprojection_px": mean("reprojection_px"),
        "bone_drift_pct": mean("bone_drift_pct"), "smoothness": mean("acceleration") / mean("truth_acceleration"),
        "mpjpe_pct": mean("mpjpe_pct"), "confidence": mean("confidence"),
    }


def summarise_families(clips: list[dict]) -> dict[str, dict]:
    """:func:`summarise` per family, each with how often each label was predicted: a split's mean
    can hide a family the model never gets right, and the labels say what it does instead."""
    families = {}
    for family in sorted({c["family"] for c in clips}):
        rows = [c for c in clips if c["family"] == family]
        predicted = Counter(c["predicted"] for c in rows)
        families[family] = {**summarise(rows), "predicted": dict(predicted.most_common())}
    return families


@dataclass
class SplitResult:
    summary: dict
    clips: list[dict]
    examples: list[tuple[EvalItem, np.ndarray, Reconstruction]] = field(default_factory=list)

    @property
    def families(self) -> dict[str, dict]:
        return summarise_families(self.clips)


def reconstruct_and_score(item: EvalItem, videos: np.ndarray, classifier) -> tuple[Reconstruction, dict]:
    # Reconstructed as the worker reconstructs generated videos, so the numbers are what a user gets.
    result = reconstruct(item.clip.creature.rig, item.cameras, videos, **GENERATED)
    return result, score(item, result, classifier)


_process_classifier = None
"""A scoring process's copy of the classifier, sent once when the process starts (a random forest
pickles to tens of MB: sending it with every clip would cost more than scoring the clip)."""


def _start_scoring_process(classifier) -> None:
    global _process_classifier
    # One thread each: N processes that each spread BLAS, torch and the forest's predict over every
    # core would fight over the cores instead of sharing them.
    threadpool_limits(1)
    torch.set_num_threads(1)
    classifier.set_params(n_jobs=1)
    _process_classifier = classifier


def _reconstruct_and_score_here(item: EvalItem, videos: np.ndarray) -> tuple[Reconstruction, dict]:
    return reconstruct_and_score(item, videos, _process_classifier)


def scoring_pool(processes: int, classifier) -> ProcessPoolExecutor:
    """``processes`` scoring processes holding ``classifier``, for :func:`evaluate`'s ``pool``. One
    pool serves every split, so each process starts (and imports torch) once."""
    # spawn, not fork: the parent may hold a CUDA context, which a forked child cannot use.
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_scoring_process, initargs=(classifier,))


def evaluate(generate: Generator, count: int, seed: int = 0, split: str = "heldout-families", classifier=None,
             keep: int = 0, log: Callable[[str], None] | None = None,
             pool: ProcessPoolExecutor | None = None, size: int = TINY.size) -> SplitResult:
    """Score ``generate`` on ``count`` clips of ``split`` at ``size`` px a view; the first ``keep`` are kept
    for GIFs.

    With a ``pool`` (:func:`scoring_pool`, holding the same classifier) the clips are generated
    first, one after another (the model is the one GPU user), then reconstructed and scored there.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    classifier = train_classifier() if classifier is None else classifier
    items = draw_items(count, seed, split, size)
    rows, examples = [], []

    def record(i: int, item: EvalItem, videos: np.ndarray, result: Reconstruction, row: dict, seconds: float):
        rows.append(row)
        if i < keep:
            examples.append((item, videos, result))
        if log:
            log(f"[{split} {i + 1}/{count}] {row['prompt']!r}: {row['predicted']} "
                f"({'ok' if row['correct'] else 'wrong'}), {row['detected']:.0%} of joints detected, {seconds:.0f} s")

    if pool is None:
        for i, item in enumerate(items):
            start = time.perf_counter()
            videos = generate(item)
            record(i, item, videos, *reconstruct_and_score(item, videos, classifier), time.perf_counter() - start)
    else:
        start = time.perf_counter()
        all_videos = [generate(item) for item in items]
        if log:
            log(f"[{split}] generated {count} clips in {time.perf_counter() - start:.0f} s")
        scored = pool.map(_reconstruct_and_score_here, items, all_videos)
        for i, (item, videos, (result, row)) in enumerate(zip(items, all_videos, scored)):
            record(i, item, videos, result, row, time.perf_counter() - start)
    return SplitResult(summarise(rows), rows, examples)
