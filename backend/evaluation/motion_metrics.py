"""What an animator sees in a written Action, as numbers: flips, jitter, range, lift, turn, travel.

Every function takes a motion as Blender plays it back: local bone rotations ``(T, B, 4)``
(w, x, y, z quaternions relative to rest, one per scene frame) and world-space joints
``(T, J, 3)`` (Z up), with the rig's rest joints ``(J, 3)``. Lengths are in body heights or rig
radii so that a mouse and a horse are scored alike. bpy-free; ``motion_bench`` reads the motions
out of Blender.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

FLIP_DEG = 45.0
"""A bone turning more than this between two scene frames (at 24 fps: over 1000°/s) is a flip:
no creature's limb moves so; a reconstruction that swapped two joints' colours does."""

_EPS = 1e-9


def rotation_steps_deg(rotations: np.ndarray) -> np.ndarray:
    """(T-1, B) angle each bone turns between consecutive frames, in degrees (sign-blind)."""
    q = np.asarray(rotations, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), _EPS)
    dots = np.abs(np.sum(q[1:] * q[:-1], axis=-1)).clip(0.0, 1.0)
    return np.degrees(2.0 * np.arccos(dots))


def flip_share(rotations: np.ndarray, threshold_deg: float = FLIP_DEG) -> float:
    """Share of bone steps (frame to frame, per bone) that turn more than ``threshold_deg``."""
    steps = rotation_steps_deg(rotations)
    return float((steps > threshold_deg).mean()) if steps.size else 0.0


def angular_acceleration(rotations: np.ndarray, fps: float) -> float:
    """Mean angular acceleration of the bones, in degrees / s²: how much the motion jitters."""
    q = np.asarray(rotations, dtype=np.float64)
    frames, bones = q.shape[:2]
    if frames < 3:
        return 0.0
    a = Rotation.from_quat(q[:-1].reshape(-1, 4), scalar_first=True)
    b = Rotation.from_quat(q[1:].reshape(-1, 4), scalar_first=True)
    # The step in the bone's own frame, so that a steady turn has zero acceleration wherever it points.
    velocity = (a.inv() * b).as_rotvec().reshape(frames - 1, bones, 3) * fps
    acceleration = np.linalg.norm(np.diff(velocity, axis=0), axis=-1) * fps
    return float(np.degrees(acceleration.mean()))


def rotation_range_deg(rotations: np.ndarray) -> float:
    """Mean over bones of the largest angle a bone reaches from its rest, in degrees."""
    q = np.asarray(rotations, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), _EPS)
    from_rest = np.degrees(2.0 * np.arccos(np.abs(q[..., 0]).clip(0.0, 1.0)))
    return float(from_rest.max(axis=0).mean())


def body_height(joints_rest: np.ndarray) -> float:
    """The rest pose's vertical extent, or its largest extent for a rig lying flat."""
    extent = np.ptp(np.asarray(joints_rest, dtype=np.float64), axis=0)
    return float(extent[2] if extent[2] > 0.25 * extent.max() else extent.max())


def lift(joints: np.ndarray, joints_rest: np.ndarray) -> float:
    """How high the lowest joint rises above its rest height at most, in body heights (a jump)."""
    lowest = np.asarray(joints)[..., 2].min(axis=1)
    return float(max(lowest.max() - np.asarray(joints_rest)[:, 2].min(), 0.0) / body_height(joints_rest))


def _yaws(joints: np.ndarray, joints_rest: np.ndarray) -> np.ndarray:
    """(T,) heading of each frame against rest about +Z, in radians: the best-fit planar rotation."""
    rest = joints_rest[:, :2] - joints_rest[:, :2].mean(axis=0)
    posed = joints[..., :2] - joints[..., :2].mean(axis=1, keepdims=True)
    cross = np.einsum("tjk,jl->tkl", posed, rest)  # Procrustes in 2D: angle from the 2x2 correlation
    return np.arctan2(cross[:, 1, 0] - cross[:, 0, 1], cross[:, 0, 0] + cross[:, 1, 1])


