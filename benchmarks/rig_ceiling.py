"""What a perfect generator would read as on rigs the rig world did not make: each rig's true
motions, carried over from its training counterpart, read by the action classifier as they are and
after a round trip through the shipped VAE at one or more view sizes.

    .venv/bin/python benchmarks/rig_ceiling.py [--rigs rigify,gltf] [--sizes 64 96] [--seeds 2]

For each ``animax motion-bench`` rig (built in Blender, the extension installed headless) the
worker's body (``model_body``: the bones the model animates, in their colours) plays every
motion the benchmark prompts it with: the true motion of its training counterpart
(``joint_colours.counterpart``) carried onto it (``evaluation.counterpart_truth``), 17 frames at 16 fps,
seeds 0 to ``--seeds`` - 1. Each is read by the classifier of ``animax motion-bench`` as it is (the
classifier's ceiling on that rig), then drawn as the worker draws pose maps, encoded and decoded by
the shipped VAE and reconstructed as generated maps are (the ceiling of any generator that decodes
with that VAE). Prints a Markdown table: reads right per rig and size, with the reconstruction's
mean joint confidence.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rigs", default="rigify,gltf", help="rig groups or names, as motion-bench's")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64], help="view sizes in pixels (default 64)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of each motion (default 2)")
    args = parser.parse_args()

    from animax_addon.core.pose_maps import render_pose_maps
    from backend.data.joint_colours import counterpart
    from backend.demo import installed_extension
    from backend.evaluation.classifier import FRAMES, predict, train_classifier
    from backend.evaluation.evaluate import vae_round_trip
    from backend.evaluation.motion_bench import _addon, _empty_scene, select_rigs
    from backend.evaluation.counterpart_truth import counterpart_truth
    from backend.model.loading import load_tiny
    from backend.model.presets import TINY, TINY_WEIGHTS
    from backend.reconstruction.reconstruct import GENERATED, reconstruct
    from backend.worker.model_body import model_body

    pipeline = load_tiny(TINY_WEIGHTS, text_encoder=False)
    classifier = train_classifier()
    rows = []
    with installed_extension() as (bpy, _):
        for bench in select_rigs(args.rigs):
            _empty_scene(bpy)
            obj = bench.build(bpy)
            rig = _addon("snapshot").rig_from_armature(obj)
            views = {size: _addon("templates").camera_rig(obj, rig, size) for size in args.sizes}
            rotation = views[args.sizes[0]].rotation  # the upright frame, whatever the size
            # the rig drawn itself, not as its counterpart: a generator's ceiling on the rig's own maps
            body = model_body(rig, views[args.sizes[0]], replace(TINY, retargets=False))  # the frame alone counts
            creature, counterparts = counterpart(body.rig, rotation)
            truths = [(motion, counterpart_truth(body.rig, creature, counterparts, motion, seed, FRAMES, rotation))
                      for motion in bench.motions for seed in range(args.seeds)]
            truth_reads = sum(predict(classifier, truth, body.rig) == motion for motion, truth in truths)
            cells = []
            for cameras in views.values():
                right, confidence = 0, []
                for motion, truth in truths:
                    maps = render_pose_maps(cameras, truth, body.rig.joint_parents, body.colours)
                    result = reconstruct(body.rig, cameras, vae_round_trip(pipeline, maps), colours=body.colours,
                                         **GENERATED)
                    right += predict(classifier, result.joints, body.rig) == motion
                    confidence.append(float(np.mean(result.confidence)))
                cells.append((right, float(np.mean(confidence))))
            rows.append((bench, creature.family, len(bench.motions) * args.seeds, truth_reads, cells))

    print(f"True motions of each rig's training counterpart, {args.seeds} seeds a motion: read right as they are, "
          "and through the shipped VAE (mean joint confidence)\n")
    print("| rig | counterpart | runs | as they are | " + " | ".join(f"through the VAE, {s} px" for s in args.sizes)
          + " |")
    print("| --- | --- | ---: | ---: |" + " ---: |" * len(args.sizes))
    totals = {}
    for bench, family, runs, truth_reads, cells in rows:
        print(f"| {bench.name} | {family} | {runs} | {truth_reads} | "
              + " | ".join(f"{right} ({confidence:.2f})" for right, confidence in cells) + " |")
        total = totals.setdefault(bench.group, [0, 0, [0] * len(cells)])
        total[0] += runs
        total[1] += truth_reads
        total[2] = [t + right for t, (right, _) in zip(total[2], cells)]
    for group, (runs, truth_reads, rights) in totals.items():
        print(f"| all {group} | | {runs} | {truth_reads / runs:.0%} | "
              + " | ".join(f"{right / runs:.0%}" for right in rights) + " |")


if __name__ == "__main__":
    main()
