"""``animax dataset``: training samples from a folder of rigged, animated assets, with Blender.

    animax dataset ASSETS_DIR --out DIR [--frames 17] [--stride 8] [--size 64] [--min-motion 0.05] [--shard I/N]

Every .blend, .glb/.gltf and .fbx in ASSETS_DIR (sorted, subfolders included) is opened in a fresh
factory scene. For every armature and every Action that animates it, the Action is sampled at the
model's 16 fps over its frame range and cut into clips of ``--frames`` frames every ``--stride``
samples. Each clip becomes one sample in the format training reads (``Samples``): 4-view Workbench
RGB videos and pose-map videos of the posed character, and the rest-pose templates, all from the
product's camera rig around the rig's rest bounding sphere (as the add-on sees it).

Skipped, with the reason in ``OUT/report.json`` and the printed summary: files Blender cannot
import, armatures that cannot be snapshotted or have no visible skinned mesh, Actions shorter than
one clip, and clips whose motion is negligible (paper A.1): every joint stays within
``--min-motion`` x the rest bounding-sphere radius of where it was on the clip's first frame.

Captions: ``<asset stem>.<action name>.txt`` beside the asset, else ``<asset stem>.txt``, else the
Action's name made readable ("FoxWalk_cycle.001" -> "fox walk cycle").

Outputs: ``shards/`` (per asset, ``<key>.json``, the record of a finished asset: its clips' ``index``
entries, its skips, the settings, and the ``<key>-<part>.npz`` files that hold its clips, at most
``PART_CLIPS`` each, in the format training reads, ``Samples``; ``motions`` holds the readable Action
name when that is the caption, "" for a sidecar caption; ``families`` the asset's file name),
``cameras.json`` (the camera rig in normalised rig space, shared by all samples), ``index.json`` (per
sample of every finished asset: asset, armature, action, scene frames, caption, and the rest bounding
sphere's centre and radius that map world space to normalised space), ``report.json``.

Resumable and shared: an asset whose record exists is not built again, and every file is written
under a temporary name and then renamed, so a stopped build loses at most the asset it was on.
``--shard I/N`` builds the assets i (in sorted order) with i % N == I, so N machines writing into one
folder build each asset once; ``index.json`` and ``report.json`` list the finished assets of the
folder, whoever built them (the last machine to finish writes the complete ones).

``bpy`` is imported inside the functions: the CLI imports this module on machines without it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import render_pose_maps
from backend.arguments import output_folder, shard
from backend.files import write_atomically
from backend.model import MODEL_FPS

ASSET_SUFFIXES = (".blend", ".glb", ".gltf", ".fbx")
MIN_MOTION = 0.05
"""Default negligible-motion threshold: the largest joint displacement from a clip's first frame,
as a fraction of the rest bounding-sphere radius (0.05 is about one pixel at 64 px, where the
sphere spans 60% of the frame)."""
PART_CLIPS = 8
"""Clips per shard file: what training holds in RAM while it encodes a file (3.6 GB at 480 px x 81 frames)."""


class DatasetError(ValueError):
    """The dataset cannot be built; the message says what to change."""


def add_dataset_arguments(parser) -> None:
    parser.add_argument("assets", type=Path, help="folder of .blend / .glb / .gltf / .fbx files with Actions")
    parser.add_argument("--out", type=output_folder, required=True,
                        help="output folder (shards/, index.json, ...); a rerun goes on where it stopped")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip, 1 + 4k (default 17: tiny; full: 81)")
    parser.add_argument("--stride", type=int, default=8, help="samples between clip starts (default 8)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    parser.add_argument("--min-motion", type=float, default=MIN_MOTION,
                        help=f"skip clips whose joints all move less than this x the rig's radius (default {MIN_MOTION})")
    parser.add_argument("--shard", type=shard, default=(0, 1), metavar="I/N",
                        help="build only the assets i (sorted by path) with i %% N == I: one of N machines sharing "
                             "--out (default 0/1: all)")


def readable(name: str) -> str:
    """An Action name as words: 'FoxWalk_cycle.001' -> 'fox walk cycle'."""
    name = re.sub(r"\.\d{3}$", "", name)  # Blender's duplicate suffix
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)  # camelCase
    return " ".join(re.split(r"[\s_|.\-]+", name)).strip().lower()


def caption_for(asset: Path, action: str) -> tuple[str, str]:
    """(caption, motion label): a sidecar's text with label "", else the readable Action name as both."""
    for sidecar in (asset.with_name(f"{asset.stem}.{action}.txt"), asset.with_suffix(".txt")):
        if sidecar.is_file():
            text = " ".join(sidecar.read_text(encoding="utf-8").split())
            if text:
                return text, ""
    label = readable(action)
    return label, label


