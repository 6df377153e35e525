"""Reconstruction speed: 81 frames x 64 joints x 4 views at 480x480, from PNG pose maps.

    .venv/bin/python benchmarks/reconstruction.py [--frames 81] [--size 480] [--baseline-frames 4]

Times each stage of ours (reading the PNGs, 2D joints, triangulation, IK + FK) on the whole clip,
and beside it, in the same run, a straightforward per-frame implementation of the paper's §3.3
(k-means++ per image, a dense least-squares triangulation per frame, one bone at a time IK with
scipy's ``align_vectors``) on the first few frames, scaled to the clip. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation
from sklearn.cluster import KMeans

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import palette, render_pose_maps
from animax_addon.core.rig import Rig
from backend.reconstruction.joints2d import detect_joints
from backend.reconstruction.kinematics import forward_kinematics, inverse_kinematics
from backend.reconstruction.pose_map_folder import read_pose_map_folder, write_pose_map_folder
from backend.reconstruction.triangulation import triangulate


def centipede(segments: int = 16) -> Rig:
    """A 64-joint rig: a 16-bone spine, each segment with a two-bone leg (48 bones, 16 feet)."""
    bones = []
    for i in range(segments):
        y = 0.12 * i
        bones.append({"name": f"spine{i}", "parent": f"spine{i - 1}" if i else None,
                      "head": [0, y, 0.3], "tail": [0, y + 0.12, 0.3]})
        side = 1 if i % 2 else -1
        bones.append({"name": f"thigh{i}", "parent": f"spine{i}", "head": [0.04 * side, y + 0.06, 0.3],
                      "tail": [0.2 * side, y + 0.06, 0.22]})
        bones.append({"name": f"shin{i}", "parent": f"thigh{i}", "head": [0.2 * side, y + 0.06, 0.22],
                      "tail": [0.26 * side, y + 0.06, 0.0]})
    return Rig.from_dict({"bones": bones})


def wriggle(rig: Rig, frames: int) -> np.ndarray:
    t = np.arange(frames)[:, None] / 16
    phase = np.arange(rig.num_bones)[None] * 0.7
    angles = 0.35 * np.sin(2 * np.pi * t + phase)
    axes = np.where((np.arange(rig.num_bones) % 3 == 0)[:, None], [0, 0, 1.0], [1.0, 0, 0])
    rotations = Rotation.from_rotvec((angles[..., None] * axes).reshape(-1, 3)).as_quat(scalar_first=True)
    return forward_kinematics(rig, rotations.reshape(frames, rig.num_bones, 4))[1]


# --- the straightforward per-frame baseline ---------------------------------------------------
def baseline_detect(image: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """k-means++ on one image's foreground pixels; each joint takes the cluster nearest its colour."""
    ys, xs = np.nonzero(image.max(axis=-1) > 40)
    pixels = image[ys, xs].astype(float)
    km = KMeans(n_clusters=len(colours) + 1, n_init=1, random_state=0).fit(pixels)
    nearest = np.linalg.norm(km.cluster_centers_[None] - colours[:, None], axis=-1).argmin(axis=1)
    found = np.full((len(colours), 2), np.nan)
    for j, cluster in enumerate(nearest):
        mask = km.labels_ == cluster
        if mask.any():
            found[j] = xs[mask].mean(), ys[mask].mean()
    return found


def baseline_triangulate(cameras, pixels: np.ndarray, rest: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """One frame: dense least squares on reprojection + rigid lengths, from the rest pose."""
    lengths = np.linalg.norm(rest[pairs[:, 0]] - rest[pairs[:, 1]], axis=1)
    seen = np.isfinite(pixels).all(axis=-1)

    def residuals(x):
        points = x.reshape(-1, 3)
        projected, _ = cameras.project(points)
        reprojection = np.where(seen[..., None], projected - np.nan_to_num(pixels), 0.0)
        apart = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1) - lengths
        return np.concatenate([reprojection.ravel(), 100 * apart])

    return least_squares(residuals, rest.ravel(), loss="soft_l1").x.reshape(-1, 3)


