"""``animax motion-bench``: motion as an animator sees it, through the real Animate operator.

    animax motion-bench [--rigs NAMES] [--seeds 2] [--steps 20] [--out bench_out/motion]
                        [--requests | --videos DIR] [--gifs]

Headless Blender with the extension installed as ``animax demo`` installs it and a local worker
with the embedded model. For each rig of ``bench_rigs`` (procedural creatures of every family,
Rigify metarigs, glTF round trips), each of its motions and each seed, it presses Animate and
reads the written Action back from Blender frame by frame (the rotations the pose bones carry, the
joints where Blender puts them), then scores it (``motion_metrics``) against the truth (the
procedural motion of that label on that rig, or on a Rigify or glTF rig its training counterpart's
carried onto it as the worker carries a generated one; keyed by the add-on's own Action writer and
read back the same way) and against the goals of docs/quality.md. Contact sheets of every Action, rendered
by Blender, go beside the numbers; ``--gifs`` adds a GIF of every run's Action as Blender plays
it. Every generated pose-map video is kept, so that ``--videos`` scores them again without the
model; ``--requests`` writes what Animate would send instead, for ``bench_generate`` on a machine
without Blender. Needs ``bpy``; imports it only inside ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

SCENE_FPS = 24.0  # Blender's default scene
CLIP_SECONDS = 1.0  # the tiny model's whole clip: 17 frames at 16 fps
SHEET_FRAMES = 5
SHEET_CELL = 112
GIF_WIDTH = 320  # one Action, or truth | generated at half the width each
GOALS = {
    "flips": ("flips (share of bone steps > 45°)", "< 1%", lambda v: v < 0.01),
    "jitter": ("jitter (angular acceleration / truth's, median)", "<= 2", lambda v: v <= 2.0),
    "prompt_effect": ("prompt effect / seed effect (mean over rigs)", ">= 2", lambda v: v >= 2.0),
    "accuracy_procedural": ("action read right, procedural families", ">= 80%", lambda v: v >= 0.8),
    "accuracy_rigify": ("action read right, Rigify humans and quadrupeds", ">= 60%", lambda v: v >= 0.6),
    "jump_lift": ("jumps that lift the body >= 8% of its height", "all", lambda v: v >= 1.0),
    "drift": ("runs that drift > 1 body height without walking", "none", lambda v: v == 0),
    "seconds": ("seconds per generation (2-core CPU, default sampler)", "<= 60", lambda v: v <= 60.0),
}

STILL_BONES_DEG_S2 = 10.0
"""Truths whose bones hardly turn (a jump moves the root alone) have no jitter to compare with."""
REFERENCES = {
    "accuracy_rigify_drawn": "action read right, Rigify humans and quadrupeds, on the creature drawn for them "
                             "(before carrying)",
    "accuracy_truth": "action read right, the true motions keyed and read back (the classifier's ceiling)",
    "accuracy_still": "a still rig read as the prompted action (the classifier's chance level)",
}


class BenchError(ValueError):
    """The benchmark cannot run as asked; the text says what to change."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from backend.arguments import number, output_folder

    parser.add_argument("--rigs", default="all",
                        help="comma-separated rig names or groups (procedural, rigify, gltf; default: all); "
                             "e.g. procedural:quadruped,rigify:basic_human")
    parser.add_argument("--seeds", type=number(minimum=1), default=2,
                        help="seeds per prompt (default 2: the seed effect needs two)")
    parser.add_argument("--steps", type=number(minimum=1), default=20,
                        help="denoising steps (default 20, what the panel asks of the embedded model)")
    parser.add_argument("--out", type=output_folder, default=Path("bench_out/motion"),
                        help="folder for results.json, the contact sheets and the generated pose-map videos "
                             "(default bench_out/motion)")
    parser.add_argument("--videos", type=Path,
                        help="score the pose-map videos an earlier run saved in DIR/videos again, without the "
                             "model: the worker's reconstruction and the add-on's Action writer run as in Animate")
    parser.add_argument("--requests", action="store_true",
                        help="only write what Animate would send the worker for every rig, prompt and seed to "
                             "OUT/requests, for 'python -m backend.evaluation.bench_generate OUT' on a machine "
                             "without Blender (a GPU); then score its videos with --videos OUT")
    parser.add_argument("--size", type=number(minimum=16),
                        help="with --requests: the templates' view size in pixels, for a model trained at that size "
                             "(bench_generate --model; default the tiny preset's)")
    parser.add_argument("--gifs", action="store_true",
                        help="also write OUT/gifs/RIG_MOTION_seedS.gif per run: every scene frame of its Action as "
                             "the contact sheets render it, the truth beside it")


