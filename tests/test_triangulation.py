"""Triangulation of multi-view 2D joints into 3D joints (backend.reconstruction.triangulation).

Ground truth: random rigs (real ``Rig`` objects, so the rigid pairs are the product's) in
normalised space, posed by smooth random bone rotations (lengths and sibling distances stay
exact), projected with the product's 4-view camera rig at 256 px.
"""

from __future__ import annotations

import numpy as np
import pytest

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.rig import Bone, Rig
from backend.reconstruction.triangulation import _Refinement, triangulate, triangulate_linear

CAMERAS = make_camera_rig(np.zeros(3), 1.0, 256)


def random_rig(rng, num_joints: int) -> Rig:
    """A random tree of bones with exactly ``num_joints`` joints (heads plus leaf tails).

    Most bones start at their parent's tail (so siblings can share a head: coincident joints),
    some start elsewhere (so sibling heads have distances that the rigid pairs must keep).
    """
    bones: list[Bone] = []
    has_child: list[bool] = []
    count = 0
    while count < num_joints:
        if not bones:
            head, parent, count = np.zeros(3), None, 2
        else:
            leaves = [i for i, c in enumerate(has_child) if not c]
            # A child of a leaf adds one joint, of an inner bone two: land exactly on the count.
            last = num_joints - count == 1
            parent = int(rng.choice(leaves)) if last else int(rng.integers(len(bones)))
            count += 2 if has_child[parent] else 1
            has_child[parent] = True
            up = bones[parent]
            connected = rng.random() < 0.7
            head = np.array(up.tail) if connected else np.array(up.head) + rng.normal(0, 0.3, 3)
            parent = up.name
        direction = rng.normal(size=3)
        tail = head + direction / np.linalg.norm(direction) * rng.uniform(0.3, 1.0)
        bones.append(Bone(f"b{len(bones)}", parent, tuple(head), tuple(tail)))
        has_child.append(False)
    return Rig(bones)


def rotation_matrices(rotvec: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)[..., None]
    x, y, z = np.moveaxis(rotvec / np.maximum(angle[..., 0], 1e-12), -1, 0)
    zero = np.zeros_like(x)
    K = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(rotvec.shape + (3,))
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def animate(rng, rest, parents, frames: int, amplitude: float) -> np.ndarray:
    """(T, J, 3) joints: every joint's children turn rigidly with it (forward kinematics)."""
    J = len(rest)
    freq = rng.uniform(0.2, 1.0, (J, 3))
    phase = rng.uniform(0, 2 * np.pi, (J, 3))
    seconds = np.arange(frames)[:, None, None] / 16.0
    local = rotation_matrices(amplitude * np.sin(2 * np.pi * freq * seconds + phase))
    world = np.empty_like(local)
    joints = np.empty((frames, J, 3))
    for j in np.argsort([depth(parents, j) for j in range(J)], kind="stable"):
        p = parents[j]
        if p < 0:
            world[:, j] = local[:, j]
            joints[:, j] = rest[j] + 0.1 * np.sin(2 * np.pi * 0.5 * seconds[:, 0] + phase[j])
        else:
            world[:, j] = world[:, p] @ local[:, j]
            joints[:, j] = joints[:, p] + np.einsum("tab,b->ta", world[:, p], rest[j] - rest[p])
    return joints


def depth(parents, j) -> int:
    d = 0
    while parents[j] >= 0:
        j, d = parents[j], d + 1
    return d


def scene(seed: int, num_joints: int = 30, frames: int = 12, amplitude: float = 0.3):
    rng = np.random.default_rng(seed)
    rig = random_rig(rng, num_joints)
    center, radius = rig.bounding_sphere()
    rest = (rig.joints_rest - center) / radius  # the rest pose fills the unit sphere
    truth = animate(rng, rest, rig.joint_parents, frames, amplitude)
    pixels, _ = CAMERAS.project(truth)
    confidence = np.ones(pixels.shape[:-1])
    return rng, rig, rest, truth, pixels, confidence


