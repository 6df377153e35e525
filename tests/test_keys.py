"""Key thinning (bpy-free): dropped keys are reproduced within the tolerance by the kept ones."""

import numpy as np
import pytest

from animax_addon.core.keys import keep_keys


def _interpolate(values, keep):
    frames = np.arange(len(values))
    return np.stack([np.interp(frames, frames[keep], values[keep, c]) for c in range(values.shape[1])], axis=1)


@pytest.mark.parametrize("tolerance", [1e-3, 1e-2, 0.1])
def test_kept_keys_reproduce_all_frames_within_tolerance(tolerance):
    rng = np.random.default_rng(0)
    t = np.linspace(0, 3, 120)[:, None]
    values = np.concatenate([np.sin(t * [1, 2]), np.cumsum(rng.normal(0, 0.01, (120, 2)), axis=0)], axis=1)
    keep = keep_keys(values, tolerance)
    assert keep[0] and keep[-1]
    assert np.abs(_interpolate(values, keep) - values).max() <= tolerance
    assert keep.sum() < len(values)


def test_larger_tolerance_keeps_fewer_keys():
    t = np.linspace(0, 6, 200)[:, None]
    values = np.sin(t * [1, 1.5, 3])
    counts = [keep_keys(values, tol).sum() for tol in (1e-4, 1e-3, 1e-2, 1e-1)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_straight_segments_keep_only_their_corners():
    # a piecewise-linear path with corners at frames 10 and 25: exactly those and the ends remain
    frames = np.arange(40, dtype=float)
    x = np.interp(frames, [0, 10, 25, 39], [0, 1, -1, 2])
    values = np.stack([x, 2 * x + 1], axis=1)
    assert np.flatnonzero(keep_keys(values, 1e-9)).tolist() == [0, 10, 25, 39]


def test_components_are_thinned_together():
    # one channel is flat, the other has a bump: the bump's key is kept for both
    values = np.zeros((9, 2))
    values[4, 1] = 1.0
    keep = keep_keys(values, 0.5)
    assert keep[4]


def test_zero_tolerance_and_short_input_keep_everything():
    values = np.random.default_rng(1).normal(size=(10, 4))
    assert keep_keys(values, 0.0).all()
    assert keep_keys(values[:2], 1.0).all()
    assert keep_keys(values[:0], 1.0).shape == (0,)
    with pytest.raises(ValueError, match="frames, channels"):
        keep_keys(values[:, 0], 0.1)