def select_rigs(spec: str) -> list:
    from .bench_rigs import bench_rigs

    rigs = bench_rigs()
    chosen = []
    for word in (w.strip() for w in spec.split(",") if w.strip()):
        matches = [r for r in rigs.values() if word in ("all", r.name, r.group)]
        if not matches:
            groups = sorted({r.group for r in rigs.values()})
            raise BenchError(f"--rigs: no rig or group '{word}'; use all, {', '.join(groups)} or one of "
                             f"{', '.join(rigs)}")
        chosen += [r for r in matches if r not in chosen]
    if not chosen:
        raise BenchError("--rigs is empty; name rigs or groups, or leave it out for all")
    return chosen


# --- reading an Action back from Blender ------------------------------------------------------------
def read_motion(bpy, obj, rig, frames) -> tuple[np.ndarray, np.ndarray]:
    """Local rotations (T, B, 4) and world joints (T, J, 3) of ``rig``'s bones as Blender poses
    ``obj`` at ``frames`` with its active Action."""
    scene = bpy.context.scene
    world = np.array(obj.matrix_world, dtype=np.float64)
    names = rig.bone_names
    leaves = [names[i] for i in np.flatnonzero(rig.leaves)]
    rotations, joints = [], []
    for frame in frames:
        scene.frame_set(int(frame))
        bones = obj.pose.bones
        rotations.append([tuple(bones[n].matrix_basis.to_quaternion()) for n in names])
        points = np.array([bones[n].head for n in names] + [bones[n].tail for n in leaves], dtype=np.float64)
        joints.append(points @ world[:3, :3].T + world[:3, 3])
    return np.array(rotations), np.array(joints)


def action_frames(action) -> np.ndarray:
    first, last = action.frame_range
    return np.arange(int(round(first)), int(round(last)) + 1)


def _addon(name: str):
    from backend.demo import EXTENSION_ID, REPO

    return importlib.import_module(f"bl_ext.{REPO}.{EXTENSION_ID}.{name}")


def key_truth(bpy, obj, bench_rig, motion: str, frames: int, write_action):
    """The procedural motion ``motion`` of the rig's creature, keyed by ``write_action`` (the
    add-on's own writer) at the scene's frame rate; returns the Action."""
    from backend.data.motions import FPS, MOTIONS
    from backend.reconstruction.kinematics import resample

    creature = bench_rig.creature
    rotations, locations = MOTIONS[motion](creature, np.random.default_rng(0), frames, FPS)
    rotations, locations = resample(rotations, locations, FPS, SCENE_FPS)
    root = int(creature.rig.roots[0])
    return write_action(obj, f"truth {motion}", creature.rig.bone_names, rotations, creature.rig.bones[root].name,
                        locations[:, root], frame_start=bpy.context.scene.frame_start)


def untile_views(grid: np.ndarray, views: int) -> np.ndarray:
    """(T, rows*H, cols*W, 3) -> (V, T, H, W, 3): the inverse of the add-on's ``job_future.tile_views``."""
    cols = math.ceil(math.sqrt(views))
    rows = math.ceil(views / cols)
    height, width = grid.shape[1] // rows, grid.shape[2] // cols
    return np.stack([grid[:, r * height:(r + 1) * height, c * width:(c + 1) * width]
                     for r, c in (divmod(v, cols) for v in range(views))])


def generated_pose_video(bpy, views: int = 4) -> np.ndarray:
    """(V, T, H, W, 3) pose maps of the last Animate, read from the preview images it loaded."""
    from PIL import Image

    image = bpy.data.images[bpy.context.scene.animax.results[0].preview]
    first = Path(bpy.path.abspath(image.filepath))
    paths = sorted(first.parent.glob(f"*{first.suffix}"))[: image["animax_frames"]]
    grid = np.stack([np.array(Image.open(path).convert("RGB")) for path in paths])
    return untile_views(grid, views)