def mpjpe(a, b) -> float:
    return float(np.linalg.norm(a - b, axis=-1).mean())


def relative_length_errors(points, rest, pairs) -> np.ndarray:
    rest_length = np.linalg.norm(rest[pairs[:, 0]] - rest[pairs[:, 1]], axis=1)
    apart = rest_length > 1e-9
    length = np.linalg.norm(points[:, pairs[apart, 0]] - points[:, pairs[apart, 1]], axis=-1)
    return np.abs(length / rest_length[apart] - 1)


def solve(rig, rest, pixels, confidence, **kwargs):
    return triangulate(
        CAMERAS, pixels, confidence, rest, rig.rigid_pairs(), rig.joint_parents, **kwargs
    )


def test_exact_observations_are_recovered():
    _, rig, rest, truth, pixels, confidence = scene(0)
    linear = triangulate_linear(CAMERAS, pixels, confidence, rest, rig.joint_parents)
    assert mpjpe(linear, truth) < 1e-6
    assert mpjpe(solve(rig, rest, pixels, confidence), truth) < 1e-4


def test_noisy_observations_keep_rigid_lengths():
    rng, rig, rest, truth, pixels, confidence = scene(1, num_joints=40, frames=20)
    noisy = pixels + rng.normal(0, 1.0, pixels.shape)
    linear = triangulate_linear(CAMERAS, noisy, confidence, rest, rig.joint_parents)
    refined = solve(rig, rest, noisy, confidence)
    assert mpjpe(refined, truth) < 0.01
    assert mpjpe(refined, truth) < mpjpe(linear, truth)
    pairs = rig.rigid_pairs()
    assert relative_length_errors(linear, rest, pairs).max() > 0.02  # the test has teeth
    assert relative_length_errors(refined, rest, pairs).max() < 0.005
    # Joints at the same rest place (bones sharing a head) stay together.
    same = pairs[np.linalg.norm(rest[pairs[:, 0]] - rest[pairs[:, 1]], axis=1) < 1e-9]
    assert len(same)
    assert np.linalg.norm(refined[:, same[:, 0]] - refined[:, same[:, 1]], axis=-1).max() < 1e-3


def test_joints_missing_in_one_view():
    rng, rig, rest, truth, pixels, confidence = scene(2)
    noisy = pixels + rng.normal(0, 1.0, pixels.shape)
    missing = rng.integers(0, CAMERAS.num_views, size=confidence.shape[1:])
    frame, joint = np.indices(missing.shape)
    noisy[missing, frame, joint] = np.nan
    confidence[missing, frame, joint] = 0.0
    assert mpjpe(solve(rig, rest, noisy, confidence), truth) < 0.015


def test_joint_seen_in_one_view_is_placed_by_rigid_lengths():
    rng, rig, rest, truth, pixels, confidence = scene(3)
    parents, pairs = rig.joint_parents, rig.rigid_pairs()
    partners = np.bincount(pairs.ravel(), minlength=len(rest))
    # Joints whose depth the lengths pin down (two or more rigid partners), parents fully seen.
    chosen: list[int] = []
    for j in rng.permutation(np.flatnonzero((parents >= 0) & (partners >= 2))):
        if parents[j] not in chosen and not np.isin(chosen, np.flatnonzero(parents == j)).any():
            chosen.append(int(j))
    chosen = chosen[:4]
    assert len(chosen) == 4
    for j in chosen:
        hidden = np.arange(CAMERAS.num_views) != rng.integers(CAMERAS.num_views)
        confidence[hidden, :, j] = 0.0
        pixels[hidden, :, j] = np.nan
    exact = solve(rig, rest, pixels, confidence)
    assert np.linalg.norm(exact - truth, axis=-1)[:, chosen].max() < 1e-3
    noisy = solve(rig, rest, pixels + rng.normal(0, 1.0, pixels.shape), confidence)
    assert np.linalg.norm(noisy - truth, axis=-1)[:, chosen].mean() < 0.03


