"""Build the installable AnimaX extension zip with the wheels it bundles.

    python build.py [--out dist] [--platform linux-x64] [--wheel-dir DIR] [--no-wheels]

1. ``pip download`` the pinned client wheels (pyzmq, Pillow) for each Blender platform, for the
   Python 3.11 of Blender 4.2-5.0;
2. stage the extension: the content of ``animax_addon/`` (never ``backend``), the manifest with
   its ``platforms`` and ``wheels`` rewritten for what was downloaded, and ``wheels/``;
3. build the zip with Blender's own ``blender_ext.py build`` and check it with ``validate``.

``--no-wheels`` stages no wheels (the extension then imports pyzmq and Pillow from the Python it
runs in, e.g. the ``bpy`` module's virtualenv); ``--wheel-dir`` keeps the downloads between builds.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "animax_addon"
MANIFEST = ROOT / "blender_manifest.toml"
PINNED = ("pyzmq==27.3.0", "pillow==13.0.0")
PYTHON_VERSION = "3.11"  # Blender 4.2 to 5.0 embed Python 3.11
# Blender platform -> pip platform tag (pip also accepts older compatible tags, e.g. macOS universal2).
PLATFORMS = {
    "linux-x64": "manylinux_2_28_x86_64",
    "windows-x64": "win_amd64",
    "macos-arm64": "macosx_11_0_arm64",
    "macos-x64": "macosx_11_0_x86_64",
}


class BuildError(RuntimeError):
    """A build step failed; the text says which and why."""


def blender_ext_path() -> Path:
    """Blender's extension tool inside the installed ``bpy`` module (found without importing bpy)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("the 'bpy' module is not installed; install it (pip install bpy==5.0.1) "
                         "or pass --blender-ext PATH/TO/blender_ext.py")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise BuildError("blender_ext.py was not found inside the bpy module; pass --blender-ext")


def download_wheels(platforms: list[str], wheel_dir: Path) -> dict[str, list[Path]]:
    """The pinned wheels of each platform, downloaded into ``wheel_dir`` (reused when present)."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[Path]] = {}
    for platform in platforms:
        with tempfile.TemporaryDirectory() as scratch:  # which files are this platform's
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                   "--platform", PLATFORMS[platform], "--python-version", PYTHON_VERSION,
                   "--implementation", "cp", "--dest", scratch, "--find-links", str(wheel_dir), *PINNED]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise BuildError(f"pip could not download the {platform} wheels of {', '.join(PINNED)}:\n"
                                 f"{done.stderr.strip()}")
            names = sorted(p.name for p in Path(scratch).glob("*.whl"))
            for name in names:
                if not (wheel_dir / name).exists():
                    shutil.move(Path(scratch) / name, wheel_dir / name)
        found[platform] = [wheel_dir / name for name in names]
    return found


def _toml_list(values: list[str]) -> str:
    return "[\n" + "".join(f'  "{v}",\n' for v in values) + "]" if values else "[]"


def manifest_text(platforms: list[str], wheels: list[str]) -> str:
    """The repository's manifest with ``platforms`` and ``wheels`` set (``wheels`` dropped if empty)."""
    text = MANIFEST.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^platforms = \[.*?\]", f"platforms = {_toml_list(platforms)}", text, flags=re.S)
    wheels_entry = f"wheels = {_toml_list(wheels)}\n" if wheels else ""
    text = re.sub(r"(?m)^wheels = \[.*?\]\n", wheels_entry, text, flags=re.S)
    data = tomllib.loads(text)  # what Blender will read
    if data["platforms"] != platforms or data.get("wheels", []) != wheels:
        raise BuildError(f"could not rewrite platforms/wheels in {MANIFEST}; keep each a top-level list")
    return text


def stage(stage_dir: Path, platforms: list[str], wheels: list[Path]) -> Path:
    """The extension's source folder: the add-on package, its manifest and ``wheels/``."""
    shutil.copytree(SOURCE, stage_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    names = sorted({w.name for w in wheels})
    if names:
        (stage_dir / "wheels").mkdir()
        for wheel in wheels:
            shutil.copy2(wheel, stage_dir / "wheels" / wheel.name)
    (stage_dir / "blender_manifest.toml").write_text(
        manifest_text(platforms, [f"./wheels/{n}" for n in names]), encoding="utf-8")
    return stage_dir


def _blender_ext(tool: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)
    if done.returncode:
        raise BuildError(f"blender_ext.py {args[0]} failed:\n{(done.stdout + done.stderr).strip()}")
    return done.stdout


def build(out: Path, platforms: list[str] | None = None, wheel_dir: Path | None = None, wheels: bool = True,
          tool: Path | None = None) -> Path:
    """Build and validate the extension zip in ``out``; returns its path."""
    platforms = list(platforms or PLATFORMS)
    tool = tool or blender_ext_path()
    out.mkdir(parents=True, exist_ok=True)
    version = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))["version"]
    suffix = f"-{platforms[0].replace('-', '_')}" if len(platforms) == 1 else ""
    zip_path = out / f"animax-{version}{suffix}{'' if wheels else '-nowheels'}.zip"
    with tempfile.TemporaryDirectory(prefix="animax-build-") as scratch:
        files: list[Path] = []
        if wheels:
            by_platform = download_wheels(platforms, wheel_dir or Path(scratch) / "downloads")
            files = [w for platform in platforms for w in by_platform[platform]]
        source = stage(Path(scratch) / "animax", platforms, files)
        _blender_ext(tool, "build", "--source-dir", str(source), "--output-filepath", str(zip_path))
    _blender_ext(tool, "validate", str(zip_path))
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the AnimaX Blender extension zip.")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default dist/)")
    parser.add_argument("--platform", choices=sorted(PLATFORMS), action="append",
                        help="build for this platform only (repeatable; default: all four in one zip)")
    parser.add_argument("--wheel-dir", type=Path, help="keep downloaded wheels here and reuse them")
    parser.add_argument("--no-wheels", action="store_true",
                        help="bundle no wheels: pyzmq and Pillow must already be importable in Blender")
    parser.add_argument("--blender-ext", type=Path, help="path to Blender's blender_ext.py (default: from bpy)")
    args = parser.parse_args(argv)
    try:
        zip_path = build(args.out, args.platform, args.wheel_dir, not args.no_wheels, args.blender_ext)
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 2
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
