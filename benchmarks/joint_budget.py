"""How many joints the embedded model's pose maps keep apart: the rest pose of each benchmark rig,
chosen at several joint budgets, through the tiny preset's VAE and back through the reconstruction.

    .venv/bin/python benchmarks/joint_budget.py [--budgets 28,24,22,20] [--rigs procedural,rigify,gltf] [--size 64]

For each rig of ``animax motion-bench`` (built in Blender, the extension installed headless) and
each budget, the add-on's default bone choice (``snapshot.rig_from_armature(..., max_joints)``),
reduced to the bones the worker animates and drawn itself in their colours (``model_body``), is drawn as
pose maps at the preset's size (or ``--size``: the VAE is convolutional, so a larger view prices
what a larger image would keep before any training) from the product cameras (9 frames of the rest pose), encoded
and decoded by the shipped VAE, and reconstructed as the worker does. Whatever the transformer
draws is decoded by this VAE, so the confidence and joint error here are the ceiling of the
generated motion on that rig. Prints a Markdown table: mean joint confidence (two views
agree on the joint) and mean joint error (% of the rig's radius), per rig and budget.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="28,24,22,20", help="comma-separated joint budgets")
    parser.add_argument("--rigs", default="procedural,rigify,gltf", help="rig groups or names, as motion-bench's")
    parser.add_argument("--size", type=int, help="view size in pixels (default: the tiny preset's)")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]

    from animax_addon.core.pose_maps import render_pose_maps
    from backend.demo import installed_extension
    from backend.evaluation.evaluate import vae_round_trip
    from backend.evaluation.motion_bench import _addon, _empty_scene, select_rigs
    from backend.model.loading import load_tiny
    from backend.model.presets import TINY, TINY_WEIGHTS
    from backend.reconstruction.reconstruct import GENERATED, reconstruct
    from backend.worker.model_body import model_body

    size = args.size or TINY.size
    pipeline = load_tiny(TINY_WEIGHTS, text_encoder=False)
    itself = replace(TINY, retargets=False)  # the rig's own body drawn, in its colours, not its counterpart
    rows = []
    with installed_extension() as (bpy, _):
        snapshot = _addon("snapshot")
        for bench_rig in select_rigs(args.rigs):
            _empty_scene(bpy)
            obj = bench_rig.build(bpy)
            cells = []
            for budget in budgets:
                try:
                    rig = snapshot.rig_from_armature(obj, max_joints=budget)
                except ValueError:
                    cells.append(None)
                    continue
                cameras = _addon("templates").camera_rig(obj, rig, size)
                body = model_body(rig, cameras, itself)
                truth = render_pose_maps(cameras, np.repeat(body.rig.joints_rest[None], 9, axis=0),
                                         body.rig.joint_parents, body.colours)
                motion = reconstruct(body.rig, cameras, vae_round_trip(pipeline, truth), colours=body.colours,
                                     **GENERATED)
                error = np.linalg.norm(motion.joints - body.rig.joints_rest[None], axis=-1).mean() / cameras.radius
                cells.append((body.rig.num_joints, float(np.mean(motion.confidence)), 100 * float(error)))
            rows.append((bench_rig.name, cells))

    print(f"Rest pose maps through the shipped VAE ({size} px); each cell: joints, mean confidence, "
          "mean joint error (% of radius)\n")
    print("| rig | " + " | ".join(f"budget {b}" for b in budgets) + " |")
    print("| --- |" + " ---: |" * len(budgets))
    for name, cells in rows:
        shown = ["refused" if c is None else f"{c[0]}: {c[1]:.2f}, {c[2]:.1f}%" for c in cells]
        print(f"| {name} | " + " | ".join(shown) + " |")
    for group in ("procedural", "rigify", "gltf"):
        means = []
        for k in range(len(budgets)):
            values = [cells[k][1] for name, cells in rows if name.startswith(group) and cells[k] is not None]
            means.append(f"{np.mean(values):.2f}" if values else "-")
        print(f"| mean confidence, {group} | " + " | ".join(means) + " |")


if __name__ == "__main__":
    main()
