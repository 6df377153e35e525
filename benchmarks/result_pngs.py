"""Encoding a full-preset RESULT's video frames as PNG: Pillow's settings against ``png_blob``.

    .venv/bin/python benchmarks/result_pngs.py [--frames 81] [--size 480] [--rgb]

A worker's RESULT carries each video frame as one PNG: the full preset's pose video is 4 views x
81 frames of 480 px, 324 PNGs a job (more with the RGB video or variations). This times, side by
side in one run, the ways of encoding them on the frames a job sends:

- pose maps: a procedural biped waving, drawn by ``render_pose_maps`` (the drawing of the worker's
  templates and of the training data), as a model that draws them perfectly returns them;
- the same with Gaussian noise of 2 levels (rounded, clipped): a stand-in for a VAE's decoded
  video, whose black is never exactly 0;
- with ``--rgb``: the capsule renders of the training data (one time step's 4 views at the full
  size, repeated: the renderer takes seconds a frame on a CPU), clean and with the same noise.

Encoders: Pillow's defaults (the previous ``png_blob``: zlib level 6, five filters tried a row,
``optimize=False``), Pillow at lower ``compress_level``, ``png_blob`` as it is (level 1 with
``Z_RLE``), and ``png_blob`` and Pillow's defaults in a thread pool, as the worker encodes
(``png_blobs``: Pillow's encoder releases the GIL). Every encoder's first frame of each kind is
decoded back and compared with its input. Prints Markdown tables: seconds for all the frames, MB a job (the frames of
one video), and both as ratios to Pillow's defaults.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL
from PIL import Image

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import render_pose_maps
from animax_addon.core.protocol import blob_png, png_blob
from backend.data.motions import MOTIONS
from backend.data.rig_world import FAMILIES
from backend.reconstruction.kinematics import forward_kinematics
from backend.worker.job_limits import png_bytes_most

VIEWS = 4
NOISE_LEVELS = 2.0


def pillow(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def in_threads(encode, threads: int):
    def run(frames):
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(encode, frames))
    return run


def one_by_one(encode):
    return lambda frames: [encode(frame) for frame in frames]


def encoders(threads: list[int]) -> list[tuple[str, object]]:
    rows = [
        ("Pillow defaults (the previous `png_blob`: level 6, adaptive filters)", one_by_one(pillow)),
        ("Pillow `compress_level=1`", one_by_one(lambda f: pillow(f, compress_level=1))),
        ("Pillow `compress_level=3`", one_by_one(lambda f: pillow(f, compress_level=3))),
        ("**`png_blob`**: Pillow `compress_level=1, compress_type=Z_RLE`", one_by_one(png_blob)),
    ]
    for n in threads:
        rows.append((f"**`png_blob`, {n} threads**", in_threads(png_blob, n)))
    if threads:
        rows.append((f"Pillow defaults, {threads[-1]} threads", in_threads(pillow, threads[-1])))
    return rows


def biped_motion(frames: int):
    rng = np.random.default_rng(0)
    creature = FAMILIES["biped"](rng)
    rotations, locations = MOTIONS["wave"](creature, rng, frames)
    _, joints = forward_kinematics(creature.rig, rotations, locations)
    return creature.rig, joints, rng


def noisy(frames: np.ndarray, rng) -> np.ndarray:
    noise = np.rint(rng.normal(0.0, NOISE_LEVELS, frames.shape)).astype(np.int16)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def frame_sets(frames: int, size: int, rgb: bool) -> dict[str, np.ndarray]:
    rig, joints, rng = biped_motion(frames)
    center, radius = rig.bounding_sphere()
    cameras = make_camera_rig(center, radius, size)
    start = time.perf_counter()
    pose = render_pose_maps(cameras, joints, rig.joint_parents).reshape(-1, size, size, 3)
    print(f"drew {len(pose)} pose maps in {time.perf_counter() - start:.1f} s; "
          f"{100 * (pose.max(axis=-1) > 0).mean():.1f}% of their pixels are not black")
    sets = {"pose maps": pose, f"pose maps + noise (sigma {NOISE_LEVELS:g})": noisy(pose, rng)}
    if rgb:
        from backend.data.render import appearance, render_rgb  # torch: only when asked
        colours, radii = appearance(rig.joints_rest, rig.joint_parents, rng)
        start = time.perf_counter()
        views = render_rgb(cameras, joints[frames // 2][None], rig.joint_parents, colours, radii)[:, 0]
        print(f"rendered {len(views)} RGB frames in {time.perf_counter() - start:.1f} s")
        renders = np.repeat(views, frames, axis=0)  # view-major, as a RESULT orders them
        sets["RGB renders"] = renders
        sets[f"RGB renders + noise (sigma {NOISE_LEVELS:g})"] = noisy(renders, rng)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=81, help="frames a view (the full preset: 81)")
    parser.add_argument("--size", type=int, default=480, help="pixels a side (the full preset: 480)")
    parser.add_argument("--rgb", action="store_true", help="also RGB-like frames (renders take ~20 s)")
    args = parser.parse_args()

    cpus = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    threads = [n for n in (2, 4, 8) if n <= usable]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"CPU: {cpu}; {cpus} logical CPUs, {usable} usable by this process; load average "
          f"{os.getloadavg()[0]:.1f} (other processes share the cores)")
    print(f"Python {platform.python_version()}, Pillow {PIL.__version__}, zlib {zlib.ZLIB_RUNTIME_VERSION}, "
          f"NumPy {np.__version__}")

    for kind, frames in frame_sets(args.frames, args.size, args.rgb).items():
        print(f"\n### {kind}: {len(frames)} frames of {args.size} px ({VIEWS} views x {args.frames})\n")
        print("| encoder | seconds | MB a job | kB a frame | faster than Pillow's defaults "
              "| size / Pillow's defaults |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        base_s = base_bytes = None
        for name, encode in encoders(threads):
            start = time.perf_counter()
            blobs = encode(frames)
            seconds = time.perf_counter() - start
            if not np.array_equal(blob_png(blobs[0]), frames[0]):
                raise SystemExit(f"{name} is not lossless")
            total = sum(map(len, blobs))
            base_s, base_bytes = base_s or seconds, base_bytes or total
            print(f"| {name} | {seconds:.2f} | {total / 1e6:.2f} | {total / len(frames) / 1e3:.1f} | "
                  f"{base_s / seconds:.1f}x | {total / base_bytes:.2f} |", flush=True)

    noise = np.random.default_rng(1).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    print(f"\nNoise, the worst case: `png_blob` {len(png_blob(noise))} bytes, Pillow's defaults "
          f"{len(pillow(noise))}, the bound `png_bytes_most` {png_bytes_most(args.size, args.size)} "
          f"(raw rows {args.size * (3 * args.size + 1)}).")


if __name__ == "__main__":
    main()
