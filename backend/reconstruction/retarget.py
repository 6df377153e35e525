"""One rig's motion carried onto another: how a rig the embedded model does not know (Rigify's, a
glTF character's) is animated through the training creature it is drawn as.

``counterparts`` gives, for each of the target rig's joints, the source rig's joint it matches
(``joint_colours.counterpart``; -1 for none). Each bone of the target whose two ends both have a
counterpart turns, in the world, as the line between those two source joints turns (as the source
bone at the first of them turns, then by the shortest arc left), keeping its own length and rest
direction; other bones keep their rest direction below their parent; the root moves as the
source's does, scaled by the two rigs' sizes. Everything happens in the target's upright frame, where training
creatures stand (Z up, facing -Y). Plain NumPy, on joint positions; :func:`retarget_motion` then
poses the target's bones by inverse kinematics.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.ndimage import gaussian_filter1d

from animax_addon.core.rig import Rig, tree_depths

from .kinematics import forward_kinematics, inverse_kinematics, shortest_arc, smooth_rotations
from .reconstruct import Reconstruction


def retarget(rig: Rig, source_rotations: np.ndarray, source_locations: np.ndarray, source: Rig,
             counterparts: np.ndarray, rotation: np.ndarray | None = None) -> np.ndarray:
    """(T, J, 3) joint positions of ``rig`` moving as ``source`` does, posed by ``source_rotations``
    (T, Bs, 4) and ``source_locations`` (T, Bs, 3) as ``forward_kinematics`` takes them;
    ``counterparts`` (J,) the source's joint for each of the rig's (-1 for none), ``rotation`` the
    rig's upright frame (world from frame; the world's axes where None)."""
    pose, source_joints = forward_kinematics(source, source_rotations, source_locations)
    # Each source bone's turn from its rest, in the world: what turns the lines from its head.
    turns = pose[..., :3, :3] @ np.linalg.inv(source.rest_matrices[:, :3, :3])
    frame = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    centre, radius = rig.bounding_sphere(rotation)
    rest = (rig.joints_rest - centre) @ frame  # upright frame
    scale = radius / source.bounding_sphere()[1]
    parents = rig.joint_parents
    moved = np.repeat(rest[None], len(source_joints), axis=0)
    for joint in np.argsort(tree_depths(parents), kind="stable"):  # parents before children
        parent, mine = parents[joint], counterparts[joint]
        if parent < 0:
            if mine >= 0:
                moved[:, joint] += (source_joints[:, mine] - source.joints_rest[mine]) * scale
            continue
        bone = rest[joint] - rest[parent]
        theirs = counterparts[parent]
        span = source.joints_rest[mine] - source.joints_rest[theirs] if min(mine, theirs) >= 0 else None
        if span is None or np.linalg.norm(span) < 1e-9:
            moved[:, joint] = moved[:, parent] + bone
            continue
        # The turn of the source bone at the parent's counterpart, twist and all (a spin is a turn
        # about the vertical, not the shortest arc of every line), then the shortest arc that is
        # left where the two counterparts are not that bone's two ends (a chain between them bent).
        turn = turns[:, source.joint_bones[theirs]]
        arcs = shortest_arc(turn @ span, source_joints[:, mine] - source_joints[:, theirs]) @ turn
        moved[:, joint] = moved[:, parent] + arcs @ bone
    return moved @ frame.T + centre


def retarget_motion(rig: Rig, motion: Reconstruction, source: Rig, counterparts: np.ndarray,
                    rotation: np.ndarray | None = None, rest_prior: float = 0.0,
                    rotation_smoothing: float = 0.0) -> Reconstruction:
    """The reconstruction ``motion`` of ``source`` carried onto ``rig`` (arguments as for
    :func:`retarget`): its joints retargeted, the rig's bones posed to them by inverse kinematics,
    and each joint's confidence and reprojection error those of its counterpart (0 and NaN where it
    has none, so that ``rest_prior`` holds such a bone at its rest below its parent);
    ``rotation_smoothing`` low-passes the rig's rotations and root locations as ``reconstruct`` does."""
    targets = retarget(rig, motion.rotations, motion.locations, source, counterparts, rotation)
    has = counterparts >= 0
    confidence = np.where(has, motion.confidence[:, np.maximum(counterparts, 0)], 0.0)
    error = np.where(has, motion.reprojection_error[:, np.maximum(counterparts, 0)], np.nan)
    weights = np.broadcast_to(has.astype(np.float64), confidence.shape)
    rotations, locations = inverse_kinematics(rig, targets, weights, rest_prior, widen_thin_targets=True)
    if rotation_smoothing > 0:
        rotations = smooth_rotations(rotations, rotation_smoothing)
        locations = gaussian_filter1d(locations, rotation_smoothing, axis=0, mode="nearest")
    _, posed = forward_kinematics(rig, rotations, locations)
    unseen = np.full(motion.detected.shape[:2] + (rig.num_joints, 2), np.nan)  # no view saw the rig itself
    return replace(motion, joints=posed, rotations=rotations, locations=locations, confidence=confidence,
                   reprojection_error=error, triangulated=targets, detected=unseen,
                   joint_names=list(rig.joint_names), bone_names=rig.bone_names, root=int(rig.roots[0]))
