"""Key thinning: which keyframes a linear interpolation of the others reproduces (bpy-free)."""

from __future__ import annotations

import numpy as np


def keep_keys(values: np.ndarray, tolerance: float) -> np.ndarray:
    """Boolean mask (T,) of the keys to keep so that the rest stay within ``tolerance``.

    ``values``: (T, C), one row per frame (e.g. a bone's four quaternion components, which are
    thinned together so the bone keeps whole keys). A dropped key's every component lies within
    ``tolerance`` of the straight line between the kept keys around it. Ramer-Douglas-Peucker:
    keep the ends, split a span at its worst key while that key is off by more than the
    tolerance. First and last keys are always kept; ``tolerance <= 0`` keeps every key.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (frames, channels), got shape {values.shape}")
    frames = len(values)
    if tolerance <= 0 or frames <= 2:
        return np.ones(frames, dtype=bool)
    keep = np.zeros(frames, dtype=bool)
    keep[[0, -1]] = True
    spans = [(0, frames - 1)]
    while spans:
        start, end = spans.pop()
        if end - start < 2:
            continue
        inner = np.arange(start + 1, end)
        weight = ((inner - start) / (end - start))[:, None]
        line = values[start] + weight * (values[end] - values[start])
        error = np.abs(values[inner] - line).max(axis=1)
        worst = int(np.argmax(error))
        if error[worst] > tolerance:
            split = int(inner[worst])
            keep[split] = True
            spans += [(start, split), (split, end)]
    return keep
