"""Random rigs and motions with known ground truth, for the round-trip tests."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from animax_addon.core.rig import Rig
from backend.reconstruction.kinematics import forward_kinematics

SHAPES = ("chain", "fan", "tail", "tree")


def _unit(rng, n=None):
    v = rng.normal(size=(3,) if n is None else (n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def random_rig(rng: np.random.Generator, n_bones: int, shape: str, min_gap: float = 0.2) -> Rig:
    """A tree of ``n_bones`` bones, ``shape`` one of SHAPES, no two joints closer than ``min_gap``.

    chain: each bone the child of the last; fan: every bone a child of the root, heads spread;
    tail: a small body with a long chain; tree: each parent drawn among the earlier bones.
    Bones are 0.3 to 0.8 long; each is redrawn until its joints keep ``min_gap`` from the others.
    """
    bones = [dict(name="b0", parent=None, head=[0.0, 0.0, 0.0], tail=list(_unit(rng) * 0.5), roll=0.0)]
    points = [np.zeros(3), np.array(bones[0]["tail"])]  # every head and tail so far
    for i in range(1, n_bones):
        if shape == "chain":
            parent = i - 1
        elif shape == "fan":
            parent = 0
        elif shape == "tail":
            parent = int(rng.integers(0, i)) if i < max(1, n_bones // 4) else i - 1
        else:
            parent = int(rng.integers(0, i))
        base = np.array(bones[parent]["tail"])
        for _ in range(200):
            connected = shape != "fan" and rng.random() < 0.7
            head = base if connected else base + _unit(rng) * rng.uniform(0.2, 0.8)
            tail = head + _unit(rng) * rng.uniform(0.3, 0.8)
            new = [tail] if connected else [head, tail]
            gaps = np.linalg.norm(np.array(points)[None] - np.array(new)[:, None], axis=-1)
            if gaps.min() >= min_gap:
                break
        else:
            raise RuntimeError(f"no room for bone {i} of a {shape} of {n_bones} bones")
        points += new
        bones.append(dict(name=f"b{i}", parent=f"b{parent}", head=list(head), tail=list(tail),
                          roll=float(rng.uniform(-np.pi, np.pi))))
    rig = Rig.from_dict({"bones": bones})
    return rig


def random_motion(rng: np.random.Generator, rig: Rig, frames: int, amplitude: float = 0.6):
    """Smooth random rotations about fixed random axes plus a root drift; (rotations, locations, joints)."""
    axes = _unit(rng, rig.num_bones)
    amp = rng.uniform(0.2, 1.0, rig.num_bones) * amplitude
    amp[rig.roots] *= 0.4  # a root turns the whole rig: keep it inside the cameras' frame
    phase = rng.uniform(0, 2 * np.pi, rig.num_bones)
    t = np.arange(frames)[:, None] / max(frames, 2)
    angles = amp * np.sin(2 * np.pi * t + phase)
    rotations = Rotation.from_rotvec((angles[..., None] * axes).reshape(-1, 3)).as_quat(scalar_first=True)
    rotations = rotations.reshape(frames, rig.num_bones, 4)
    locations = np.zeros((frames, rig.num_bones, 3))
    locations[:, rig.roots] = (t * rng.normal(0, 0.1, 3))[:, None]
    _, joints = forward_kinematics(rig, rotations, locations)
    return rotations, locations, joints