def turn_deg(joints: np.ndarray, joints_rest: np.ndarray) -> float:
    """How far the body turns about the vertical over the clip in all, in degrees (a spin)."""
    yaws = np.unwrap(_yaws(np.asarray(joints, dtype=np.float64), np.asarray(joints_rest, dtype=np.float64)))
    return float(np.degrees(np.abs(np.diff(yaws)).sum()))


def travel(joints: np.ndarray, joints_rest: np.ndarray) -> float:
    """Horizontal distance the body's centre ends from its rest, in body heights (a walk)."""
    centre = np.asarray(joints)[..., :2].mean(axis=1)
    return float(np.linalg.norm(centre[-1] - np.asarray(joints_rest)[:, :2].mean(axis=0)) / body_height(joints_rest))


def drift(joints: np.ndarray, joints_rest: np.ndarray) -> float:
    """Farthest the body's centre strays horizontally from its rest, in body heights."""
    centre = np.asarray(joints)[..., :2].mean(axis=1)
    return float(np.linalg.norm(centre - np.asarray(joints_rest)[:, :2].mean(axis=0), axis=-1).max()
                 / body_height(joints_rest))


def rig_radius(joints_rest: np.ndarray) -> float:
    rest = np.asarray(joints_rest, dtype=np.float64)
    centre = (rest.min(axis=0) + rest.max(axis=0)) / 2
    return float(np.linalg.norm(rest - centre, axis=1).max())


def movement(joints: np.ndarray, joints_rest: np.ndarray) -> float:
    """Mean joint distance from rest over the clip, in rig radii: 0 for a rig that stands still."""
    return float(np.linalg.norm(np.asarray(joints) - joints_rest, axis=-1).mean() / rig_radius(joints_rest))


def motion_distance(a: np.ndarray, b: np.ndarray, joints_rest: np.ndarray) -> float:
    """Mean distance between two motions' joints frame by frame, in rig radii (the shorter sets T)."""
    frames = min(len(a), len(b))
    return float(np.linalg.norm(np.asarray(a)[:frames] - np.asarray(b)[:frames], axis=-1).mean()
                 / rig_radius(joints_rest))


def prompt_and_seed_effect(motions: dict[tuple[str, int], np.ndarray], joints_rest: np.ndarray) -> dict:
    """How far the prompt moves the motion against how far the seed does, for one rig.

    ``motions[(prompt, seed)]``: joints (T, J, 3). Across prompts: pairs of different prompts with
    one seed; across seeds: pairs of seeds of one prompt. A generator that follows its prompt has a
    ratio well above 1; one that ignores it has about 1; a rig that never moves has 0 / 0 (None).
    """
    keys = sorted(motions)
    prompts = sorted({p for p, _ in keys})
    seeds = sorted({s for _, s in keys})
    across_prompts = [motion_distance(motions[p, s], motions[q, s], joints_rest)
                      for s in seeds for i, p in enumerate(prompts) for q in prompts[i + 1:]
                      if (p, s) in motions and (q, s) in motions]
    across_seeds = [motion_distance(motions[p, s], motions[p, t], joints_rest)
                    for p in prompts for i, s in enumerate(seeds) for t in seeds[i + 1:]
                    if (p, s) in motions and (p, t) in motions]
    prompt_spread = float(np.mean(across_prompts)) if across_prompts else None
    seed_spread = float(np.mean(across_seeds)) if across_seeds else None
    ratio = (prompt_spread / seed_spread if prompt_spread is not None and seed_spread and seed_spread > _EPS
             else None)
    return {"across_prompts": prompt_spread, "across_seeds": seed_spread, "ratio": ratio}


def motion_scores(rotations: np.ndarray, joints: np.ndarray, joints_rest: np.ndarray, fps: float) -> dict:
    """Every per-motion number of the benchmark for one Action."""
    return {
        "flips": flip_share(rotations),
        "max_step_deg": float(rotation_steps_deg(rotations).max()) if len(rotations) > 1 else 0.0,
        "acceleration_deg_s2": angular_acceleration(rotations, fps),
        "range_deg": rotation_range_deg(rotations),
        "movement": movement(joints, joints_rest),
        "lift": lift(joints, joints_rest),
        "turn_deg": turn_deg(joints, joints_rest),
        "travel": travel(joints, joints_rest),
        "drift": drift(joints, joints_rest),
    }
