"""Rig-agnostic features of a 3D joint motion, for the action classifier.

A motion is joints (T, J, 3) of a rig with rest joints (J, 3) and parents (J,). The feature vector
has the same length for every rig and frame count: joints are summarised through the rig's shape
(rest height, distance from the root, leaf or not, side), never by index. Lengths are divided by
the rig's size and every feature uses the motion relative to itself (its first frame, its centroid,
its velocities), so moving the whole motion changes nothing. Blender axes: Z up, front is -Y.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter1d

from animax_addon.core.rig import tree_depths

_EPS = 1e-6
"""Floor of divisors, in rig sizes: float noise of joints that do not move must not turn into ratios."""
SMOOTHING = 3
SPECTRUM_BINS = 4
"""Bands of the motion's power spectrum, in cycles per clip (0-1, 1-2, 2-3, >= 3)."""


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (..., J) over joints with ``weights`` (G, J) -> (..., G); 0 for an empty group."""
    return values @ weights.T / np.maximum(weights.sum(axis=1), _EPS)


def _groups(rest: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """(G, J) 0/1 membership of joint groups defined by the rest shape alone."""
    lo, hi = rest.min(axis=0), rest.max(axis=0)
    height = (rest[:, 2] - lo[2]) / max(hi[2] - lo[2], _EPS)
    depth = tree_depths(parents)
    depth = depth / max(depth.max(), 1)
    leaf = ~np.isin(np.arange(len(parents)), parents)
    centre = (lo + hi) / 2
    size = max(np.ptp(rest, axis=0).max(), _EPS)
    side = np.abs(rest[:, 0] - centre[0]) / size
    front = (centre[1] - rest[:, 1]) / size
    return np.stack([
        np.ones(len(rest)), height < 1 / 3, (height >= 1 / 3) & (height <= 2 / 3), height > 2 / 3,
        leaf, ~leaf, depth <= 0.5, depth > 0.5, side > 0.15, side <= 0.15, front > 0.15, front < -0.15,
    ]).astype(float)


def _yaw(local: np.ndarray) -> np.ndarray:
    """(T,) unwrapped turn about the vertical of the centred horizontal layout, from frame 0."""
    a, b = local[:1, :, :2], local[:, :, :2]
    cross = (a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]).sum(axis=1)
    dot = (a * b).sum(axis=(1, 2))
    return np.unwrap(np.arctan2(cross, dot))


def _rigid_fit(local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: angle (T,) of the best rotation of frame 0 onto it, and the residual (T, J, 3)."""
    h = np.einsum("jc,tjd->tcd", local[0], local)
    u, _, vt = np.linalg.svd(h)
    flip = np.sign(np.linalg.det(u @ vt))
    u[:, :, -1] *= flip[:, None]
    rotation = np.swapaxes(u @ vt, 1, 2)  # (T, 3, 3): local[t] ~ rotation @ local[0]
    angle = np.arccos(np.clip((np.trace(rotation, axis1=1, axis2=2) - 1) / 2, -1, 1))
    return angle, local - np.einsum("tcd,jd->tjc", rotation, local[0])


def _spectrum(signal: np.ndarray) -> np.ndarray:
    """Share of the detrended signal's (T, N) power in each band of cycles per clip."""
    t = np.arange(len(signal))
    design = np.stack([np.ones_like(t), t], axis=1).astype(float)
    trend = design @ np.linalg.lstsq(design, signal, rcond=None)[0]
    power = (np.abs(np.fft.rfft(signal - trend, axis=0)) ** 2).sum(axis=1)[1:]  # drop DC
    cycles = np.arange(1, len(power) + 1) * (len(t) - 1) / len(t)  # cycles over the clip's duration
    band = np.minimum(cycles.astype(int), SPECTRUM_BINS - 1)
    shares = np.bincount(band, weights=power, minlength=SPECTRUM_BINS)[:SPECTRUM_BINS]
    peak = cycles[np.argmax(power)] if power.sum() > _EPS else 0.0
    return np.concatenate([shares / max(power.sum(), _EPS), [peak / len(t)]])