def key_counterpart_truth(bpy, obj, rig, body, rotation, motion: str, frames: int, write_action):
    """For a rig the rig world did not make: the procedural motion ``motion`` of its training
    counterpart, carried onto ``body`` (the ``model_body`` a retargeting worker animates) as the
    worker carries a generated one (``counterpart_truth.counterpart_motion``), keyed by
    ``write_action`` at the scene's frame rate; returns the Action. ``rotation``: the rig's upright
    frame, as the request's cameras have it."""
    from backend.worker.jobs import scene_keys

    from .counterpart_truth import counterpart_motion

    truth = counterpart_motion(body.rig, body.creature, body.counterparts, motion, 0, frames, rotation)
    rotations, root_translation = scene_keys(rig, truth, body.kept, SCENE_FPS)
    return write_action(obj, f"truth {motion}", rig.bone_names, rotations, rig.bones[rig.roots[0]].name,
                        root_translation, frame_start=bpy.context.scene.frame_start)


def video_fields(preset) -> dict:
    """What ``saved_video`` needs to know of the model that drew a saved video, saved beside it."""
    return dict(families=np.array(preset.families), retargets=preset.retargets, cast=preset.cast)


def video_preset(data):
    """The tiny preset of the model that drew a saved video (``video_fields``): the training families
    whose colours it drew the rig in (absent: those of the first models), whether it drew the rig's
    counterpart creature (absent: it drew the rig, as the first models did) and whether that was a
    member of its cast (absent: the nearest reference)."""
    from backend.model.presets import TINY

    families = tuple(data["families"]) if "families" in data else TINY.families
    return replace(TINY, families=families, retargets=bool(data["retargets"]) if "retargets" in data else False,
                   cast=bool(data["cast"]) if "cast" in data else False)


def saved_video(obj, rig, sphere, path: Path, rotation=None):
    """The pose maps saved at ``path`` for ``obj`` (snapshot ``rig``), the cameras they were drawn
    from (around ``sphere``, ``templates.framing_sphere``'s, in the upright frame ``rotation``,
    ``snapshot.upright_frame``'s) and the ``ModelBody`` the model that drew them was shown."""
    from animax_addon.core.cameras import make_camera_rig
    from backend.worker.model_body import model_body

    if not path.is_file():
        raise BenchError(f"--videos has no {path}; give the folder of a run of the same rigs, motions and seeds")
    made_for = path.with_name("rig.json")
    if made_for.is_file() and json.loads(made_for.read_text()) != json.loads(json.dumps(rig.to_dict())):
        raise BenchError(f"the videos in {path.parent} were made for another rig snapshot than Blender takes of "
                         f"'{obj.name}' now (bone choice or rest changed); generate them again")
    with np.load(path) as data:
        pose = data["pose"]
        preset = video_preset(data)
    cameras = make_camera_rig(*sphere, pose.shape[2], rotation=rotation)
    return pose, cameras, model_body(rig, cameras, preset)


def replay(bpy, obj, rig, video, prompt: str):
    """Key a saved video (``saved_video``'s) on ``obj`` as Animate would have: the worker's
    reconstruction at the scene's frame rate, then the add-on's Action writer; returns the Action."""
    from backend.worker.jobs import scene_motion

    pose, cameras, body = video
    _, rotations, root_translation = scene_motion(rig, cameras, pose, SCENE_FPS, body)
    return _addon("action").write_action(obj, f"AnimaX {prompt}"[:56], rig.bone_names, rotations,
                                         rig.bones[rig.roots[0]].name, root_translation,
                                         frame_start=bpy.context.scene.frame_start)


def drawn_motion(video):
    """The motion of the creature the model drew in a saved video (``saved_video``'s), as the worker
    reconstructs it before carrying it onto the rig: (the creature's rig, its joints (T, J, 3) at the
    model's frame rate), or None where the model drew the rig itself. Read beside the carried
    Action, it tells what the drawing loses from what the carrying does."""
    from backend.reconstruction.reconstruct import GENERATED, reconstruct

    pose, _, body = video
    if body.creature is None:
        return None
    return body.drawn, reconstruct(body.drawn, body.cameras, pose, colours=body.colours, **GENERATED).joints


def _folder(bench_rig) -> str:
    return bench_rig.name.replace(":", "_")