def test_joint_seen_only_by_opposite_views_takes_its_depth_from_lengths():
    # Views 0 and 180 look along the same line: their rays barely cross, so the DLT depth is noise.
    rng, rig, rest, truth, pixels, confidence = scene(9)
    partners = np.bincount(rig.rigid_pairs().ravel(), minlength=len(rest))
    chosen = np.flatnonzero((rig.joint_parents >= 0) & (partners >= 2))[::3]
    confidence[1::2, :, chosen[:, None]] = 0.0
    noisy = pixels + rng.normal(0, 1.0, pixels.shape)
    linear = triangulate_linear(CAMERAS, noisy, confidence, rest, rig.joint_parents)
    refined = solve(rig, rest, noisy, confidence)
    assert np.linalg.norm(linear - truth, axis=-1)[:, chosen].mean() < 0.07
    assert np.linalg.norm(refined - truth, axis=-1)[:, chosen].mean() < 0.015


def test_unseen_child_turns_with_its_seen_siblings():
    _, rig, rest, truth, pixels, confidence = scene(11)
    parents = rig.joint_parents
    for head in np.flatnonzero(np.bincount(parents[parents >= 0], minlength=len(rest)) >= 3):
        children = np.flatnonzero(parents == head)
        if np.linalg.matrix_rank(rest[children[1:]] - rest[head], tol=1e-3) >= 2:
            break
    else:
        pytest.fail("the scene has no bone with three spread-out children")
    confidence[:, :, children[0]] = 0.0
    linear = triangulate_linear(CAMERAS, pixels, confidence, rest, parents)
    np.testing.assert_allclose(linear[:, children[0]], truth[:, children[0]], atol=1e-6)


def test_gross_outlier_is_down_weighted():
    rng, rig, rest, truth, pixels, confidence = scene(4)
    frame, joint, view = 5, 7, 1
    pixels[view, frame, joint] += 30.0 * np.array([0.6, -0.8])
    linear = triangulate_linear(CAMERAS, pixels, confidence, rest, rig.joint_parents)
    assert np.linalg.norm(linear[frame, joint] - truth[frame, joint]) < 1e-6  # view left out
    refined = solve(rig, rest, pixels, confidence)
    assert np.linalg.norm(refined[frame, joint] - truth[frame, joint]) < 0.02
    # Several stray observations at once (3% of them, 30 px off) do not spoil the rest.
    stray = rng.random(confidence.shape) < 0.03
    angle = rng.uniform(0, 2 * np.pi, stray.sum())
    pixels[stray] += 30.0 * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    assert mpjpe(solve(rig, rest, pixels, confidence), truth) < 0.01


def test_two_views_that_disagree_keep_the_more_confident_one():
    # A joint seen by two neighbouring views only, one of them 30 px off and less sure: the point
    # between the two rays lies far from both; the sure view's ray at the bone length does not.
    _, rig, rest, truth, pixels, confidence = scene(12)
    partners = np.bincount(rig.rigid_pairs().ravel(), minlength=len(rest))
    joint = int(np.flatnonzero((rig.joint_parents >= 0) & (partners >= 2))[0])
    confidence[2:, :, joint] = 0.0
    pixels[2:, :, joint] = np.nan
    pixels[1, :, joint] += 30.0 * np.array([0.6, -0.8])
    confidence[1, :, joint] = 0.3
    linear = triangulate_linear(CAMERAS, pixels, confidence, rest, rig.joint_parents)
    assert np.linalg.norm(linear[:, joint] - truth[:, joint], axis=-1).max() < 1e-6
    assert mpjpe(solve(rig, rest, pixels, confidence), truth) < 1e-3


def test_smoothing_reduces_acceleration_jitter():
    rng, rig, rest, truth, pixels, confidence = scene(5, frames=32, amplitude=0.2)
    noisy = pixels + rng.normal(0, 1.5, pixels.shape)
    plain = solve(rig, rest, noisy, confidence)
    smooth = solve(rig, rest, noisy, confidence, smoothing=1.0)

    def jitter(points):
        return np.linalg.norm(np.diff(points - truth, n=2, axis=0), axis=-1).mean()

    assert jitter(smooth) < 0.5 * jitter(plain)
    assert mpjpe(smooth, truth) < mpjpe(plain, truth)


