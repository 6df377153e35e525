"""What a perfect generator would read as on rigs the rig world did not make, through the worker's
path: each rig's training counterpart drawn as the model draws it, its true motions passed through
the shipped VAE at one or more view sizes, reconstructed and carried onto the rig as the worker does.

    .venv/bin/python benchmarks/rig_ceiling.py [--rigs rigify,gltf] [--sizes 64 96] [--seeds 2] [--cast]

For each ``animax motion-bench`` rig (built in Blender, the extension installed headless) the
worker's view of it (``model_body``: the bones the model animates, and the training creature it
draws for them) plays every motion the benchmark prompts it with: the counterpart creature's true
motion, 17 frames at 16 fps, seeds 0 to ``--seeds`` - 1. Each is read by the classifier of
``animax motion-bench`` on the rig's body, carried onto it as it is
(``counterpart_truth.counterpart_motion``: the classifier's ceiling on that rig), then drawn as
the worker has the model draw the creature, encoded and decoded by the shipped VAE, and turned into
the body's motion as generated maps are (``ModelBody.motion``): the ceiling of any generator that
decodes with that VAE. ``--cast``: the counterpart a model trained on its cast draws (a cast member,
``joint_colours.cast``), not the nearest reference. Prints a Markdown table: reads right per rig and size, with the
reconstruction's mean joint confidence.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rigs", default="rigify,gltf", help="rig groups or names, as motion-bench's")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64], help="view sizes in pixels (default 64)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of each motion (default 2)")
    parser.add_argument("--cast", action="store_true", help="draw each rig as a member of the cast")
    args = parser.parse_args()

    from dataclasses import replace

    from animax_addon.core.pose_maps import render_pose_maps
    from backend.data.motions import FPS, MOTIONS
    from backend.demo import installed_extension
    from backend.evaluation.classifier import FRAMES, predict, train_classifier
    from backend.evaluation.counterpart_truth import counterpart_motion
    from backend.evaluation.evaluate import vae_round_trip
    from backend.evaluation.motion_bench import _addon, _empty_scene, select_rigs
    from backend.model.loading import load_tiny
    from backend.model.presets import TINY, TINY_WEIGHTS
    from backend.reconstruction.kinematics import forward_kinematics
    from backend.worker.model_body import model_body

    pipeline = load_tiny(TINY_WEIGHTS, text_encoder=False)
    classifier = train_classifier()
    rows = []
    with installed_extension() as (bpy, _):
        for bench in select_rigs(args.rigs):
            _empty_scene(bpy)
            obj = bench.build(bpy)
            rig = _addon("snapshot").rig_from_armature(obj)
            bodies = [model_body(rig, _addon("templates").camera_rig(obj, rig, size), replace(TINY, cast=args.cast))
                      for size in args.sizes]
            body, rotation = bodies[0], bodies[0].cameras.rotation  # the same bones and creature at every size
            creature, runs = body.creature, [(m, s) for m in bench.motions for s in range(args.seeds)]
            truth_reads = sum(predict(classifier, counterpart_motion(body.rig, creature, body.counterparts, motion,
                                                                     seed, FRAMES, rotation).joints, body.rig) == motion
                              for motion, seed in runs)
            cells = []
            for sized in bodies:
                right, confidence = 0, []
                for motion, seed in runs:
                    rotations, locations = MOTIONS[motion](creature, np.random.default_rng(seed), FRAMES, FPS)
                    joints = forward_kinematics(creature.rig, rotations, locations)[1]
                    maps = render_pose_maps(sized.cameras, joints, creature.rig.joint_parents, sized.colours)
                    result = sized.motion(vae_round_trip(pipeline, maps), rotation)
                    right += predict(classifier, result.joints, body.rig) == motion
                    confidence.append(float(np.mean(result.confidence)))
                cells.append((right, float(np.mean(confidence))))
            rows.append((bench, creature.family, len(runs), truth_reads, cells))

    print(f"True motions of each rig's training counterpart, {args.seeds} seeds a motion, carried onto the rig: read "
          "right as they are, and through the shipped VAE and the worker's reconstruction (mean joint confidence)\n")
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
