"""Forward and inverse kinematics in Blender's pose-bone convention, and frame-rate mapping.

A pose bone's matrix in armature space is ``parent_pose @ rest_offset @ basis`` where
``rest_offset = parent_rest^-1 @ rest`` (``rest`` for a root) and ``basis`` is the bone's
``location`` and ``rotation_quaternion`` (w, x, y, z), relative to its rest orientation, roll
included. Inverse kinematics walks from the roots to the leaves (paper §3.3, after FABRIK's
root-to-leaf order): each bone turns so that the vectors from its head to the joints it carries
match the predicted ones; a root also moves. A joint at its bone's head (a child bone that starts
where its parent does) gives no direction; a bone whose targets all sit at its head turns with the
nearest joints further down that do (a body bone with its tentacles), so the rig reads the same
and no rotation is left undefined.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d, median_filter
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation, RotationSpline

from animax_addon.core.rig import MIN_BONE_LENGTH, Rig

_RANK_TOLERANCE = 1e-6  # relative singular value below which a bone's targets are collinear
THIN_SPREAD = 0.2  # targets spread across their line less than this share of its length lie on it


def _quaternion_matrices(quaternions: np.ndarray) -> np.ndarray:
    flat = quaternions.reshape(-1, 4)
    return Rotation.from_quat(flat, scalar_first=True).as_matrix().reshape(quaternions.shape[:-1] + (3, 3))


def rest_offsets(rig: Rig) -> np.ndarray:
    """(B, 4, 4) each bone's rest matrix relative to its parent's (its own rest for a root)."""
    parent_rest = np.where(
        (rig.parents >= 0)[:, None, None], rig.rest_matrices[np.maximum(rig.parents, 0)], np.eye(4)
    )
    return np.linalg.solve(parent_rest, rig.rest_matrices)


def forward_kinematics(
    rig: Rig, rotations: np.ndarray, locations: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pose matrices (T, B, 4, 4) and joint positions (T, J, 3) in armature space.

    ``rotations``: (T, B, 4) quaternions (w, x, y, z); ``locations``: (T, B, 3) or None.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    frames = rotations.shape[0]
    basis = np.zeros((frames, rig.num_bones, 4, 4))
    basis[..., :3, :3] = _quaternion_matrices(rotations)
    if locations is not None:
        basis[..., :3, 3] = locations
    basis[..., 3, 3] = 1.0
    local = rest_offsets(rig) @ basis
    pose = np.empty_like(local)
    for level in rig.levels:
        parents = rig.parents[level]
        if parents[0] < 0:  # level 0 holds exactly the roots
            pose[:, level] = local[:, level]
        else:
            pose[:, level] = pose[:, parents] @ local[:, level]
    return pose, joints_from_pose(rig, pose)


def bone_ends(rig: Rig, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heads and tails (..., B, 3) of every bone in pose matrices (..., B, 4, 4)."""
    heads = pose[..., :3, 3]
    # a bone's tail is its length along the bone's own Y axis
    return heads, heads + pose[..., :3, 1] * rig.lengths[:, None]


def joints_from_pose(rig: Rig, pose: np.ndarray) -> np.ndarray:
    """Joint positions (T, J, 3): bone heads, then the tails of the leaf bones."""
    heads, tails = bone_ends(rig, pose)
    return np.where(rig.joint_is_tail[None, :, None], tails[:, rig.joint_bones], heads[:, rig.joint_bones])