def clip_starts(samples: int, frames: int, stride: int) -> list[int]:
    return list(range(0, samples - frames + 1, stride))


def sample_times(frame_range: tuple[float, float], scene_fps: float) -> np.ndarray:
    """Scene frames at the model's 16 fps from the start of ``frame_range`` to its end."""
    start, end = frame_range
    count = int(np.floor((end - start) * MODEL_FPS / scene_fps + 1e-6)) + 1
    return start + np.arange(count) * scene_fps / MODEL_FPS


def motion_extent(joints: np.ndarray) -> float:
    """The largest distance any joint gets from where it was on the first frame."""
    return float(np.linalg.norm(joints - joints[:1], axis=-1).max())


@dataclass
class Report:
    """What was built and what was skipped, with reasons."""

    assets: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def skip(self, reason: str, **where) -> None:
        self.skipped.append({**where, "reason": reason})


def find_assets(folder: Path) -> tuple[list[Path], list[Path]]:
    """Asset files, and the other files that are not captions (reported as ignored)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assets = [p for p in files if p.suffix.lower() in ASSET_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in ASSET_SUFFIXES and p.suffix.lower() != ".txt"]
    return assets, others


def load_asset(path: Path) -> None:
    """Open ``path`` in a fresh factory scene (a .blend replaces the session's file)."""
    import bpy

    suffix = path.suffix.lower()
    try:
        if suffix == ".blend":
            bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False)
            return
        bpy.ops.wm.read_factory_settings(use_empty=True)
        if suffix in (".glb", ".gltf"):
            bpy.ops.import_scene.gltf(filepath=str(path))
        else:
            bpy.ops.import_scene.fbx(filepath=str(path))
    except RuntimeError as exc:
        text = str(exc)
        if suffix == ".fbx" and "light" in text:
            raise DatasetError("bpy 5.0.1's FBX importer fails on files that contain a light; delete the "
                               "lights and export again, or export glTF") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        raise DatasetError(f"Blender could not open it: {lines[-1] if lines else type(exc).__name__}") from None


def _slot_fcurves(action, slot, bones: set[str]) -> int:
    from bpy_extras.anim_utils import action_get_channelbag_for_slot

    bag = action_get_channelbag_for_slot(action, slot)
    if bag is None:
        return 0
    names = (re.match(r'pose\.bones\["(.+?)"\]', c.data_path) for c in bag.fcurves)
    return sum(1 for m in names if m and m.group(1) in bones)


def actions_for(obj) -> list[tuple]:
    """(action, slot) pairs whose F-Curves move bones of the armature ``obj``, by name."""
    import bpy

    bones = {b.name for b in obj.data.bones}
    found = []
    for action in sorted(bpy.data.actions, key=lambda a: a.name):
        counts = [(_slot_fcurves(action, slot, bones), slot) for slot in action.slots if slot.target_id_type == "OBJECT"]
        best = max(counts, key=lambda c: c[0], default=(0, None))
        if best[0]:
            found.append((action, best[1]))
    return found


def pose_joints(obj, rig, times: np.ndarray) -> np.ndarray:
    """World-space joints (T, J, 3) of the posed armature at scene frames ``times``, in ``rig``'s order."""
    import bpy

    scene = bpy.context.scene
    heads = [obj.pose.bones[name] for name in rig.bone_names]
    leaves = [heads[b] for b in np.flatnonzero(rig.leaves)]
    out = np.empty((len(times), rig.num_joints, 3))
    for t, frame in enumerate(times):
        scene.frame_set(int(np.floor(frame)), subframe=float(frame - np.floor(frame)))
        world = np.array(obj.matrix_world)
        local = np.array([p.head for p in heads] + [p.tail for p in leaves])
        out[t] = local @ world[:3, :3].T + world[:3, 3]
    return out


class _Parts:
    """An asset's clips, written to ``folder/<stem>-<part>.npz`` every ``PART_CLIPS`` clips, each file
    under a temporary name and then renamed: a file of that name is whole."""

    def __init__(self, folder: Path, stem: str):
        self.folder, self.stem = folder, stem
        self.clips: list[dict] = []
        self.files: list[str] = []
        self.index: list[dict] = []

    def append(self, clip: dict) -> None:
        self.clips.append(clip)
        self.index.append(clip["index"])
        if len(self.clips) == PART_CLIPS:
            self.flush()

    def flush(self) -> None:
        from .dataset import Samples

        if not self.clips:
            return
        name = f"{self.stem}-{len(self.files):03d}"
        clips, self.clips = self.clips, []
        partial = self.folder / f"{name}.partial.npz"
        Samples(
            rgb=np.stack([c["rgb"] for c in clips]), pose=np.stack([c["pose"] for c in clips]),
            rgb_rest=np.stack([c["rgb_rest"] for c in clips]), pose_rest=np.stack([c["pose_rest"] for c in clips]),
            prompts=[c["prompt"] for c in clips], motions=[c["motion"] for c in clips],
            families=[c["family"] for c in clips],
        ).save(partial)
        partial.replace(self.folder / f"{name}.npz")
        self.files.append(f"{name}.npz")