def motion_features(joints: np.ndarray, joints_rest: np.ndarray, joint_parents: np.ndarray) -> np.ndarray:
    """A fixed-length feature vector of the motion ``joints`` (T, J, 3) of a rig (see module doc)."""
    joints = np.asarray(joints, dtype=float)
    rest = np.asarray(joints_rest, dtype=float)
    parents = np.asarray(joint_parents)
    if joints.ndim != 3 or joints.shape[1:] != rest.shape or len(joints) < 3:
        raise ValueError(f"joints must be (T >= 3, {len(rest)}, 3) for this rig, got {joints.shape}")
    size = max(np.ptp(rest, axis=0).max(), _EPS)
    # Reconstructed motions jitter from frame to frame; a 3-frame mean keeps velocities about the motion.
    x = uniform_filter1d(joints / size, SMOOTHING, axis=0, mode="nearest")
    centroid = x.mean(axis=1)  # (T, 3)
    drift = centroid - centroid[0]
    local = x - centroid[:, None]  # the pose without translation
    change = local - local[0]  # (T, J, 3)
    velocity = np.diff(local, axis=0)
    speed = np.linalg.norm(velocity, axis=-1)  # (T-1, J)
    total_speed = np.linalg.norm(np.diff(x, axis=0), axis=-1)

    # Whole body: travel (forward is -Y, the side is either way), hops, turns, rigid or not.
    ends_z = (drift[0, 2] + drift[-1, 2]) / 2
    yaw = _yaw(local)
    angle, residual = _rigid_fit(local)
    moved = np.linalg.norm(change, axis=-1).mean()
    body = [
        drift[-1, 2], drift[:, 2].max(), drift[:, 2].min(), drift[:, 2].max() - ends_z,
        -drift[-1, 1], np.abs(drift[-1, 0]), *np.ptp(drift, axis=0),
        np.abs(yaw[-1]), np.abs(yaw).max(), np.ptp(yaw), angle.max(), angle[-1],
        np.linalg.norm(residual, axis=-1).mean() / max(moved, _EPS), moved,
        speed.mean(), total_speed.mean(), np.linalg.norm(np.diff(x, 2, axis=0), axis=-1).mean(),
    ]

    # Extent of the body over time: rising, sinking, folding, stretching.
    top, bottom = x[:, :, 2].max(axis=1), x[:, :, 2].min(axis=1)
    width = np.ptp(x[:, :, :2], axis=1)  # (T, 2)
    extent = []
    for series in (top - top[0], bottom - bottom[0], (top - bottom) - (top - bottom)[0],
                   width[:, 0] - width[0, 0], width[:, 1] - width[0, 1]):
        extent += [series[-1], series.max(), series.min()]

    # Which parts move and how: per group of joints, mean speed, reach, vertical and sideways shares of
    # the speed, and how far the motion ends from where it started (one-way or there and back).
    groups = _groups(rest, parents)
    reach = np.linalg.norm(change, axis=-1).max(axis=0)  # (J,)
    vertical, lateral = (np.abs(velocity[..., k]).sum(axis=0) / np.maximum(speed.sum(axis=0), _EPS) for k in (2, 0))
    one_way = np.linalg.norm(change[-1], axis=-1) / np.maximum(reach, _EPS)
    rise = change[-1, :, 2] / np.maximum(reach, _EPS)
    forward = -change[-1, :, 1] / np.maximum(reach, _EPS)
    energy = speed.sum(axis=0)
    parts = np.concatenate([_weighted_mean(v, groups) for v in (speed.mean(axis=0), reach)])
    weighted = groups * energy  # the same groups, each joint counted by how much it moves
    parts = np.concatenate([parts] + [_weighted_mean(v, weighted) for v in (vertical, lateral, one_way, rise, forward)])

    # Where the motion is: energy shares and the shape of the most moving joints.
    share = energy / max(energy.sum(), _EPS)
    concentration = [share.max(), -(share * np.log(share + _EPS)).sum() / np.log(max(len(share), 2))]
    where = np.stack([rest[:, 2] - rest[:, 2].min(), np.abs(rest[:, 0] - rest[:, 0].mean()),
                      rest[:, 1].mean() - rest[:, 1]]) / size @ share  # 0 when nothing moves

    # Left against right: flapping wings move together, a walk alternates, a wave uses one side.
    lo, hi = rest.min(axis=0), rest.max(axis=0)
    centre_x, margin = (lo[0] + hi[0]) / 2, 0.05 * size
    sides = np.stack([rest[:, 0] > centre_x + margin, rest[:, 0] < centre_x - margin]).astype(float)
    side_energy = _weighted_mean(energy, sides)
    side_vz = _weighted_mean(velocity[..., 2], sides)  # (T-1, 2)
    a, b = side_vz[:, 0] - side_vz[:, 0].mean(), side_vz[:, 1] - side_vz[:, 1].mean()
    correlation = (a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), _EPS)
    symmetry = [side_energy.min() / max(side_energy.max(), _EPS), correlation, sides.sum(axis=1).min() > 0]

    # Rhythm: how the joints' motion splits over frequencies, and how often velocities reverse.
    rhythm = _spectrum(change.reshape(len(change), -1))
    flips = (np.diff(np.sign(np.where(np.abs(velocity) > _EPS, velocity, 0)), axis=0) != 0).mean(axis=0)  # (J, 3)
    rhythm = np.concatenate([rhythm, [(flips * np.abs(velocity).sum(axis=0)).sum() /
                                      max(np.abs(velocity).sum(), _EPS)]])

    return np.concatenate([body, extent, parts, concentration, where, symmetry, rhythm]).astype(np.float64)