def _fit_targets(rig: Rig, widen: bool = False) -> list[np.ndarray]:
    """For each bone, the joints whose directions from its head fix its rotation.

    Its targets (``Rig.bone_targets``) that lie away from its head; where none does, the joints
    one generation further down, repeated until some do. Those move with the children too, so
    the fit is a best turn rather than an exact one, but the children then fit their own targets
    exactly and the joints are unchanged. Never empty: each line of descent ends in a leaf's tail,
    which lies away from the leaf's head.

    ``widen``: a bone whose targets lie near one line through its head (spread across it less
    than ``THIN_SPREAD`` of its length) also takes the next generation, until they spread. Its
    turn about that line is otherwise left to the little its targets show of it, which in a
    noisy motion is noise: Rigify's quadrupeds have a root whose children are the tail behind it
    and the spine ahead, and their generated motions rolled the whole body. The wider fit is a
    best turn, so the joints are no longer exactly reproduced: for generated motions only. A bone
    with a single target keeps it alone (its twist stays free and is kept at zero).
    """
    targets = rig.bone_targets()
    heads = rig.num_bones  # joints 0..B-1 are the bone heads, in bone order

    def away(bone, joints):
        return np.linalg.norm(rig.joints_rest[joints] - rig.heads[bone], axis=1) >= MIN_BONE_LENGTH

    def thin(bone, joints):
        spread = np.linalg.svd(rig.joints_rest[joints] - rig.heads[bone], compute_uv=False)
        return spread[1] < THIN_SPREAD * spread[0]

    def next_generation(joints):
        return np.array([t for j in joints if j < heads for t in targets[j]], dtype=np.int64)

    chosen = []
    for bone, own in enumerate(targets):
        found, frontier = own[away(bone, own)], own
        while not len(found) and len(frontier):
            frontier = next_generation(frontier)
            found = frontier[away(bone, frontier)]
        frontier = found
        while widen and len(found) > 1 and thin(bone, found) and len(frontier):
            frontier = next_generation(frontier)
            found = np.concatenate([found, frontier[away(bone, frontier)]])
        chosen.append(found)
    return chosen


def _padded(targets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(t) for t in targets)
    index = np.zeros((len(targets), width), dtype=np.int64)
    mask = np.zeros((len(targets), width), dtype=bool)
    for bone, t in enumerate(targets):
        index[bone, : len(t)] = t
        mask[bone, : len(t)] = True
    return index, mask


