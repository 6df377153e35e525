"""``animax demo``: a shipped motion drawn as pose maps, reconstructed, scored and shown.

Until the model is in place this is the README's main job: it runs the same steps as
``animax pose-maps`` then ``animax reconstruct`` and compares the result with the truth.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from animax_addon.core.pose_maps import render_pose_maps
from animax_addon.core.rig import Rig

from .cli import MODEL_FPS, load_motion, rig_cameras, save_result
from .reconstruction.pose_map_folder import read_pose_map_folder, write_pose_map_folder
from .reconstruction.reconstruct import reconstruct


def preview_gif(path: Path, truth: np.ndarray, rebuilt: np.ndarray, fps: float) -> None:
    """A GIF: the input pose maps (top row) over pose maps of the reconstruction (bottom row)."""
    frames = []
    for t in range(truth.shape[1]):
        rows = [np.concatenate(list(maps[:, t]), axis=1) for maps in (truth, rebuilt)]
        frames.append(Image.fromarray(np.concatenate(rows, axis=0)))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def run_demo(rig_path: Path, motion_path: Path, out: Path, size: int) -> dict:
    rig = Rig.load(rig_path)
    truth = load_motion(motion_path, rig)
    cameras = rig_cameras(rig, size)
    folder = out / "pose_maps"
    write_pose_map_folder(folder, cameras, render_pose_maps(cameras, truth, rig.joint_parents))

    start = time.perf_counter()
    cameras, images = read_pose_map_folder(folder)
    result = reconstruct(rig, cameras, images)
    seconds = time.perf_counter() - start
    save_result(out / "result.npz", result, MODEL_FPS)

    radius = cameras.radius
    pairs = rig.joint_parents >= 0
    rest_lengths = np.linalg.norm(rig.joints_rest[pairs] - rig.joints_rest[rig.joint_parents[pairs]], axis=-1)
    lengths = np.linalg.norm(result.triangulated[:, pairs] - result.triangulated[:, rig.joint_parents[pairs]], axis=-1)
    scores = {
        "mpjpe_percent_of_radius": 100 * float(np.linalg.norm(result.joints - truth, axis=-1).mean()) / radius,
        "bone_length_drift_percent": 100 * float(np.abs(lengths / rest_lengths - 1).max()),
        "mean_reprojection_error_px": float(np.nanmean(result.reprojection_error)),
        "reconstruction_seconds": seconds,
    }
    preview_gif(out / "preview.gif", images, render_pose_maps(cameras, result.joints, rig.joint_parents), MODEL_FPS)
    print(
        f"{rig_path.name}: {len(truth)} frames, {rig.num_bones} bones, 4 views at {size}x{size}\n"
        f"  reconstruction from pose maps: {seconds:.2f} s\n"
        f"  joint error vs truth: {scores['mpjpe_percent_of_radius']:.3f}% of the rig's radius\n"
        f"  worst bone-length drift after triangulation: {scores['bone_length_drift_percent']:.4f}%\n"
        f"  mean reprojection error: {scores['mean_reprojection_error_px']:.2f} px\n"
        f"  wrote {out / 'result.npz'} and {out / 'preview.gif'} (input above, reconstruction below)"
    )
    return scores
