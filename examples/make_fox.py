"""Writes the demo's example files: a fox-like quadruped rig and a trot of its joints.

    python examples/make_fox.py   # -> examples/fox.rig.json, examples/fox_trot.npz

The fox faces -Y (Blender's convention for a character's front), Z up, metres. The trot is
forward kinematics of hand-written bone rotations, so reconstruction can be scored against it.
"""

from pathlib import Path

import numpy as np

from animax_addon.core.rig import Rig
from backend.reconstruction.kinematics import forward_kinematics

HERE = Path(__file__).resolve().parent
FRAMES, FPS = 33, 16


def fox_bones() -> list[dict]:
    def bone(name, parent, head, tail, roll=0.0):
        return {"name": name, "parent": parent, "head": head, "tail": tail, "roll": roll}

    bones = [
        bone("hips", None, [0, 0.25, 0.45], [0, 0.05, 0.47]),
        bone("spine", "hips", [0, 0.05, 0.47], [0, -0.2, 0.48]),
        bone("chest", "spine", [0, -0.2, 0.48], [0, -0.35, 0.5]),
        bone("neck", "chest", [0, -0.35, 0.5], [0, -0.45, 0.62], 0.1),
        bone("head", "neck", [0, -0.45, 0.62], [0, -0.62, 0.6]),
    ]
    for side, x in (("L", 0.09), ("R", -0.09)):
        for part, parent, y in (("front", "chest", -0.33), ("back", "hips", 0.22)):
            bones += [
                bone(f"{part}_thigh.{side}", parent, [x, y, 0.42], [x, y + 0.02, 0.26], 0.2 * x / 0.09),
                bone(f"{part}_shin.{side}", f"{part}_thigh.{side}", [x, y + 0.02, 0.26], [x, y - 0.01, 0.07]),
                bone(f"{part}_foot.{side}", f"{part}_shin.{side}", [x, y - 0.01, 0.07], [x, y - 0.07, 0.02]),
            ]
    bones += [
        bone("tail.1", "hips", [0, 0.27, 0.46], [0, 0.4, 0.5]),
        bone("tail.2", "tail.1", [0, 0.4, 0.5], [0, 0.52, 0.48]),
        bone("tail.3", "tail.2", [0, 0.52, 0.48], [0, 0.62, 0.42]),
    ]
    return bones


def about_x(angle):
    return np.stack([np.cos(angle / 2), np.sin(angle / 2), 0 * angle, 0 * angle], axis=-1)


def about_z(angle):
    return np.stack([np.cos(angle / 2), 0 * angle, 0 * angle, np.sin(angle / 2)], axis=-1)


def trot(rig: Rig) -> tuple[np.ndarray, np.ndarray]:
    phase = 2 * np.pi * np.arange(FRAMES) / 16  # one stride a second
    rotations = np.zeros((FRAMES, rig.num_bones, 4))
    rotations[..., 0] = 1.0
    index = rig.bone_index
    for side, offset in (("L", 0.0), ("R", np.pi)):
        for part, extra in (("front", 0.0), ("back", np.pi)):  # diagonal pairs move together
            swing = phase + offset + extra
            rotations[:, index[f"{part}_thigh.{side}"]] = about_x(0.45 * np.sin(swing))
            rotations[:, index[f"{part}_shin.{side}"]] = about_x(-0.5 * np.clip(np.cos(swing), 0, None))
            rotations[:, index[f"{part}_foot.{side}"]] = about_x(0.3 * np.sin(swing))
    for i in (1, 2, 3):
        rotations[:, index[f"tail.{i}"]] = about_z(0.35 * np.sin(phase - 0.6 * i))
    rotations[:, index["head"]] = about_x(0.15 * np.sin(2 * phase))
    locations = np.zeros((FRAMES, rig.num_bones, 3))
    locations[:, index["hips"], 2] = 0.02 * np.sin(2 * phase)  # local Z of the hips: a bob
    return rotations, locations


def main() -> None:
    rig = Rig.from_dict({"bones": fox_bones()})
    rig.save(HERE / "fox.rig.json")
    rotations, locations = trot(rig)
    _, joints = forward_kinematics(rig, rotations, locations)
    np.savez(HERE / "fox_trot.npz", joints=joints, rotations=rotations, locations=locations, fps=FPS)
    print(f"{rig.num_bones} bones, {rig.num_joints} joints, {FRAMES} frames")


if __name__ == "__main__":
    main()