def shortest_arc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) turning directions ``a`` onto ``b`` along the shortest arc."""
    # A zero vector (a target predicted exactly on the bone's head) leaves the bone at rest.
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-300)
    axis = np.cross(a, b)
    cos = np.sum(a * b, axis=-1)
    # Opposite directions: any axis perpendicular to a will do; pick one that is not parallel.
    helper = np.where(np.abs(a[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    opposite = cos < -1 + 1e-12
    axis = np.where(opposite[..., None], np.cross(a, helper), axis)
    quat = np.concatenate([(1.0 + cos)[..., None], axis], axis=-1)
    quat /= np.linalg.norm(quat, axis=-1, keepdims=True)
    return _quaternion_matrices(quat)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-300)


def _fit_rotations(rest: np.ndarray, posed: np.ndarray, weights: np.ndarray, prior: float = 0.0) -> np.ndarray:
    """Weighted rotations (..., 3, 3) about the origin taking ``rest`` (..., K, 3) to ``posed``.

    Kabsch where the targets span a plane or more; the shortest arc to the farthest target
    where they are collinear (a single child leaves the twist free: keep it zero). ``prior``: each
    target is also taken as seen at its rest, with weight ``prior * (1 - weight)``, so a bone
    whose targets were hardly seen (weights near 0) keeps its rest while one whose targets were
    seen with full confidence (weights 1) turns exactly as they say.
    """
    if prior > 0:
        rest = np.concatenate([rest, rest], axis=-2)
        posed = np.concatenate([posed, rest[..., : posed.shape[-2], :]], axis=-2)
        doubt = np.where(weights > 0, prior * np.clip(1.0 - weights, 0.0, None), 0.0)
        weights = np.concatenate([weights, doubt], axis=-1)
    cov = np.einsum("...k,...ka,...kb->...ab", weights, rest, posed)
    u, s, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(vt.swapaxes(-1, -2) @ u.swapaxes(-1, -2)))
    d = np.where(d == 0, 1.0, d)
    fix = np.ones(s.shape)
    fix[..., 2] = d
    kabsch = vt.swapaxes(-1, -2) @ (fix[..., None] * u.swapaxes(-1, -2))
    far = np.argmax(np.linalg.norm(rest, axis=-1) * (weights > 0), axis=-1)[..., None, None]
    far_rest = np.take_along_axis(rest, far, axis=-2)[..., 0, :]
    far_posed = np.take_along_axis(posed, far, axis=-2)[..., 0, :]
    if prior > 0:  # the arc to the weighted mean of where the target was seen and where it rests
        count = posed.shape[-2] // 2
        w_seen = np.take_along_axis(weights, far[..., 0] % count, axis=-1)
        far_posed = w_seen * _unit(far_posed) + prior * np.clip(1.0 - w_seen, 0.0, None) * _unit(far_rest)
    arc = shortest_arc(far_rest, far_posed)
    planar = s[..., 1] > _RANK_TOLERANCE * np.maximum(s[..., 0], 1e-300)
    return np.where(planar[..., None, None], kabsch, arc)


def inverse_kinematics(
    rig: Rig, joints: np.ndarray, weights: np.ndarray | None = None, rest_prior: float = 0.0,
    widen_thin_targets: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Pose-bone rotations (T, B, 4; w, x, y, z) and locations (T, B, 3) that pose ``joints``.

    ``joints``: (T, J, 3) in armature space; ``weights``: optional (T, J) confidences in [0, 1].
    ``rest_prior``: how strongly a bone keeps its rest against its parent where its targets were
    seen with little confidence (0: not at all; the joints are then reproduced exactly).
    ``widen_thin_targets``: fit a bone whose targets lie near a line to the next generation's too
    (``_fit_targets``), for noisy joints. Only root bones get a location. Quaternions keep one
    hemisphere over time, so keys interpolate well.
    """
    joints = np.asarray(joints, dtype=np.float64)
    frames = joints.shape[0]
    weights = np.ones(joints.shape[:2]) if weights is None else np.asarray(weights, np.float64)
    weights = weights + 1e-3  # a joint nobody saw still has its triangulated (constrained) place
    index, mask = _padded(_fit_targets(rig, widen_thin_targets))
    offsets = rest_offsets(rig)
    # Inverses, not transposes: near -Y Blender's rest matrices are slightly non-orthogonal
    # (a series expansion), and Blender poses with them as they are.
    rest_inv = np.linalg.inv(rig.rest_matrices[:, :3, :3])
    rest_vectors = np.einsum("bij,bkj->bki", rest_inv, rig.joints_rest[index] - rig.heads[:, None])
    # a leaf's own tail is, by Blender's definition, its length along its own Y axis
    tails = rig.joint_is_tail[index] & (rig.joint_bones[index] == np.arange(rig.num_bones)[:, None]) & mask
    rest_vectors[tails] = 0.0
    rest_vectors[tails, 1] = rig.lengths[np.nonzero(tails)[0]]
    pose = np.zeros((frames, rig.num_bones, 4, 4))
    rotations = np.zeros((frames, rig.num_bones, 3, 3))
    locations = np.zeros((frames, rig.num_bones, 3))
    for level in rig.levels:
        parents = rig.parents[level]
        if parents[0] < 0:
            # location lives in the root's rest frame: head_pose = head_rest + R_rest @ location
            locations[:, level] = np.einsum(
                "bij,tbj->tbi", rest_inv[level], joints[:, level] - rig.heads[level]
            )
            frame = np.broadcast_to(offsets[level], (frames,) + offsets[level].shape).copy()
            frame[..., :3, 3] = joints[:, level]
        else:
            frame = pose[:, parents] @ offsets[level]
        # Both vector sets in the bone's own frame before its rotation: rest in its rest frame,
        # predicted in the frame its parent's pose gives it, measured from the predicted head.
        targets = index[level]
        rest_vec = rest_vectors[level]
        posed_vec = np.einsum(
            "tbij,tbkj->tbki",
            np.linalg.inv(frame[..., :3, :3]),
            joints[:, targets] - joints[:, level][:, :, None],
        )
        w = weights[:, targets] * mask[level]
        rot = _fit_rotations(np.broadcast_to(rest_vec, posed_vec.shape), posed_vec, w, rest_prior)
        rotations[:, level] = rot
        basis = np.zeros(rot.shape[:-2] + (4, 4))
        basis[..., :3, :3] = rot
        basis[..., 3, 3] = 1.0
        pose[:, level] = frame @ basis

    quats = Rotation.from_matrix(rotations.reshape(-1, 3, 3)).as_quat(scalar_first=True)
    return _continuous(quats.reshape(frames, rig.num_bones, 4)), locations