def _armature_samples(asset: Path, name: str, obj, args, report: Report, collected: _Parts) -> int:
    """Clips of every Action of one armature into ``collected``; returns how many."""
    import bpy

    from animax_addon.snapshot import SnapshotError, rig_from_armature
    from animax_addon.templates import TemplateError, render_templates
    from backend.data.joint_colours import joint_colours

    where = {"asset": name, "armature": obj.name}
    animation = obj.animation_data_create()
    animation.use_nla = False  # importers also leave Actions on NLA tracks; sample one Action alone
    animation.action = None
    bpy.context.view_layer.update()
    actions = actions_for(obj)
    if not actions:
        report.skip("no Action animates its bones", **where)
        return 0
    try:
        rig = rig_from_armature(obj)
        center, radius = rig.bounding_sphere()
        cameras = make_camera_rig(center, radius, args.size)
        rgb_rest = render_templates(obj, cameras, args.size)
    except (SnapshotError, TemplateError) as exc:
        report.skip(str(exc), **where)
        return 0
    colours = joint_colours(rig, cameras.rotation)
    pose_rest = render_pose_maps(cameras, rig.joints_rest[None], rig.joint_parents, colours)[:, 0]
    scene = bpy.context.scene
    fps = scene.render.fps / scene.render.fps_base
    made = 0
    for action, slot in actions:
        animation.action = action
        animation.action_slot = slot
        times = sample_times(tuple(action.frame_range), fps)
        at = {**where, "action": action.name}
        starts = clip_starts(len(times), args.frames, args.stride)
        if not starts:
            report.skip(f"too short: {len(times)} frames at {MODEL_FPS} fps, a clip needs {args.frames}", **at,
                        frames=[float(times[0]), float(times[-1])])
            continue
        joints = pose_joints(obj, rig, times)
        kept = []
        for s in starts:
            extent = motion_extent(joints[s:s + args.frames]) / radius
            span = [float(times[s]), float(times[s + args.frames - 1])]
            if extent < args.min_motion:
                report.skip(f"negligible motion: joints move at most {extent:.3f} x the rig's radius "
                            f"(threshold {args.min_motion})", **at, frames=span)
            else:
                kept.append((s, span))
        if not kept:
            continue
        # each sampled frame is rendered once, however many overlapping clips use it
        used = sorted({i for s, _ in kept for i in range(s, s + args.frames)})
        rgb = dict(zip(used, np.moveaxis(render_templates(obj, cameras, args.size, frames=times[used]), 1, 0)))
        caption, label = caption_for(asset, action.name)
        for s, span in kept:
            clip = joints[s:s + args.frames]
            collected.append(dict(
                rgb=np.stack([rgb[i] for i in range(s, s + args.frames)], axis=1),
                pose=render_pose_maps(cameras, clip, rig.joint_parents, colours), rgb_rest=rgb_rest, pose_rest=pose_rest,
                prompt=caption, motion=label, family=name,
                index={**at, "frames": span, "frame_step": fps / MODEL_FPS, "caption": caption,
                       "center": center.tolist(), "radius": radius},
            ))
        made += len(kept)
    return made


def _validate(args) -> None:
    if args.frames < 5 or (args.frames - 1) % 4:
        raise DatasetError(f"--frames must be 1 + 4k with k >= 1 (5, 9, 17, ..., 81), got {args.frames}")
    if args.stride < 1:
        raise DatasetError(f"--stride must be at least 1, got {args.stride}")
    if args.size < 16:
        raise DatasetError(f"--size must be at least 16 pixels, got {args.size}")
    if args.min_motion < 0:
        raise DatasetError(f"--min-motion must be >= 0, got {args.min_motion}")
    if Path(args.assets).is_file():
        raise DatasetError(f"{args.assets} is a file; give the folder that holds the assets")
    if not Path(args.assets).is_dir():
        raise DatasetError(f"asset folder not found: {args.assets}")


def asset_key(name: str) -> str:
    """The file stem of an asset's shard: its path's hash, the same on every machine."""
    return hashlib.sha1(name.encode("utf-8")).hexdigest()[:16]


def _write_json(path: Path, value) -> None:
    write_atomically(path, lambda partial: partial.write_text(json.dumps(value, indent=1), encoding="utf-8"))


