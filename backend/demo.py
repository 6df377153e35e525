"""``animax demo``: animate a character headless, exactly as the Animate button does.

    animax demo [--blend IN.blend --armature NAME | --sample FAMILY] --prompt TEXT --out OUT.blend
                [--preview OUT.mp4] [--steps N] [--seed S] [--bones DEFORM|SELECTED|COLLECTION --collection NAME]

1. builds the extension zip with ``build.py`` for this platform (without bundled wheels when
   none can be downloaded: pyzmq and Pillow then come from this Python) and installs and enables
   it in a temporary Blender user directory;
2. opens IN.blend, or builds a sample creature of the procedural rig world, skinned (a person by
   default: the family the embedded model animates best of those with limbs, docs/quality.md);
3. points the add-on's preferences at a local worker run by this Python from this project
   (the tiny model), runs ``bpy.ops.animax.animate()``, saves OUT.blend;
4. renders a short Workbench preview video of the animated character (mp4), stops the worker.

``bpy`` reads ``BLENDER_USER_RESOURCES`` when it is imported, so the demo needs a process of its
own: this module imports bpy only inside ``installed_extension``, which ``animax motion-bench``
shares.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from animax_addon.core.cameras import blender_lens_mm, make_camera_rig
from backend.data.rig_world import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
EXTENSION_ID = "animax"
REPO = "user_default"
PREVIEW_SIZE = 256
SAMPLE_FAMILIES = tuple(FAMILIES)
PREVIEW_AZIMUTH_DEG, PREVIEW_ELEVATION_DEG = 35.0, 15.0  # a three-quarter view from the front
_HOST_PLATFORMS = {("linux", "x86_64"): "linux-x64", ("win32", "AMD64"): "windows-x64",
                   ("darwin", "arm64"): "macos-arm64", ("darwin", "x86_64"): "macos-x64"}


_BLEND_MAGICS = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")
"""How a .blend file starts: plain, gzip- or zstd-compressed."""


class DemoError(ValueError):
    """The demo cannot go on; the text says what to change."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blend", type=Path, help="a .blend with a rigged character (default: a sample creature)")
    parser.add_argument("--armature", help="the armature object in --blend (default: the only or active one)")
    parser.add_argument("--sample", choices=SAMPLE_FAMILIES,
                        help="the sample creature built without --blend (default: biped, a person)")
    parser.add_argument("--prompt", required=True, help="what the character should do")
    parser.add_argument("--out", type=Path, required=True, help="the .blend to write")
    parser.add_argument("--preview", type=Path, help="preview video to render (default: OUT with .mp4)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bones", choices=("DEFORM", "COLLECTION", "SELECTED"), default="DEFORM",
                        help="which bones take part, as in the panel (default: the deform bones, the body "
                             "chosen automatically on large rigs)")
    parser.add_argument("--collection", help="the bone collection that takes part (with --bones COLLECTION)")