def smooth_rotations(quats: np.ndarray, sigma: float) -> np.ndarray:
    """Quaternions (T, B, 4) low-passed over time: a Gaussian of ``sigma`` frames on the
    hemisphere-continuous components, renormalised. A median over three frames first, so that a
    one-frame swap of two joints' colours leaves no spike for the Gaussian to spread."""
    if sigma <= 0 or len(quats) < 3:
        return quats
    quats = _continuous(np.array(quats, dtype=np.float64))
    quats = median_filter(quats, size=(3, 1, 1), mode="nearest")
    quats = gaussian_filter1d(quats, sigma, axis=0, mode="nearest")
    return _continuous(quats / np.maximum(np.linalg.norm(quats, axis=-1, keepdims=True), 1e-12))


def _continuous(quats: np.ndarray) -> np.ndarray:
    """Flip signs so that consecutive quaternions of a bone lie in one hemisphere."""
    quats = np.where(quats[:1, ..., :1] < 0, -quats, quats) if len(quats) else quats
    dots = np.sum(quats[1:] * quats[:-1], axis=-1)
    flips = np.cumprod(np.where(dots < 0, -1.0, 1.0), axis=0)
    quats[1:] *= flips[..., None]
    return quats


def resample(
    rotations: np.ndarray, locations: np.ndarray, source_fps: float, target_fps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Map a motion from ``source_fps`` (the model's 16) to ``target_fps`` (the scene's).

    Keeps the duration: frame i of the result is at time i / target_fps, and the result passes
    through every source frame. Rotations follow a cubic rotation spline and locations a cubic
    spline: both keep their velocity continuous through the source frames, where slerp and linear
    interpolation change it at each one, a jolt an animator sees.
    """
    if source_fps <= 0 or target_fps <= 0:
        raise ValueError(f"frame rates must be positive, got {source_fps} and {target_fps}")
    frames, bones = rotations.shape[:2]
    times = np.arange(frames) / source_fps
    count = int(np.floor((frames - 1) * target_fps / source_fps + 1e-9)) + 1
    new_times = np.arange(count) / target_fps
    if frames == 1:
        return rotations.copy(), locations.copy()
    out_rot = np.empty((count, bones, 4))
    for bone in range(bones):
        spline = RotationSpline(times, Rotation.from_quat(rotations[:, bone], scalar_first=True))
        out_rot[:, bone] = spline(new_times).as_quat(scalar_first=True)
    return _continuous(out_rot), resample_positions(locations, source_fps, target_fps)


def resample_positions(values: np.ndarray, source_fps: float, target_fps: float) -> np.ndarray:
    """Positions (T, ...) at ``target_fps`` over the same duration as ``resample`` maps a motion,
    on a cubic spline through the source frames (a line through two)."""
    values = np.asarray(values, dtype=np.float64)
    frames = len(values)
    times = np.arange(frames) / source_fps
    count = int(np.floor((frames - 1) * target_fps / source_fps + 1e-9)) + 1
    new_times = np.arange(count) / target_fps
    if frames == 1:
        return values.copy()
    return CubicSpline(times, values, axis=0)(new_times)