def test_unseen_joints_hang_from_the_tree():
    _, rig, rest, truth, pixels, confidence = scene(6)
    parents = rig.joint_parents
    root = int(np.flatnonzero(parents < 0)[0])
    leaf = int(np.flatnonzero(np.bincount(parents[parents >= 0], minlength=len(rest)) == 0)[-1])
    confidence[:, [0, 1, 5], root] = 0.0  # root lost at the start and in one frame
    confidence[1:, :, leaf] = 0.0  # a leaf seen by one view only ...
    confidence[0, 4:, leaf] = 0.0  # ... then by none
    pixels[:, 5, root] = np.nan
    linear = triangulate_linear(CAMERAS, pixels, confidence, rest, parents)
    np.testing.assert_allclose(linear[[0, 1], root], truth[[2, 2], root], atol=1e-9)
    np.testing.assert_allclose(linear[5, root], truth[4, root], atol=1e-9)
    up = parents[leaf]
    bone = np.linalg.norm(linear[:, leaf] - linear[:, up], axis=-1)
    np.testing.assert_allclose(bone, np.linalg.norm(rest[leaf] - rest[up]), rtol=1e-6)
    refined = solve(rig, rest, pixels, confidence)
    assert np.isfinite(refined).all()
    np.testing.assert_allclose(
        np.linalg.norm(refined[:, leaf] - refined[:, up], axis=-1), bone, rtol=5e-3
    )


def test_analytic_jacobian_matches_finite_differences():
    rng, rig, rest, truth, pixels, confidence = scene(7, num_joints=8, frames=4)
    confidence *= rng.uniform(0.2, 1.0, confidence.shape)
    confidence[2, 1, 3] = 0.0
    pairs = np.sort(rig.rigid_pairs(), axis=1)
    problem = _Refinement(CAMERAS, pixels, confidence, rest, pairs, smoothing=0.7)
    x = (truth + rng.normal(0, 0.05, truth.shape)).ravel()
    step = 1e-6
    numeric = np.stack(
        [
            (problem.residuals(x + step * e) - problem.residuals(x - step * e)) / (2 * step)
            for e in np.eye(len(x))
        ],
        axis=1,
    )
    analytic = problem.jacobian(x).toarray()
    np.testing.assert_allclose(analytic, numeric, atol=1e-5 * np.abs(numeric).max())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "pixels": a["pixels"][:3]}, "pixels must have shape"),
        (lambda a: {**a, "pixels": a["pixels"][..., :1]}, "pixels must have shape"),
        (lambda a: {**a, "confidence": a["confidence"][:, :-1]}, "confidence must have shape"),
        (lambda a: {**a, "rest_joints": a["rest_joints"][:-1]}, "pixels must have shape"),
        (lambda a: {**a, "rest_joints": a["rest_joints"][:, :2]}, "rest_joints must have shape"),
        (lambda a: {**a, "rigid_pairs": a["rigid_pairs"][:, :1]}, "rigid_pairs must be"),
        (lambda a: {**a, "rigid_pairs": a["rigid_pairs"] + 100}, "rigid_pairs must join"),
        (lambda a: {**a, "joint_parents": a["joint_parents"][:-1]}, "joint_parents must be"),
        (lambda a: {**a, "joint_parents": np.roll(np.arange(len(a["joint_parents"])), 1)}, "cycle"),
        (lambda a: {**a, "smoothing": -1.0}, "smoothing"),
    ],
)
def test_mismatched_inputs_raise_clear_errors(change, message):
    _, rig, rest, _, pixels, confidence = scene(8, num_joints=6, frames=3)
    args = dict(
        cameras=CAMERAS,
        pixels=pixels,
        confidence=confidence,
        rest_joints=rest,
        rigid_pairs=rig.rigid_pairs(),
        joint_parents=rig.joint_parents,
    )
    with pytest.raises(ValueError, match=message):
        triangulate(**change(args))