def _records(out: Path, settings: dict) -> list[dict]:
    """The records of the finished assets in ``out``, by asset; a folder of other settings is refused."""
    from .dataset import shard_records

    records = shard_records(out)
    for record in records:
        if record["settings"] != settings:
            changed = ", ".join(f"{k} {record['settings'].get(k)} (now {v})" for k, v in settings.items()
                                if record["settings"].get(k) != v)
            raise DatasetError(f"{out} holds clips built with other settings ({changed}): give the "
                               "same settings to add to it, or another --out")
    return records


def _build_asset(asset: Path, name: str, args, shards: Path) -> dict:
    """One asset's clips into shard files and its record, which is written last."""
    import bpy

    stem = asset_key(name)
    for stale in shards.glob(f"{stem}-*"):  # an earlier build of this asset that stopped before its record
        stale.unlink()
    report = Report()
    parts = _Parts(shards, stem)
    entry = {"asset": name, "clips": 0}
    try:
        load_asset(asset)
    except DatasetError as exc:
        report.skip(str(exc), asset=name)
        entry["skipped"] = str(exc)
    else:
        armatures = [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]
        if not armatures:
            report.skip("no armature in the file", asset=name)
        for obj in armatures:
            entry["clips"] += _armature_samples(asset, name, obj, args, report, parts)
    parts.flush()
    return {"asset": name, "settings": _settings(args), "entry": entry, "parts": parts.files, "index": parts.index,
            "skipped": report.skipped}


def _settings(args) -> dict:
    return {"frames": args.frames, "stride": args.stride, "size": args.size, "fps": MODEL_FPS,
            "min_motion": args.min_motion}


def build_dataset(args) -> Report:
    """Build the dataset described by ``args`` (see ``add_dataset_arguments``) into ``args.out``: this
    machine's share of the assets that have no record yet. Returns the report of the whole folder."""
    from .dataset import SHARDS  # torch, in seconds: not for the CLI's other commands

    _validate(args)
    assets, others = find_assets(Path(args.assets))
    if not assets:
        raise DatasetError(f"{args.assets} holds no {', '.join(ASSET_SUFFIXES)} files")
    out = Path(args.out)
    shards = out / SHARDS
    shards.mkdir(parents=True, exist_ok=True)
    done = {r["asset"] for r in _records(out, _settings(args))}
    part, machines = args.shard
    names = [asset.relative_to(args.assets).as_posix() for asset in assets]
    mine = [(asset, name) for k, (asset, name) in enumerate(zip(assets, names)) if k % machines == part]
    todo = [(asset, name) for asset, name in mine if name not in done]
    if todo:
        try:
            import bpy  # noqa: F401 - seconds to import: after the checks above
        except ImportError:
            raise DatasetError("the dataset builder runs Blender: install its Python module "
                               "(pip install bpy==5.0.1, Python 3.11)") from None
    for i, (asset, name) in enumerate(mine, 1):
        if name in done:
            print(f"asset {i}/{len(mine)}: {name} — built earlier", flush=True)
            continue
        record = _build_asset(asset, name, args, shards)
        _write_json(shards / f"{asset_key(name)}.json", record)
        print(f"asset {i}/{len(mine)}: {name} — {record['entry']['clips']} clips", flush=True)

    records = _records(out, _settings(args))
    report = Report(assets=[r["entry"] for r in records], skipped=[s for r in records for s in r["skipped"]],
                    ignored=[p.relative_to(args.assets).as_posix() for p in others])
    clips = sum(r["entry"]["clips"] for r in records)
    _write_json(out / "report.json", {"clips": clips, **_settings(args), "shard": f"{part}/{machines}",
                                      **report.__dict__})
    _write_json(out / "index.json", [entry for r in records for entry in r["index"]])
    write_atomically(out / "cameras.json", make_camera_rig(np.zeros(3), 1.0, args.size).save)
    _print_summary(report, clips, out)
    if not clips:
        raise DatasetError(f"no clip was kept from {len(records)} assets; {out / 'report.json'} says why")
    return report


def _print_summary(report: Report, clips: int, out: Path) -> None:
    print(f"{clips} clips from {len(report.assets)} assets into {out}; {len(report.skipped)} skipped:")
    for item in report.skipped:
        where = " / ".join(str(item[k]) for k in ("asset", "armature", "action") if k in item)
        frames = f" frames {item['frames'][0]:g}-{item['frames'][1]:g}" if "frames" in item else ""
        print(f"  {where}{frames}: {item['reason']}")
    if report.ignored:
        print(f"  ignored (not assets): {', '.join(report.ignored)}")


def dataset_command(args) -> None:
    build_dataset(args)