def _build_module():
    spec = importlib.util.spec_from_file_location("animax_build", ROOT / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_extension(out: Path) -> tuple[Path, str]:
    """The extension zip for this platform, and a sentence saying what it bundles."""
    build = _build_module()
    host = _HOST_PLATFORMS.get((sys.platform, platform.machine()))
    if host is not None:
        try:
            return build.build(out, [host]), f"built for {host} with its pyzmq and Pillow wheels"
        except build.BuildError as exc:
            reason = str(exc).splitlines()[0]
    else:
        reason = f"no Blender platform matches {sys.platform}/{platform.machine()}"
    return build.build(out, wheels=False), f"built without wheels ({reason}); pyzmq and Pillow come from this Python"


def _armature(bpy, name: str | None):
    armatures = [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]
    if name is not None:
        obj = bpy.data.objects.get(name)
        if obj is None or obj.type != "ARMATURE":
            known = ", ".join(o.name for o in armatures) or "none"
            raise DemoError(f"there is no armature '{name}' in the file (armatures: {known})")
        return obj
    active = bpy.context.view_layer.objects.active
    if active is not None and active.type == "ARMATURE":
        return active
    if len(armatures) != 1:
        raise DemoError(f"the file has {len(armatures)} armatures; name one with --armature")
    return armatures[0]


def _action_keys(action, obj) -> int:
    from bpy_extras.anim_utils import action_get_channelbag_for_slot

    bag = action_get_channelbag_for_slot(action, obj.animation_data.action_slot)
    return sum(len(curve.keyframe_points) for curve in bag.fcurves)


def add_preview_camera(bpy, obj, size: int = PREVIEW_SIZE):
    """A three-quarter view of ``obj`` with room for its motion, made the scene's camera."""
    world = np.array(obj.matrix_world)
    points = np.array([p for b in obj.data.bones for p in (b.head_local, b.tail_local)])
    points = points @ world[:3, :3].T + world[:3, 3]
    lo, hi = points.min(axis=0), points.max(axis=0)
    center = (lo + hi) / 2
    radius = float(np.linalg.norm(points - center, axis=1).max()) * 1.3  # room for the motion
    cameras = make_camera_rig(center, radius, size, azimuths_deg=(PREVIEW_AZIMUTH_DEG,),
                              elevation_deg=PREVIEW_ELEVATION_DEG)
    data = bpy.data.cameras.new("AnimaX preview")
    data.sensor_fit, data.sensor_width = "AUTO", 36.0
    data.lens = blender_lens_mm(cameras.focal_px, size)
    camera = bpy.data.objects.new("AnimaX preview", data)
    bpy.context.scene.collection.objects.link(camera)
    from mathutils import Matrix

    camera.matrix_world = Matrix(cameras.blender_matrices_world()[0].tolist())
    bpy.context.scene.camera = camera
    return camera


def render_preview(bpy, obj, path: Path) -> int:
    """Render the Action's frame range with Workbench into an mp4; returns the frame count."""
    scene = bpy.context.scene
    start, end = (int(round(f)) for f in obj.animation_data.action.frame_range)
    scene.frame_start, scene.frame_end = start, end  # only in this process: OUT was saved before
    add_preview_camera(bpy, obj)
    render = scene.render
    render.engine = "BLENDER_WORKBENCH"
    render.resolution_x = render.resolution_y = PREVIEW_SIZE
    render.resolution_percentage = 100
    settings = render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0 picks the media type before the format
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    render.ffmpeg.format = "MPEG4"
    render.ffmpeg.codec = "H264"
    render.ffmpeg.constant_rate_factor = "MEDIUM"
    render.use_file_extension = False
    path.parent.mkdir(parents=True, exist_ok=True)
    render.filepath = str(path.resolve())
    bpy.ops.render.render(animation=True)
    return end - start + 1


@contextlib.contextmanager
def installed_extension():
    """Build the extension, install and enable it in a temporary Blender user directory, and point
    it at a local worker run by this Python from this project; yields ``(bpy, sentence)``, the
    sentence saying what the zip bundles. Disabling it at the end stops the local worker.

    ``bpy`` reads ``BLENDER_USER_RESOURCES`` when it is imported, so this needs a fresh process."""
    if "bpy" in sys.modules:
        raise DemoError("Blender must start in a fresh process (bpy was imported already); run the command again")
    user_dir = tempfile.mkdtemp(prefix="animax-user-")
    try:
        zip_path, bundled = build_extension(Path(user_dir) / "dist")
        os.environ["BLENDER_USER_RESOURCES"] = user_dir  # read when bpy is imported
        import bpy

        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo=REPO, enable_on_install=True)
        module = f"bl_ext.{REPO}.{EXTENSION_ID}"
        addon = bpy.context.preferences.addons.get(module)
        if addon is None:
            raise DemoError(f"the extension {zip_path} installed but did not enable; see the messages above")
        prefs = addon.preferences
        prefs.mode, prefs.python, prefs.project = "LOCAL", sys.executable, str(ROOT)
        try:
            yield bpy, f"extension {zip_path.name}: {bundled}; installed in a temporary user directory"
        finally:
            bpy.ops.preferences.addon_disable(module=module)
    finally:
        shutil.rmtree(user_dir, ignore_errors=True)


