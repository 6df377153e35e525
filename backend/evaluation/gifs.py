"""Animated GIFs of evaluated clips: generated pose maps, the ground truth, the reconstructed skeleton.

``save_gif`` writes any frames as a small looping GIF (``animax motion-bench --gifs`` too). Here,
one frame per video frame: the top row holds the four generated views, the row below the four
ground-truth views, and the panel on the right an oblique projection of the reconstructed 3D
skeleton (white, coloured joints) over the ground-truth one (grey).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from animax_addon.core.pose_maps import palette
from backend.reconstruction.reconstruct import Reconstruction

SCALE = 2  # the tiny preset's 64 px views are small to look at
FPS = 8  # half speed: 17 frames are over too quickly at the model's 16 fps


def _oblique(points: np.ndarray, centre: np.ndarray, radius: float, size: int) -> np.ndarray:
    """Pixel positions (..., 2) of world points (..., 3), from 35 degrees round and 20 degrees above."""
    azimuth, elevation = np.radians(35), np.radians(20)
    p = (points - centre) / radius
    x = p[..., 0] * np.cos(azimuth) + p[..., 1] * np.sin(azimuth)
    depth = -p[..., 0] * np.sin(azimuth) + p[..., 1] * np.cos(azimuth)
    y = p[..., 2] * np.cos(elevation) - depth * np.sin(elevation)
    half = size / 2
    return np.stack([half + 0.4 * size * x, half - 0.4 * size * y], axis=-1)


def _skeleton(draw: ImageDraw.ImageDraw, pixels: np.ndarray, parents: np.ndarray, line, joints) -> None:
    for j, p in enumerate(parents):
        if p >= 0:
            draw.line([tuple(pixels[p]), tuple(pixels[j])], fill=line, width=2)
    for j, (x, y) in enumerate(pixels):
        fill = tuple(int(c) for c in joints[j]) if joints is not None else line
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=fill)


def gif_frames(item, videos: np.ndarray, motion: Reconstruction) -> list[Image.Image]:
    """The GIF's frames (see the module doc) for an ``evaluate.EvalItem`` and its generated videos."""
    rig = item.clip.creature.rig
    views, frames, size = videos.shape[:3]
    rows = np.concatenate([np.concatenate(list(videos), axis=2), np.concatenate(list(item.pose_truth), axis=2)],
                          axis=1)  # (T, 2S, V*S, 3)
    panel = 2 * size * SCALE
    centre, radius = rig.bounding_sphere()
    truth = _oblique(item.clip.joints, centre, radius, panel)
    ours = _oblique(motion.joints, centre, radius, panel)
    colours = palette(rig.num_joints)
    images = []
    for t in range(frames):
        grid = Image.fromarray(rows[t]).resize((views * size * SCALE, panel), Image.NEAREST)
        frame = Image.new("RGB", (grid.width + panel, panel))
        frame.paste(grid, (0, 0))
        labels = ImageDraw.Draw(frame)
        labels.text((4, 4), "generated", fill=(255, 255, 255))
        labels.text((4, panel // 2 + 4), "ground truth", fill=(255, 255, 255))
        side = Image.new("RGB", (panel, panel))
        draw = ImageDraw.Draw(side)
        _skeleton(draw, truth[t], rig.joint_parents, (90, 90, 90), None)
        _skeleton(draw, ours[t], rig.joint_parents, (255, 255, 255), colours)
        draw.text((4, 4), item.clip.prompt, fill=(255, 255, 255))
        frame.paste(side, (grid.width, 0))
        images.append(frame)
    return images


def save_gif(path: str | Path, frames: list[Image.Image], fps: float) -> Path:
    """``frames`` as a looping GIF at ``fps`` (to the format's hundredths of a second), each frame
    with its own 64-colour palette; returns its path. Pillow merges a frame identical to the one
    before into it, adding up their times."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [f.quantize(colors=64, method=Image.Quantize.MEDIANCUT) for f in frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0,
                   optimize=True)
    return path


def write_gif(path: str | Path, item, videos: np.ndarray, motion: Reconstruction) -> Path:
    """Write the clip's GIF (looping) and return its path."""
    return save_gif(path, gif_frames(item, videos, motion), FPS)