def video_name(motion: str, seed: int) -> str:
    return f"{motion}_seed{seed}.npz"


def write_request(bpy, obj, rig, bench_rig, seeds, steps: int, duration: int, folder: Path,
                  size: int | None = None) -> None:
    """What Animate sends the worker for each prompt and seed of this rig, in ``folder``: rig.json,
    cameras.json, the template renders (template_V.png, ``size`` px, default the tiny preset's) and
    jobs.json (prompt, seed, options)."""
    from PIL import Image

    from animax_addon.core.request import Options
    from backend.model import MODEL_FPS
    from backend.model.presets import TINY

    job = _addon("job")
    panel = bpy.context.scene.animax
    size = size or TINY.size
    cameras = _addon("templates").camera_rig(obj, rig, size)  # as Animate places them
    templates = _addon("templates").render_templates(obj, cameras, size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rig.json").write_text(json.dumps(rig.to_dict()))
    (folder / "cameras.json").write_text(json.dumps(cameras.to_dict()))
    for v, image in enumerate(templates):
        Image.fromarray(image).save(folder / f"template_{v}.png")
    frames = job.model_frames(duration, SCENE_FPS, MODEL_FPS, TINY.num_frames)
    jobs = [{"video": video_name(motion, seed), "prompt": bench_rig.prompt(motion),
             "options": Options(steps=steps, guidance=panel.guidance, seed=seed, frames=frames,
                                fps=SCENE_FPS).to_dict()}
            for motion in bench_rig.motions for seed in seeds]
    (folder / "jobs.json").write_text(json.dumps(jobs, indent=1))


# --- contact sheets --------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_stdout():
    """Blender's renderer prints a line per saved image on the C-level stdout; keep the log readable."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def render_frames(bpy, obj, action, frames, size: int, folder: Path) -> list:
    """Workbench renders (``size`` pixels square, through ``_setup_render``'s camera) of ``action``
    on ``obj`` at ``frames``."""
    from PIL import Image

    _addon("job").use_action(obj, action)
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = size
    cells = []
    for frame in frames:
        scene.frame_set(int(frame))
        path = folder / f"cell_{frame}.png"
        scene.render.filepath = str(path)
        with _quiet_stdout():
            bpy.ops.render.render(write_still=True)
        with Image.open(path) as image:
            cells.append(image.convert("RGB"))
    return cells


def sheet_frames(action) -> np.ndarray:
    """``SHEET_FRAMES`` frames spread over the Action's range."""
    frames = action_frames(action)
    return frames[np.linspace(0, len(frames) - 1, SHEET_FRAMES).round().astype(int)]


def contact_sheet(rows: list[tuple[str, list]], path: Path) -> Path:
    """One row of frames per labelled Action, the label above its row."""
    from PIL import Image, ImageDraw

    label_h = 14
    width = SHEET_FRAMES * SHEET_CELL
    sheet = Image.new("RGB", (width, len(rows) * (SHEET_CELL + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, cells) in enumerate(rows):
        top = r * (SHEET_CELL + label_h)
        draw.text((4, top + 1), label, fill=(0, 0, 0))
        for c, cell in enumerate(cells):
            sheet.paste(cell.resize((SHEET_CELL, SHEET_CELL)), (c * SHEET_CELL, top + label_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def action_gif(bpy, obj, panels: list[tuple[str, object]], path: Path, folder: Path) -> Path:
    """A looping GIF at the scene's frame rate of the labelled Actions side by side on ``obj``, one
    frame per scene frame of their range, rendered as the contact sheets are."""
    from PIL import Image, ImageDraw

    from .gifs import save_gif

    size = GIF_WIDTH // len(panels)
    ranges = np.array([action_frames(action)[[0, -1]] for _, action in panels])
    frames = np.arange(ranges[:, 0].min(), ranges[:, 1].max() + 1)
    films = [render_frames(bpy, obj, action, frames, size, folder) for _, action in panels]
    images = []
    for cells in zip(*films):
        image = Image.new("RGB", (size * len(cells), size))
        draw = ImageDraw.Draw(image)
        for p, (cell, (label, _)) in enumerate(zip(cells, panels)):
            image.paste(cell, (p * size, 0))
            draw.multiline_text((p * size + 3, 2), label, fill=(0, 0, 0), spacing=1)
        images.append(image)
    render = bpy.context.scene.render
    return save_gif(path, images, render.fps / render.fps_base)


def _setup_render(bpy, obj) -> None:
    from backend.demo import add_preview_camera

    add_preview_camera(bpy, obj, SHEET_CELL)
    render = bpy.context.scene.render
    render.engine = "BLENDER_WORKBENCH"
    render.resolution_percentage = 100
    render.image_settings.file_format = "PNG"
    scene = bpy.context.scene
    if scene.world is None:
        scene.world = bpy.data.worlds.new("AnimaX sheet")
    scene.world.color = (0.8, 0.8, 0.8)  # a light ground, so dark creatures show


# --- one rig ---------------------------------------------------------------------------------------
def _empty_scene(bpy) -> None:
    for collection in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.actions,
                       bpy.data.materials, bpy.data.cameras, bpy.data.images, bpy.data.worlds):
        for item in list(collection):
            collection.remove(item)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = int(SCENE_FPS), 1.0
    scene.frame_start = 1


def bench_rig(bpy, bench_rig, seeds, steps: int, classifier, out: Path, log, videos: Path | None = None,
              requests: bool = False, gifs: bool = False, size: int | None = None) -> dict:
    """Every motion and seed of one rig: the scored runs, the truth's scores, the prompt effect;
    with ``gifs``, a GIF per run (its Action, the truth's beside it). ``requests`` writes what Animate
    would send a worker instead, templates of ``size`` px (default the tiny preset's)."""
    from animax_addon.core.cameras import make_camera_rig
    from backend.demo import DemoError, animate
    from backend.model import MODEL_FPS
    from backend.model.loading import tiny_preset
    from backend.model.presets import TINY_WEIGHTS
    from backend.reconstruction.kinematics import resample_positions
    from backend.worker.model_body import model_body

    from .classifier import FRAMES, predict
    from .motion_metrics import motion_distance, motion_scores, prompt_and_seed_effect

    _empty_scene(bpy)
    obj = bench_rig.build(bpy)
    try:
        rig = _addon("snapshot").rig_from_armature(obj)
    except ValueError as exc:
        log(f"{bench_rig.name}: refused: {exc}")
        return {"rig": bench_rig.name, "group": bench_rig.group, "refused": str(exc)}
    rest = rig.joints_rest
    duration = int(round(CLIP_SECONDS * SCENE_FPS)) + 1
    if requests:
        write_request(bpy, obj, rig, bench_rig, seeds, steps, duration, out / "requests" / _folder(bench_rig),
                      size)
        log(f"{bench_rig.name}: request written ({len(bench_rig.motions) * len(seeds)} generations)")
        return {"rig": bench_rig.name, "group": bench_rig.group, "request": True}

    def classify(joints):
        return predict(classifier, resample_positions(joints, SCENE_FPS, MODEL_FPS)[:FRAMES], rig)

    truths, runs, motions, rows, films = {}, [], {}, [], []
    preset = tiny_preset(TINY_WEIGHTS)
    fields = video_fields(preset)  # the live worker's model's, saved with its videos
    # A still rig read as each prompted motion: the classifier's chance level on this rig's shape.
    still = classify(np.repeat(rest[None], duration, axis=0))
    frame = _addon("snapshot").upright_frame(obj)
    sphere = _addon("templates").framing_sphere(obj, rig, frame.rotation)  # once
    write_action = _addon("action").write_action
    if bench_rig.creature is None:  # Rigify's and glTF rigs: the truth of the body a retargeting worker animates
        drawn_by = preset
        first = None if videos is None else videos / "videos" / _folder(bench_rig) / video_name(bench_rig.motions[0],
                                                                                               seeds[0])
        if first is not None and first.is_file():  # the model that drew the saved videos: its cast, say
            with np.load(first) as data:
                drawn_by = video_preset(data)
        cameras = make_camera_rig(*sphere, preset.size, rotation=frame.rotation)
        body = model_body(rig, cameras, replace(drawn_by, retargets=True))
    for motion in bench_rig.motions:
        if bench_rig.creature is not None:
            action = key_truth(bpy, obj, bench_rig, motion, FRAMES, write_action)
        else:  # their counterpart's motion, carried onto them as the worker carries it
            action = key_counterpart_truth(bpy, obj, rig, body, frame.rotation, motion, FRAMES, write_action)
        rotations, joints = read_motion(bpy, obj, rig, action_frames(action))
        truths[motion] = dict(motion_scores(rotations, joints, rest, SCENE_FPS), read_as=classify(joints))
        truths[motion]["joints"] = joints
        rows.append((f"truth: {motion}", action))
        truth_panel = [(f"truth: {motion}", action)]
        for seed in seeds:
            text = bench_rig.prompt(motion)
            video_path = Path(_folder(bench_rig)) / video_name(motion, seed)
            if videos is not None:
                seconds = None
                video = saved_video(obj, rig, sphere, videos / "videos" / video_path, frame.rotation)
                action = replay(bpy, obj, rig, video, text)
            else:
                try:
                    seconds = animate(bpy, obj, text, seed=seed, steps=steps, duration=duration)
                except DemoError as exc:
                    log(f"{bench_rig.name}: refused: {exc}")
                    return {"rig": bench_rig.name, "group": bench_rig.group, "refused": str(exc)}
                action = obj.animation_data.action
                (out / "videos" / video_path).parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(out / "videos" / video_path, pose=generated_pose_video(bpy), **fields)
                (out / "videos" / video_path).with_name("rig.json").write_text(json.dumps(rig.to_dict()))
                video = saved_video(obj, rig, sphere, out / "videos" / video_path, frame.rotation)
            rotations, joints = read_motion(bpy, obj, rig, action_frames(action))
            run = dict(motion_scores(rotations, joints, rest, SCENE_FPS), motion=motion, prompt=text, seed=seed,
                       seconds=seconds, read_as=classify(joints), still_read_as=still)
            drawn = drawn_motion(video)
            if drawn is not None:  # the creature's motion is at the model's frame rate already
                run["drawn_read_as"] = predict(classifier, drawn[1][:FRAMES], drawn[0])
            truth = truths[motion]
            if truth["acceleration_deg_s2"] >= STILL_BONES_DEG_S2:
                run["jitter"] = run["acceleration_deg_s2"] / truth["acceleration_deg_s2"]
                run["range_vs_truth"] = run["range_deg"] / truth["range_deg"]
            run["distance_to_truth"] = motion_distance(joints, truth["joints"], rest)
            motions[text, seed] = joints
            runs.append(run)
            rows.append((f"{text} / seed {seed}: read as {run['read_as']}", action))
            if gifs:
                run["gif"] = str(out / "gifs" / f"{_folder(bench_rig)}_{motion}_seed{seed}.gif")
                films.append((run["gif"], [*truth_panel, (f"{text}\nseed {seed}: read as {run['read_as']}", action)]))
            drawn_as = f" (the creature drawn: {run['drawn_read_as']})" if "drawn_read_as" in run else ""
            log(f"{bench_rig.name}: \"{text}\" seed {seed}: read as {run['read_as']}{drawn_as}, "
                f"flips {run['flips']:.1%}, range {run['range_deg']:.0f}°, movement {run['movement']:.2f}"
                + ("" if seconds is None else f", {seconds:.1f} s"))
    _setup_render(bpy, obj)
    with tempfile.TemporaryDirectory(prefix="animax-sheet-") as folder:
        cells = [(label, render_frames(bpy, obj, action, sheet_frames(action), SHEET_CELL, Path(folder)))
                 for label, action in rows]
        sheet = contact_sheet(cells, out / "sheets" / f"{_folder(bench_rig)}.png")
        for path, panels in films:
            action_gif(bpy, obj, panels, Path(path), Path(folder))
    for truth in truths.values():
        del truth["joints"]
    return {"rig": bench_rig.name, "group": bench_rig.group, "family": bench_rig.family, "bones": rig.num_bones,
            "joints": rig.num_joints, "runs": runs, "truth": truths,
            "effect": prompt_and_seed_effect(motions, rest), "sheet": str(sheet)}


# --- the summary -------------------------------------------------------------------------------------
def summarise(results: list[dict]) -> dict:
    """The goals' numbers over all rigs that ran (``GOALS`` keys), plus counts."""
    ran = [r for r in results if "runs" in r]
    runs = [run for r in ran for run in r["runs"]]
    summary = {"rigs": len(results), "refused": [r["rig"] for r in results if "refused" in r], "runs": len(runs)}
    if not runs:
        return summary
    summary["flips"] = float(np.mean([run["flips"] for run in runs]))
    jitter = [run["jitter"] for run in runs if "jitter" in run]
    if jitter:
        summary["jitter"] = float(np.median(jitter))
    ratios = [r["effect"]["ratio"] for r in ran if r["effect"]["ratio"] is not None]
    if ratios:
        summary["prompt_effect"] = float(np.mean(ratios))
    for key, groups in (("accuracy_procedural", ("procedural",)), ("accuracy_rigify", ("rigify", "gltf"))):
        scored = [run["read_as"] == run["motion"] for r in ran if r["group"] in groups for run in r["runs"]]
        if scored:
            summary[key] = float(np.mean(scored))
    scored = [run["still_read_as"] == run["motion"] for run in runs if "still_read_as" in run]
    if scored:
        summary["accuracy_still"] = float(np.mean(scored))  # chance: a rig that does not move
    drawn = [run["drawn_read_as"] == run["motion"] for r in ran if r["group"] in ("rigify", "gltf")
             for run in r["runs"] if "drawn_read_as" in run]
    if drawn:
        summary["accuracy_rigify_drawn"] = float(np.mean(drawn))  # before carrying: the drawing's share
    truths = [truth["read_as"] == motion for r in ran for motion, truth in r.get("truth", {}).items()]
    if truths:
        summary["accuracy_truth"] = float(np.mean(truths))  # the ceiling: the true motions, read back
    jumps = [run["lift"] >= 0.08 for run in runs if run["motion"] == "jump"]
    if jumps:
        summary["jump_lift"] = float(np.mean(jumps))
    summary["drift"] = sum(run["drift"] > 1.0 for run in runs if run["motion"] != "walk")
    # the first Animate of a run starts the worker and loads the model: not a generation's time
    seconds = [run["seconds"] for run in runs[1:] if run["seconds"] is not None]
    if seconds:
        summary["seconds"] = float(np.median(seconds))
    return summary


def goal_table(summary: dict) -> str:
    lines = ["| measure | goal | now | met |", "| --- | --- | ---: | --- |"]
    for key, (what, goal, met) in GOALS.items():
        if key not in summary:
            continue
        value = summary[key]
        shown = (f"{value:.1%}" if key.startswith(("flips", "accuracy", "jump")) else
                 f"{value:d}" if isinstance(value, int) else f"{value:.2f}")
        lines.append(f"| {what} | {goal} | {shown} | {'yes' if met(value) else 'no'} |")
    for key, what in REFERENCES.items():
        if key in summary:
            lines.append(f"| {what} | | {summary[key]:.1%} | |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    from backend.demo import installed_extension

    from .classifier import train_classifier

    if args.requests and args.videos is not None:
        raise BenchError("--requests writes what the model needs and --videos scores what it made: give one")
    if args.size and not args.requests:
        raise BenchError("--size sets the templates that --requests writes; a run or --videos takes the size of the "
                         "worker or of the videos")
    if args.requests and args.gifs:
        raise BenchError("--requests keys no Actions to make GIFs of; give --gifs to a run or to --videos")
    if args.videos is not None and not (args.videos / "videos").is_dir():
        raise BenchError(f"--videos {args.videos} holds no videos/ folder; give the --out folder of an earlier run")
    rigs = select_rigs(args.rigs)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {line}", flush=True)

    classifier = None
    if not args.requests:
        log("training the action classifier on ground-truth procedural clips")
        classifier = train_classifier()
    results = []
    with installed_extension() as (bpy, sentence):
        log(sentence)
        for bench in rigs:
            results.append(bench_rig(bpy, bench, list(range(args.seeds)), args.steps, classifier, args.out, log,
                                     args.videos, args.requests, args.gifs, args.size))
            report = {"command": " ".join(["animax", "motion-bench", *sys.argv[2:]]), "seeds": args.seeds,
                      "steps": args.steps, "videos": None if args.videos is None else str(args.videos),
                      "scene_fps": SCENE_FPS, "summary": summarise(results), "rigs": results}
            (args.out / "results.json").write_text(json.dumps(report, indent=1, default=_plain))
    log(f"done: {args.out / 'results.json'}")
    print(goal_table(report["summary"]))
    return report


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON")