def baseline_ik(rig: Rig, joints: np.ndarray) -> np.ndarray:
    """One frame, one bone at a time, root to leaves, with scipy's align_vectors."""
    pose = np.zeros((rig.num_bones, 4, 4))
    rotations = np.zeros((rig.num_bones, 4))
    targets = rig.bone_targets()
    for level in rig.levels:
        for bone in level:
            parent = rig.parents[bone]
            offset = rig.rest_matrices[bone] if parent < 0 else np.linalg.solve(rig.rest_matrices[parent], rig.rest_matrices[bone])
            frame = offset.copy() if parent < 0 else pose[parent] @ offset
            frame[:3, 3] = joints[bone]
            rest = np.linalg.solve(rig.rest_matrices[bone, :3, :3], (rig.joints_rest[targets[bone]] - rig.heads[bone]).T).T
            posed = np.linalg.solve(frame[:3, :3], (joints[targets[bone]] - joints[bone]).T).T
            rot = Rotation.align_vectors(posed, rest)[0]
            rotations[bone] = rot.as_quat(scalar_first=True)
            basis = np.eye(4)
            basis[:3, :3] = rot.as_matrix()
            pose[bone] = frame @ basis
    return rotations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--baseline-frames", type=int, default=4)
    args = parser.parse_args()
    # k-means++ on images whose joints overlap finds fewer distinct colours than clusters; expected
    warnings.filterwarnings("ignore", message="Number of distinct clusters")

    rig = centipede()
    truth = wriggle(rig, args.frames)
    center, radius = rig.bounding_sphere()
    cameras = make_camera_rig(center, radius, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        write_pose_map_folder(tmp, cameras, render_pose_maps(cameras, truth, rig.joint_parents))
        ours = {}
        start = time.perf_counter()
        cameras, images = read_pose_map_folder(Path(tmp))
        ours["read PNGs"] = time.perf_counter() - start

    colours = palette(rig.num_joints)
    rest = cameras.to_normalized(rig.joints_rest)
    pairs = rig.rigid_pairs()
    start = time.perf_counter()
    pixels, confidence = detect_joints(images, colours)
    ours["2D joints"] = time.perf_counter() - start
    start = time.perf_counter()
    joints = triangulate(cameras, pixels, confidence, rest, pairs, rig.joint_parents)
    ours["triangulation"] = time.perf_counter() - start
    start = time.perf_counter()
    rotations, locations = inverse_kinematics(rig, cameras.to_world(joints))
    _, posed = forward_kinematics(rig, rotations, locations)
    ours["IK + FK"] = time.perf_counter() - start
    error = np.linalg.norm(posed - truth, axis=-1).mean() / radius

    n = args.baseline_frames
    scale = args.frames / n
    base = {"read PNGs": ours["read PNGs"]}  # same reader for both
    start = time.perf_counter()
    base_pixels = np.array([[baseline_detect(images[v, t], colours) for t in range(n)] for v in range(4)])
    base["2D joints"] = (time.perf_counter() - start) * scale
    start = time.perf_counter()
    base_joints = np.array([baseline_triangulate(cameras, base_pixels[:, t], rest, pairs) for t in range(n)])
    base["triangulation"] = (time.perf_counter() - start) * scale
    start = time.perf_counter()
    for t in range(n):
        baseline_ik(rig, cameras.to_world(base_joints[t]))
    base["IK + FK"] = (time.perf_counter() - start) * scale
    base_error = np.linalg.norm(cameras.to_world(base_joints) - truth[:n], axis=-1).mean() / radius

    print(f"{args.frames} frames x {rig.num_joints} joints x 4 views at {args.size}x{args.size}; "
          f"baseline measured on {n} frames and scaled x{scale:.1f}\n")
    print("| stage | ours (s) | per-frame baseline (s) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for stage in ours:
        print(f"| {stage} | {ours[stage]:.3f} | {base[stage]:.2f} | {base[stage] / ours[stage]:.1f}x |")
    total, base_total = sum(ours.values()), sum(base.values())
    decoded, base_decoded = total - ours["read PNGs"], base_total - base["read PNGs"]
    print(f"| **total from decoded images** | **{decoded:.2f}** | **{base_decoded:.1f}** | **{base_decoded / decoded:.1f}x** |")
    print(f"| **total from PNG files** | **{total:.2f}** | **{base_total:.1f}** | **{base_total / total:.1f}x** |")
    print(f"\njoint error: ours {100 * error:.3f}% of the rig radius, baseline {100 * base_error:.3f}%")


if __name__ == "__main__":
    main()
