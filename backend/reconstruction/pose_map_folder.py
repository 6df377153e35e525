"""A folder of multi-view pose-map videos: ``cameras.json`` and ``view_{v}/{t:04d}.png``.

The exchange format between the pose-map drawer, a model's output and reconstruction (see
docs/formats.md). Reading checks everything a user could get wrong before any maths runs.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from animax_addon.core.cameras import CameraError, CameraRig

CAMERAS_FILE = "cameras.json"
_FRAME_NAME = re.compile(r"^(\d{4,})\.png$")


class PoseMapFolderError(ValueError):
    """A pose-map folder that cannot be read; the message says which file and why."""


def view_dir(folder: Path, view: int) -> Path:
    return folder / f"view_{view}"


def write_pose_map_folder(folder: str | Path, cameras: CameraRig, images: np.ndarray) -> None:
    """Write ``images`` (V, T, H, W, 3) uint8 and the cameras into ``folder``."""
    folder = Path(folder)
    views, frames = images.shape[:2]
    if views != cameras.num_views:
        raise ValueError(f"{views} views of images but {cameras.num_views} cameras")
    folder.mkdir(parents=True, exist_ok=True)
    cameras.save(folder / CAMERAS_FILE)
    jobs = []
    for v in range(views):
        view_dir(folder, v).mkdir(exist_ok=True)
        jobs += [(images[v, t], view_dir(folder, v) / f"{t:04d}.png") for t in range(frames)]
    # PNG encoding releases the GIL; mostly-black maps compress fast at level 1.
    with ThreadPoolExecutor() as pool:
        list(pool.map(lambda job: Image.fromarray(job[0]).save(job[1], compress_level=1), jobs))


def _frame_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise PoseMapFolderError(f"missing view folder {directory}")
    numbered = {}
    for path in directory.iterdir():
        match = _FRAME_NAME.match(path.name)
        if match:
            numbered[int(match.group(1))] = path
    if not numbered:
        raise PoseMapFolderError(f"{directory} holds no frames named 0000.png, 0001.png, ...")
    missing = sorted(set(range(max(numbered) + 1)) - set(numbered))
    if missing:
        raise PoseMapFolderError(f"{directory} is missing frame {missing[0]:04d}.png")
    return [numbered[t] for t in range(len(numbered))]


def _read_png(path: Path, width: int, height: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PoseMapFolderError(f"cannot read image {path}: {exc}") from None
    if pixels.shape[:2] != (height, width):
        raise PoseMapFolderError(
            f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels but the cameras say "
            f"{width}x{height}"
        )
    return pixels


def read_pose_map_folder(folder: str | Path) -> tuple[CameraRig, np.ndarray]:
    """The cameras and the images (V, T, H, W, 3) uint8 of a pose-map folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PoseMapFolderError(f"pose-map folder not found: {folder}")
    try:
        cameras = CameraRig.load(folder / CAMERAS_FILE)
    except CameraError as exc:
        raise PoseMapFolderError(str(exc)) from None
    files = [_frame_files(view_dir(folder, v)) for v in range(cameras.num_views)]
    counts = {len(f) for f in files}
    if len(counts) != 1:
        raise PoseMapFolderError(
            "the views hold different numbers of frames: "
            + ", ".join(f"view_{v}: {len(f)}" for v, f in enumerate(files))
        )
    with ThreadPoolExecutor() as pool:
        flat = list(pool.map(lambda p: _read_png(p, cameras.width, cameras.height), sum(files, [])))
    images = np.stack(flat).reshape((cameras.num_views, counts.pop()) + flat[0].shape)
    return cameras, images
