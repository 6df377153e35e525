"""Animating a rig's training counterpart instead of the rig: what the action classifier reads when
the embedded model draws the creature it was trained on and the motion is carried onto the rig.

    animax motion-bench --requests --rigs rigify --out bench_out/motion
    .venv/bin/python benchmarks/counterpart_generation.py bench_out/motion [--device cpu] [--threads 2]

For each rig of the benchmark's requests (rig.json and cameras.json, as Animate sends them) the
worker's body of the rig (``jobs.model_body``) is matched to its training counterpart
(``joint_colours.counterpart``). The model generates that creature's motion from the creature's own
templates (its rest pose as training draws it: capsule RGB renders and pose maps in joint order,
from cameras around it), for every prompt and seed of the requests; the worker's reconstruction
turns the maps into the creature's joints, which ``evaluation.retarget`` carries onto the rig's
body. The benchmark's classifier reads the creature's motion and the rig's. Prints a Markdown table.
The product path (``animax motion-bench``) gives the model the rig's own templates instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the --out folder of `animax motion-bench --requests`")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from animax_addon.core.cameras import CameraRig, make_camera_rig
    from animax_addon.core.pose_maps import palette, render_pose_maps
    from animax_addon.core.rig import Rig
    from backend.data.joint_colours import counterpart
    from backend.data.render import appearance, render_rgb
    from backend.evaluation.classifier import predict, train_classifier
    from backend.evaluation.retarget import retarget
    from backend.model.loading import load_tiny, tiny_preset
    from backend.model.presets import TINY_WEIGHTS
    from backend.reconstruction.reconstruct import GENERATED, reconstruct
    from backend.worker.jobs import model_body

    pipeline = load_tiny(TINY_WEIGHTS).to(args.device)
    pipeline.set_progress_bar_config(disable=True)
    preset = tiny_preset(TINY_WEIGHTS)
    classifier = train_classifier()
    rows = []
    for folder in sorted(p for p in (args.out / "requests").iterdir() if p.is_dir()):
        rig = Rig.from_dict(json.loads((folder / "rig.json").read_text()))
        cameras = CameraRig.from_dict(json.loads((folder / "cameras.json").read_text()))
        body = model_body(rig, cameras, preset.families)
        creature, counterparts = counterpart(body.rig, cameras.rotation, preset.families)
        source = creature.rig
        views = make_camera_rig(*source.bounding_sphere(), preset.size)  # training creatures stand upright
        colours, radii = appearance(source.joints_rest, source.joint_parents, np.random.default_rng(0))
        rgb = render_rgb(views, source.joints_rest[None], source.joint_parents, colours, radii)[:, 0]
        pose = render_pose_maps(views, source.joints_rest[None], source.joint_parents)[:, 0]
        right = creature_right = 0
        jobs = json.loads((folder / "jobs.json").read_text())
        for job in jobs:
            motion = job["video"].rsplit("_seed", 1)[0]
            began = time.perf_counter()
            videos = pipeline(prompt=job["prompt"], rgb_templates=rgb, pose_templates=pose, cameras=views,
                              num_frames=job["options"]["frames"], num_inference_steps=job["options"]["steps"],
                              guidance_scale=job["options"]["guidance"],
                              generator=torch.Generator().manual_seed(job["options"]["seed"])).pose_videos
            result = reconstruct(source, views, videos, colours=palette(source.num_joints), **GENERATED)
            moved = retarget(body.rig, result.joints, creature, counterparts, cameras.rotation)
            read, creature_read = predict(classifier, moved, body.rig), predict(classifier, result.joints, source)
            right += read == motion
            creature_right += creature_read == motion
            print(f"{folder.name} {job['video']}: read as {read} (the creature: {creature_read}), "
                  f"{time.perf_counter() - began:.1f} s", flush=True)
        rows.append((folder.name, creature.family, len(jobs), creature_right, right))

    print("\n| rig | counterpart | runs | the creature's motion read right | carried onto the rig, read right |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, family, runs, creature_right, right in rows:
        print(f"| {name} | {family} | {runs} | {creature_right} | {right} |")
    runs = sum(r[2] for r in rows)
    print(f"| all | | {runs} | {sum(r[3] for r in rows) / runs:.0%} | {sum(r[4] for r in rows) / runs:.0%} |")


if __name__ == "__main__":
    main()