def animate(bpy, obj, prompt: str, **settings) -> float:
    """Press Animate on ``obj`` with ``prompt`` and the panel's ``settings``; returns the seconds taken."""
    panel = bpy.context.scene.animax
    panel.armature, panel.prompt = obj, prompt
    for name, value in settings.items():
        setattr(panel, name, value)
    start = time.perf_counter()
    try:
        bpy.ops.animax.animate()
    except RuntimeError as exc:  # the operator's ERROR report, or its poll's message: the panel's sentence
        raise DemoError(bpy.context.window_manager.animax_state.error
                        or str(exc).split("\n")[0].removeprefix("Operator bpy.ops.animax.animate.poll() ")) from None
    return time.perf_counter() - start


def _check(args: argparse.Namespace) -> None:
    """Refuse bad arguments at once, before Blender starts."""
    if not args.prompt.strip():
        raise DemoError("--prompt is empty; say what the character should do, e.g. --prompt \"the person waves\"")
    if args.sample is not None and args.blend is not None:
        raise DemoError("--sample builds a creature instead of opening --blend; give one of them")
    if args.blend is not None:
        if not args.blend.is_file():
            raise DemoError(f"--blend file not found: {args.blend}")
        with args.blend.open("rb") as file:
            magic = file.read(7)
        if not magic.startswith(_BLEND_MAGICS):
            raise DemoError(f"--blend {args.blend} is not a .blend file; give a file saved by Blender")
    if args.armature is not None and args.blend is None:
        raise DemoError("--armature names an armature in --blend; give --blend too")
    if args.collection and args.bones != "COLLECTION":
        raise DemoError("--collection needs --bones COLLECTION")
    if args.bones == "COLLECTION" and not args.collection:
        raise DemoError("--bones COLLECTION needs --collection NAME")
    if args.out.suffix != ".blend":
        raise DemoError(f"--out must be a .blend file, got {args.out}")
    if args.steps < 1:
        raise DemoError(f"--steps must be at least 1, got {args.steps}")


def run_demo(args: argparse.Namespace) -> dict:
    _check(args)
    preview = args.preview or args.out.with_suffix(".mp4")
    start = time.perf_counter()
    with installed_extension() as (bpy, bundled):
        if args.blend is not None:
            bpy.ops.wm.open_mainfile(filepath=str(args.blend.resolve()))
            obj = _armature(bpy, args.armature)
        else:
            from backend.data.blender_build import build_sample_scene

            obj = build_sample_scene(seed=0, family=args.sample or "biped")
        animate_seconds = animate(bpy, obj, args.prompt, steps=args.steps, seed=args.seed, bones=args.bones,
                                  bone_collection=args.collection or "")
        action = obj.animation_data.action
        args.out.parent.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(args.out.resolve()))
        first, last = action.frame_range
        summary = {"action": action.name, "armature": obj.name, "keys": _action_keys(action, obj),
                   "frames": int(round(last - first)) + 1, "animate_seconds": animate_seconds}
        render_start = time.perf_counter()  # after saving: the preview's camera and settings stay out of OUT
        render_preview(bpy, obj, preview)
        summary["preview_seconds"] = time.perf_counter() - render_start
    summary["seconds"] = time.perf_counter() - start
    print(f"{bundled}\n"
          f"animated '{summary['armature']}' with \"{args.prompt}\": Action '{summary['action']}', "
          f"{summary['frames']} frames, {summary['keys']} keys, in {animate_seconds:.1f} s "
          f"(worker start included)\n"
          f"wrote {args.out} and {preview} ({summary['preview_seconds']:.1f} s); {summary['seconds']:.1f} s in all")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="animax demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_demo(args)
    except DemoError as exc:
        print(f"animax demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
