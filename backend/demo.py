"""``animax demo``: animate a character headless, exactly as the Animate button does.

    animax demo [--blend IN.blend --armature NAME] --prompt TEXT --out OUT.blend [--preview OUT.mp4]
                [--steps N] [--seed S]

1. builds the extension zip with ``build.py`` for this platform (without bundled wheels when
   none can be downloaded: pyzmq and Pillow then come from this Python) and installs and enables
   it in a temporary Blender user directory;
2. opens IN.blend, or builds a sample creature (a skinned quadruped from the procedural rig world);
3. points the add-on's preferences at a local worker run by this Python from this project
   (the tiny model), runs ``bpy.ops.animax.animate()``, saves OUT.blend;
4. renders a short Workbench preview video of the animated character (mp4), stops the worker.

``bpy`` reads ``BLENDER_USER_RESOURCES`` when it is imported, so the demo needs a process of its
own: this module imports bpy only inside ``run_demo``.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
EXTENSION_ID = "animax"
REPO = "user_default"
PREVIEW_SIZE = 256
PREVIEW_AZIMUTH_DEG, PREVIEW_ELEVATION_DEG = 35.0, 15.0  # a three-quarter view from the front
_HOST_PLATFORMS = {("linux", "x86_64"): "linux-x64", ("win32", "AMD64"): "windows-x64",
                   ("darwin", "arm64"): "macos-arm64", ("darwin", "x86_64"): "macos-x64"}


class DemoError(ValueError):
    """The demo cannot go on; the text says what to change."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blend", type=Path, help="a .blend with a rigged character (default: a sample creature)")
    parser.add_argument("--armature", help="the armature object in --blend (default: the only or active one)")
    parser.add_argument("--prompt", required=True, help="what the character should do")
    parser.add_argument("--out", type=Path, required=True, help="the .blend to write")
    parser.add_argument("--preview", type=Path, help="preview video to render (default: OUT with .mp4)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--seed", type=int, default=0)


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


def render_preview(bpy, obj, path: Path) -> int:
    """Render the scene's frame range with Workbench into an mp4; returns the frame count."""
    scene = bpy.context.scene
    world = np.array(obj.matrix_world)
    points = np.array([p for b in obj.data.bones for p in (b.head_local, b.tail_local)])
    points = points @ world[:3, :3].T + world[:3, 3]
    lo, hi = points.min(axis=0), points.max(axis=0)
    center = (lo + hi) / 2
    radius = float(np.linalg.norm(points - center, axis=1).max()) * 1.3  # room for the motion
    cameras = make_camera_rig(center, radius, PREVIEW_SIZE, azimuths_deg=(PREVIEW_AZIMUTH_DEG,),
                              elevation_deg=PREVIEW_ELEVATION_DEG)
    data = bpy.data.cameras.new("AnimaX preview")
    data.sensor_fit, data.sensor_width = "AUTO", 36.0
    data.lens = blender_lens_mm(cameras.focal_px, PREVIEW_SIZE)
    camera = bpy.data.objects.new("AnimaX preview", data)
    scene.collection.objects.link(camera)
    from mathutils import Matrix

    camera.matrix_world = Matrix(cameras.blender_matrices_world()[0].tolist())
    scene.camera = camera
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
    return scene.frame_end - scene.frame_start + 1


def run_demo(args: argparse.Namespace) -> dict:
    if "bpy" in sys.modules:
        raise DemoError("the demo must run in a fresh process (bpy was imported already); run 'animax demo'")
    if args.blend is not None and not args.blend.is_file():
        raise DemoError(f"--blend file not found: {args.blend}")
    if args.armature is not None and args.blend is None:
        raise DemoError("--armature names an armature in --blend; give --blend too")
    if args.out.suffix != ".blend":
        raise DemoError(f"--out must be a .blend file, got {args.out}")
    preview = args.preview or args.out.with_suffix(".mp4")
    start = time.perf_counter()
    user_dir = tempfile.mkdtemp(prefix="animax-demo-user-")
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
        if args.blend is not None:
            bpy.ops.wm.open_mainfile(filepath=str(args.blend.resolve()))
            obj = _armature(bpy, args.armature)
        else:
            from backend.data.blender_build import build_sample_scene

            obj = build_sample_scene(seed=0, family="quadruped")
        settings = bpy.context.scene.animax
        settings.armature, settings.prompt, settings.steps, settings.seed = obj, args.prompt, args.steps, args.seed
        animate_start = time.perf_counter()
        try:
            bpy.ops.animax.animate()
        except RuntimeError as exc:  # the operator's ERROR report: the panel's sentence
            raise DemoError(bpy.context.window_manager.animax_state.error or str(exc)) from None
        animate_seconds = time.perf_counter() - animate_start
        action = obj.animation_data.action
        args.out.parent.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(args.out.resolve()))
        summary = {"action": action.name, "armature": obj.name, "keys": _action_keys(action, obj),
                   "frames": bpy.context.scene.frame_end - bpy.context.scene.frame_start + 1,
                   "animate_seconds": animate_seconds}
        render_start = time.perf_counter()  # after saving: the preview's camera and settings stay out of OUT
        render_preview(bpy, obj, preview)
        summary["preview_seconds"] = time.perf_counter() - render_start
    finally:
        bpy.ops.preferences.addon_disable(module=module)  # unregister stops the local worker
        shutil.rmtree(user_dir, ignore_errors=True)
    summary["seconds"] = time.perf_counter() - start
    print(f"extension {zip_path.name}: {bundled}; installed in a temporary user directory\n"
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
