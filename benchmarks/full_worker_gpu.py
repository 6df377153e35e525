"""The full preset's worker end to end on one GPU, through a real client: ``animax-worker --model
full`` on a Wan2.1-T2V-1.3B-shaped directory and the adapter of a short full-preset training run,
a job submitted by ``animax generate``, each stage's seconds as the client sees them. No bpy needed.

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl   # with pyzmq's wheel
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/full_worker_gpu.py --out $OUT/full_worker.json --fast

Parts, in this order, each timed:

1. ``data``: two procedural clips at 480 px x 81 frames (``full_training_gpu.make_samples``).
2. ``wan``: ``wan_shaped_dir.py``'s directory of random weights in ``WORK/wan``, unless ``--wan``.
3. ``adapter``: ``python -m backend.train run --preset full`` on those clips, one step of each
   stage (with ``--no-rgb-video``, an adapter that generates the pose video alone); its
   ``adapter/`` is what the worker loads.
4. ``start``: ``python -m backend.worker.command --model full --wan ... --adapter ...`` (with
   ``--fast`` if asked) until it answers a hello: loading Wan, UMT5 and the adapter.
5. ``job``: a procedural biped's rest pose rendered at 480 px by the capsule renderer as the four
   templates, ``animax generate --prompt "the person waves"``; the client's progress lines, each
   timestamped, give the seconds to acceptance, to the first denoising step (prompt and template
   encoding), per denoising step, and for reconstruction and the result's transfer. The GPU's
   memory in use is polled through ``nvidia-smi`` meanwhile.

Prints a Markdown table and writes the results to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from full_training_gpu import free_gpu, samples_and_wan, timed  # beside this script
from PIL import Image

from animax_addon.core.client import Client, WorkerUnavailable
from backend.cli import TEMPLATE_NAMES, rig_cameras
from backend.data.render import appearance, render_rgb
from backend.data.rig_world import FAMILIES
from backend.model.presets import FULL

PROMPT = "the person waves"
STAGE_LINE = re.compile(r"^(denoise|reconstruct) (\d+)/(\d+)")


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def write_request(folder: Path) -> Path:
    """A procedural biped's rig.json and its rest pose's four capsule renders at the full size."""
    rng = np.random.default_rng(0)
    rig = FAMILIES["biped"](rng).rig
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rig.json").write_text(json.dumps(rig.to_dict()))
    cameras = rig_cameras(rig, FULL.size)
    colours, radii = appearance(rig.joints_rest, rig.joint_parents, rng)
    views = render_rgb(cameras, rig.joints_rest[None], rig.joint_parents, colours, radii, device="cuda")
    for name, view in zip(TEMPLATE_NAMES, views[:, 0], strict=True):
        Image.fromarray(view).save(folder / name)
    return folder


def wait_for_worker(address: str, worker: subprocess.Popen, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with status {worker.returncode} before answering")
        try:
            with Client(address, timeout_s=5.0) as client:
                client.hello()
            return
        except WorkerUnavailable:
            continue
    raise SystemExit(f"the worker did not answer within {limit_s:.0f} s")


class MemoryPoll(threading.Thread):
    """The GPU's memory in use (MiB, all processes), read through nvidia-smi twice a second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.most, self._stop = 0, threading.Event()

    def run(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                self.most = max(self.most, int(out[0]))

    def stop(self) -> int:
        self._stop.set()
        return self.most


def run_job(address: str, request: Path, out: Path) -> dict:
    """``animax generate`` against ``address``; the seconds of each stage from its progress lines."""
    command = [sys.executable, "-m", "backend.cli", "generate", "--rig", str(request / "rig.json"),
               "--templates", str(request), "--prompt", PROMPT, "--out", str(out), "--address", address,
               "--timeout", "60"]
    print("$ " + " ".join(command[2:]), flush=True)
    began = time.monotonic()
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as client:
        for line in client.stdout:
            lines.append((time.monotonic() - began, line.rstrip()))
            print(f"[{lines[-1][0]:7.1f} s] {lines[-1][1]}", flush=True)
    if client.returncode:
        raise SystemExit(f"animax generate exited with status {client.returncode}")
    steps = [(t, int(m[2]), int(m[3])) for t, line in lines if (m := STAGE_LINE.match(line)) and m[1] == "denoise"]
    reconstruct = [t for t, line in lines if line.startswith("reconstruct")]
    accepted = next(t for t, line in lines if line.startswith("queued"))
    done = lines[-1][0]
    per_step = (steps[-1][0] - steps[0][0]) / max(steps[-1][1] - steps[0][1], 1)
    return {"steps": steps[-1][2], "accepted_s": accepted,
            "to_first_step_s": steps[0][0] - accepted,  # prompt and templates encoded, then step 1
            "per_step_s": per_step, "to_last_step_s": steps[-1][0] - accepted,
            "reconstruct_and_result_s": done - (reconstruct[0] if reconstruct else steps[-1][0]),
            "total_s": done, "lines": lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the results (JSON)")
    parser.add_argument("--work", type=Path, default=Path("runs/full-worker-bench"),
                        help="the Wan directory, the training run and the request (about 35 GB)")
    parser.add_argument("--wan", type=Path, help="an existing Wan2.1-T2V-1.3B(-shaped) directory to use")
    parser.add_argument("--fast", action="store_true", help="the worker's fast sampler (10 UniPC steps)")
    parser.add_argument("--rgb-video", action=argparse.BooleanOptionalAction, default=True,
                        help="an adapter of the paper's joint RGB and pose sequence, or with --no-rgb-video one that "
                             "generates the pose video alone")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"fast": args.fast, "rgb_video": args.rgb_video, "seconds": {}}

    part = functools.partial(timed, results["seconds"])
    samples, wan = samples_and_wan(args.work, args.wan, 2, results["seconds"])
    results.update(device=torch.cuda.get_device_name(), torch=torch.__version__)
    run = args.work / ("run" if args.rgb_video else "run-pose-only")
    train = [sys.executable, "-m", "backend.train", "run", "--preset", "full", "--wan", str(wan), "--dataset",
             str(samples), "--out", str(run), "--joint-steps", "1", "--batch", "1", "--multiview-steps", "1",
             "--rgb-video" if args.rgb_video else "--no-rgb-video"]
    part("adapter", lambda: subprocess.run(train, check=True))
    request = write_request(args.work / "request")
    free_gpu()
    address = free_address()
    serve = [sys.executable, "-m", "backend.worker.command", "--model", "full", "--wan", str(wan),
             "--adapter", str(run / "adapter"), "--address", address] + ["--fast"] * args.fast
    memory = MemoryPoll()
    memory.start()
    with open(args.work / "worker.log", "w") as log:
        worker = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        try:
            part("start", lambda: wait_for_worker(address, worker, 300))
            results["job"] = part("job", lambda: run_job(address, request, args.work / "result.npz"))
        finally:
            worker.terminate()
            worker.wait(30)
    results["gpu_memory_used_most_mib"] = memory.stop()
    result = np.load(args.work / "result.npz")
    results["result"] = {"frames": int(result["rotations"].shape[0]), "bones": int(result["rotations"].shape[1]),
                         "finite": bool(np.isfinite(result["rotations"]).all())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    job = results["job"]
    print(f"\n{results['device']}, torch {results['torch']}; sampler: {'fast' if args.fast else 'default'}, "
          f"{job['steps']} steps")
    print("| part | seconds |\n| --- | ---: |")
    for name, seconds in results["seconds"].items():
        print(f"| {name} | {seconds:.1f} |")
    for name in ("accepted_s", "to_first_step_s", "per_step_s", "to_last_step_s", "reconstruct_and_result_s",
                 "total_s"):
        print(f"| job: {name[:-2].replace('_', ' ')} | {job[name]:.1f} |")
    print(f"GPU memory in use at most: {results['gpu_memory_used_most_mib'] / 1024:.1f} GiB; result "
          f"{results['result']}")


if __name__ == "__main__":
    main()
