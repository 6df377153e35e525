"""Training as two data-parallel processes (torchrun, gloo on the CPU), checked against one process.

The processes run this file as their script: it wraps a few functions of ``backend.train`` to note
what each process trained on, its weights after each stage and the files it wrote, then runs the
ordinary command line.
"""

import hashlib
import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import backend.train.__main__ as train
from backend.data.dataset import build_samples
from backend.model.loading import load_tiny
from backend.multi_gpu import MULTICAST_OFF

ROOT = Path(__file__).resolve().parents[1]
WRITERS = ("save_tiny", "save_adapter", "save_loss_plot")


def digest(tensors) -> str:
    return hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in tensors)).hexdigest()


def recording(patch) -> dict:
    """Wrap ``backend.train``'s losses, stages and writers with ``patch(module, name, value)`` so that
    they note what this process does. ``LATE=RANK:STAGE`` passes that process's deadline in that stage."""
    seen = {"batches": [], "weights": {}, "wrote": []}
    rank = os.environ.get("RANK", "0")
    flow_loss, vae_loss, train_stage = train.flow_loss, train.vae_loss, train.train_stage

    def flow(model, clips, stage, generator, part, *choices):
        seen["batches"].append([stage, [digest([clip]) for clip in clips.video[part]]])
        return flow_loss(model, clips, stage, generator, part, *choices)

    def vae(model, video, is_pose):
        seen["batches"].append(["vae", digest([video])])
        return vae_loss(model, video, is_pose)

    def stage(*args, **kwargs):
        bound = inspect.signature(train_stage).bind(*args, **kwargs)
        name = bound.arguments["name"]
        if os.environ.get("LATE") == f"{rank}:{name}":
            bound.arguments["deadline"] = 0.0
        result = train_stage(*bound.args, **bound.kwargs)
        seen["weights"][name] = digest(bound.arguments["model"].parameters())
        return result

    def writer(name):
        write = getattr(train, name)

        def noted(*args, **kwargs):
            seen["wrote"].append(name)
            return write(*args, **kwargs)
        return noted

    for name, value in [("flow_loss", flow), ("vae_loss", vae), ("train_stage", stage)] + \
            [(name, writer(name)) for name in WRITERS]:
        patch(train, name, value)
    return seen


def launch(argv: list[str], **env) -> tuple[str, list[dict]]:
    """``torchrun --nproc-per-node 2`` of the command line; its output and what each process noted."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, *argv]
    inherited = {name: value for name, value in os.environ.items() if name not in MULTICAST_OFF}
    process = subprocess.Popen(command, cwd=ROOT, env={**inherited, "PYTHONPATH": str(ROOT), **env},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = process.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # a process that waits for the others forever
        raise
    assert process.returncode == 0, output[-3000:]
    out = Path(argv[argv.index("--out") + 1])
    return output, [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "samples.npz"
    build_samples(4, seed=0, size=32, frames=5).save(path)
    return path


def test_two_processes_share_each_batch_and_train_what_one_process_trains(dataset, tmp_path, monkeypatch):
    steps = ["--joint-steps", "3", "--batch", "4", "--multiview-steps", "2", "--multiview-batch", "2"]
    out = tmp_path / "two"
    argv = ["run", "--dataset", str(dataset), "--out", str(out), "--vae-steps", "2", "--vae-batch", "2", *steps]
    output, ranks = launch(argv, LATE="1:multiview")  # only process 1 passes its deadline, in the last stage

    # Gradients synchronised: both processes hold the same weights after each stage, though each
    # trained on other videos.
    assert ranks[0]["weights"] == ranks[1]["weights"] and set(ranks[0]["weights"]) == {"vae", "joint", "multiview"}
    vae = [[batch for stage, batch in rank["batches"] if stage == "vae"] for rank in ranks]
    assert len(vae[0]) == 2 and all(a != b for a, b in zip(*vae))
    # Process 1's deadline stopped both at the same step (or process 0 would wait for it forever).
    (run,) = train.recorded_runs(out)  # one record: written once
    assert run["processes"] == 2 and not run["finished"]
    assert run["steps"] == {"vae": 2, "joint": 3, "multiview": 1} and "deadline reached at step 1" in output
    # Files once: the main process writes; it encodes the dataset's shard while the other waits for it.
    assert sorted(ranks[0]["wrote"]) == ["save_loss_plot", "save_tiny"] and ranks[1]["wrote"] == []
    assert output.count("latents: shard 1/1 encoded") == 1
    assert ranks[0]["environment"] == ranks[1]["environment"] == MULTICAST_OFF  # NVLink multicast off

    train.main(argv + ["--resume"])  # the two processes' checkpoint resumes in one
    resumed = train.recorded_runs(out)[1]
    assert resumed["finished"] and resumed["processes"] == 1 and resumed["steps"] == {"joint": 3, "multiview": 2}

    # One process alone, from the same VAE, draws each step's whole batch: the two processes took its halves
    halves = [[batch for batch in rank["batches"] if batch[0] != "vae"] for rank in ranks]
    assert [len(index) for _, index in halves[0]] == [2, 2, 2, 1]  # joint: 4 / 2, multiview: 2 / 2
    alone = recording(monkeypatch.setattr)
    train.main(["run", "--dataset", str(dataset), "--out", str(tmp_path / "one"), "--vae-from", str(out), *steps])
    assert [[stage, first + second] for (stage, first), (_, second) in zip(*halves)] == alone["batches"][:4]
    # ... and ends with the same weights and losses, up to float rounding: the halves' averaged
    # gradients are the whole batch's gradient, and the logged loss is the whole batch's.
    one = load_tiny(tmp_path / "one" / "model").transformer.state_dict()
    two = load_tiny(out / "model").transformer.state_dict()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-4, rtol=1e-4)
    for stage in ("joint", "multiview"):
        losses = [json.loads((run / "checkpoints" / stage / "progress.json").read_text())["losses"]
                  for run in (out, tmp_path / "one")]
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)


if __name__ == "__main__":  # one process of `launch`
    seen = recording(setattr)
    try:
        train.main(sys.argv[1:])
    finally:
        seen["environment"] = {name: os.environ.get(name) for name in MULTICAST_OFF}
        out = Path(sys.argv[sys.argv.index("--out") + 1])
        (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(seen))
