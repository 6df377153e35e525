"""From multi-view pose-map videos to bone rotations (paper §3.3, the three stages in order).

2D joints by colour clustering -> 3D joints by triangulation with rigid lengths -> local bone
rotations by inverse kinematics; the joints returned are the forward kinematics of those
rotations, so what the user gets and what is scored are the same motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from animax_addon.core.cameras import CameraRig
from animax_addon.core.pose_maps import disc_radius, palette
from animax_addon.core.rig import Rig

from .joints2d import detect_joints
from .kinematics import forward_kinematics, inverse_kinematics, smooth_rotations
from .triangulation import triangulate


GENERATED = {"smoothing": 1.0, "rest_prior": 0.5, "rotation_smoothing": 1.0, "widen_thin_targets": True}
"""How the worker reconstructs generated pose maps (clean ones need none of it). Triangulation's
acceleration term cut the tiny model's joint acceleration ~10x at no cost in joint error. The
rest prior and a one-frame low-pass of the rotations took the written Actions of ``animax
motion-bench`` from 16.5% to 0.9% flipping bone steps and their jitter against the truth from
24.7x to 7.2x, with the action read as often; on true pose maps they raise the joint error from
3.6% to 4.4% of the rig's radius (a 2-frame low-pass: 6.5%, which is why it is one; docs/quality.md).
Widening thin targets kept Rigify's quadrupeds from rolling over: flips 1.6-2.0% to 0.4-0.8%."""


@dataclass
class Reconstruction:
    """One motion; T frames, B bones, J joints, armature space in metres."""

    joints: np.ndarray  # (T, J, 3)
    rotations: np.ndarray  # (T, B, 4) pose-bone quaternions w, x, y, z
    locations: np.ndarray  # (T, B, 3) pose-bone locations (non-zero for root bones only)
    confidence: np.ndarray  # (T, J) in [0, 1]
    reprojection_error: np.ndarray  # (T, J) pixels, NaN where no view saw the joint
    triangulated: np.ndarray  # (T, J, 3) the triangulated joints IK was fitted to (diagnostic)
    detected: np.ndarray  # (V, T, J, 2) the 2D joints found in each view, NaN where none (diagnostic)
    joint_names: list[str]
    bone_names: list[str]
    root: int  # index of the first root bone

    @property
    def root_translation(self) -> np.ndarray:
        """(T, 3) location of the first root bone."""
        return self.locations[:, self.root]


def reprojection_errors(
    cameras: CameraRig, joints_normalized: np.ndarray, pixels: np.ndarray, confidence: np.ndarray
) -> np.ndarray:
    """(T, J) confidence-weighted mean pixel distance between projections and detections."""
    projected, _ = cameras.project(joints_normalized)
    distance = np.linalg.norm(projected - pixels, axis=-1)
    seen = (confidence > 0) & np.isfinite(distance)
    weight = np.where(seen, confidence, 0.0)
    total = weight.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.where(seen, distance, 0.0) * weight).sum(axis=0) / total, np.nan)


def two_view_confidence(view_confidence: np.ndarray) -> np.ndarray:
    """(T, J) from (V, T, J): triangulation needs two views, so the mean of the best two."""
    return np.sort(view_confidence, axis=0)[-2:].mean(axis=0)


def joint_confidence(seen: np.ndarray, error_px: np.ndarray, radius_px: float) -> np.ndarray:
    """(T, J): how well two views saw the joint, discounted by how badly the views disagree."""
    agreement = np.exp(-0.5 * (np.nan_to_num(error_px, nan=np.inf) / radius_px) ** 2)
    return seen * agreement


def reconstruct(rig: Rig, cameras: CameraRig, images: np.ndarray, smoothing: float = 0.0, rest_prior: float = 0.0,
                rotation_smoothing: float = 0.0, colours: np.ndarray | None = None,
                widen_thin_targets: bool = False) -> Reconstruction:
    """Reconstruct a motion from pose-map videos ``images`` (V, T, H, W, 3) uint8.

    ``colours``: (J, 3) the colour each joint was drawn in; the palette in joint order if not given.

    ``smoothing``: triangulation's acceleration term; ``rest_prior``: how strongly a bone whose
    joints were seen with little confidence keeps its rest (``inverse_kinematics``);
    ``rotation_smoothing``: a low-pass of the bone rotations and root locations over time, in
    frames (``smooth_rotations``); ``widen_thin_targets``: as for ``inverse_kinematics``. All off
    for clean pose maps; the worker uses ``GENERATED``.
    """
    if images.shape[0] != cameras.num_views:
        raise ValueError(f"{images.shape[0]} views of pose maps but {cameras.num_views} cameras")
    pixels, view_conf = detect_joints(images, palette(rig.num_joints) if colours is None else colours)
    rest = cameras.to_normalized(rig.joints_rest)
    joints = triangulate(
        cameras, pixels, view_conf, rest, rig.rigid_pairs(), rig.joint_parents, smoothing=smoothing
    )
    seen = two_view_confidence(view_conf)
    triangulated = cameras.to_world(joints)
    rotations, locations = inverse_kinematics(rig, triangulated, seen, rest_prior, widen_thin_targets)
    rotations = smooth_rotations(rotations, rotation_smoothing)
    if rotation_smoothing > 0:
        locations = gaussian_filter1d(locations, rotation_smoothing, axis=0, mode="nearest")
    _, posed = forward_kinematics(rig, rotations, locations)
    error = reprojection_errors(cameras, cameras.to_normalized(posed), pixels, view_conf)
    return Reconstruction(
        joints=posed,
        rotations=rotations,
        locations=locations,
        confidence=joint_confidence(seen, error, disc_radius(cameras.width)),
        reprojection_error=error,
        triangulated=triangulated,
        detected=pixels,
        joint_names=list(rig.joint_names),
        bone_names=rig.bone_names,
        root=int(rig.roots[0]),
    )
