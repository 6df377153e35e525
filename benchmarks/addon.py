"""The add-on's Blender-side speed: 4-view template renders and writing an Action.

    .venv/bin/python benchmarks/addon.py [--runs 5]

(a) ``render_templates`` of a procedural quadruped (skinned capsule mesh) at 64 and 256 px,
(b) ``write_action`` of 81 frames x 64 bones (a 64-bone chain), dense and thinned. Headless bpy
(Workbench through Mesa on the CPU). Median of ``--runs`` after one warm-up (the first render
starts the GL context). Issue goals: <= 5 s and <= 1 s. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import bpy
import numpy as np
from scipy.spatial.transform import Rotation

from animax_addon.action import write_action
from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.rig import Rig
from animax_addon.snapshot import rig_from_armature
from animax_addon.templates import render_templates
from backend.data.blender_build import build_armature, build_sample_scene


def _median(run, runs: int) -> tuple[float, float]:
    start = time.perf_counter()
    run()
    warm_up = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return warm_up, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []

    bpy.ops.wm.read_factory_settings(use_empty=True)
    fox = build_sample_scene(seed=0, family="quadruped")
    rig = rig_from_armature(fox)
    for size in (64, 256):
        cameras = make_camera_rig(*rig.bounding_sphere(), size=size)
        first, median = _median(lambda: render_templates(fox, cameras, size), args.runs)
        rows.append((f"4-view templates, {size} px ({rig.num_bones}-bone quadruped)", first, median, 5.0))

    frames, count = 81, 64
    chain = Rig.from_dict({"bones": [
        {"name": f"b{i:02d}", "parent": f"b{i - 1:02d}" if i else None,
         "head": [0, 0, 0.1 * i], "tail": [0, 0, 0.1 * (i + 1)]} for i in range(count)]}, max_joints=None)
    arm = build_armature(chain, "Chain")
    rng = np.random.default_rng(0)
    # smooth random motion: slowly varying rotation vectors, as the worker's output is
    rotvec = np.cumsum(rng.normal(0, 0.03, (frames, count, 3)), axis=0)
    rotations = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_quat(scalar_first=True).reshape(frames, count, 4)
    translation = np.cumsum(rng.normal(0, 0.01, (frames, 3)), axis=0)
    for tolerance in (0.0, 1e-3):
        first, median = _median(lambda: write_action(arm, "bench", chain.bone_names, rotations, "b00",
                                                     translation, thin_tolerance=tolerance), args.runs)
        rows.append((f"write_action, {frames} frames x {count} bones, thin {tolerance:g}", first, median, 1.0))

    print(f"| step | first run (s) | median of {args.runs} (s) | goal (s) |")
    print("|---|---|---|---|")
    for name, first, median, goal in rows:
        print(f"| {name} | {first:.3f} | {median:.3f} | {goal:g} |")


if __name__ == "__main__":
    main()
