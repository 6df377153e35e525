"""One training stage under accelerate: optimiser, checkpoints, resume, a deadline, loss log.

The same code runs alone or as one of N data-parallel processes (``accelerate launch``): each
process computes the loss of its part of every step's batch (``batch_part``), DDP averages the
gradients, and only the main process writes files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState


class _StepLoss(torch.nn.Module):
    """``loss_fn(model, step)`` as a forward: DDP synchronises gradients only for work done inside its
    wrapper's forward, and ``loss_fn`` keeps the plain model, whose own methods (a VAE's ``encode`` /
    ``decode``) the wrapper does not expose."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, int], torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, step: int) -> torch.Tensor:
        return self.loss_fn(self.model, step)


def batch_part(batch: int, flag: str = "the batch") -> slice:
    """This process's share of a step's ``batch`` samples: all of them alone, 1/N of them as one of N
    processes (``batch`` must divide evenly, so that averaging the processes' gradients gives the
    gradient of the whole batch)."""
    state = PartialState()
    if batch % state.num_processes:
        raise SystemExit(f"{flag} {batch} does not split evenly over {state.num_processes} processes: "
                         f"choose a multiple of {state.num_processes}")
    size = batch // state.num_processes
    return slice(state.process_index * size, (state.process_index + 1) * size)


def train_stage(
    name: str,
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    loss_fn: Callable[[torch.nn.Module, int], torch.Tensor],
    steps: int,
    lr: float,
    checkpoint_dir: Path,
    deadline: float = math.inf,
    checkpoint_every: int = 500,
    mixed_precision: str = "no",
    log: Callable[[str], None] = print,
    speed: dict | None = None,
) -> tuple[list[float], bool]:
    """Run ``steps`` optimiser steps of ``loss_fn(model, step)``; returns (losses, finished).

    Resumes from ``checkpoint_dir`` when it holds this stage's state. Stops early (after saving) when
    ``time.time()`` passes ``deadline``, so a run that is stopped and resumed loses nothing.
    ``speed``, when given, receives this call's :func:`step_speed`.
    """
    # One accelerator per stage: its saved state then holds exactly this stage's model and optimiser.
    # split_batches: the processes share each step's batch, so the schedule takes one step per step
    # (by default accelerate would step it once per process).
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = min(200, steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, cosine decay to 10%
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(s / steps, 1.0))))
    wrapped, optimizer, schedule = accelerator.prepare(_StepLoss(model, loss_fn), optimizer, schedule)

    # Checkpoints hold the plain model's weights (not those of the wrappers, whose names differ with
    # the number of processes), so that a run cut with one number of processes resumes with another.
    def save_plain(models, weights, output_dir):
        weights[0] = model.state_dict()

    def load_plain(models, input_dir):
        models[0] = model

    accelerator.register_save_state_pre_hook(save_plain)
    accelerator.register_load_state_pre_hook(load_plain)
    if not accelerator.is_main_process:
        log = lambda _: None  # noqa: E731 - one process reports
    progress_file = checkpoint_dir / "progress.json"
    start, losses = 0, []
    if progress_file.is_file():
        state = json.loads(progress_file.read_text())
        accelerator.load_state(str(checkpoint_dir))
        start, losses = state["step"], state["losses"]
        log(f"[{name}] resumed at step {start}")

    def save(step: int) -> None:
        accelerator.save_state(str(checkpoint_dir))  # weights and optimiser from the main process only
        if accelerator.is_main_process:
            progress_file.write_text(json.dumps({"step": step, "losses": losses, "finished": step >= steps}))

    wrapped.train()
    began = time.time()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    step_seconds = []  # each step's, checkpoints left out

    def stop(finished: bool) -> tuple[list[float], bool]:
        if step_seconds:
            measured = step_speed(step_seconds)
            log(f"[{name}] {measured['steps']} steps here: {measured['seconds_per_step']:.2f} s a step after the "
                f"first ({measured['first_step_seconds']:.2f} s)" + (f", peak GPU memory "
                f"{measured['peak_memory_gib']:.1f} GiB" if measured["peak_memory_gib"] is not None else ""))
            if speed is not None:
                speed.update(measured)
        return losses, finished

    step = start
    for step in range(start + 1, steps + 1):
        step_began = time.perf_counter()
        with accelerator.autocast():
            loss = wrapped(step)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        # The whole batch's loss, and whether any process passed the deadline: every process must stop
        # at the same step, or the others would wait for it forever.
        loss, late = accelerator.reduce(torch.stack([loss.detach().float(),
                                                     torch.tensor(float(time.time() > deadline), device=loss.device)]),
                                        "mean").tolist()  # waits for the GPU: the step is done
        step_seconds.append(time.perf_counter() - step_began)
        losses.append(loss)
        if step % 100 == 0 or step == steps:
            rate = (step - start) / (time.time() - began)
            log(f"[{name}] step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                f"({rate:.1f} steps/s)")
        if step % checkpoint_every == 0 or step == steps or late:
            save(step)
            if late and step < steps:
                log(f"[{name}] deadline reached at step {step}; resume with --resume")
                return stop(False)
    wrapped.eval()
    return stop(True)


def step_speed(step_seconds: list[float]) -> dict:
    """What a stage's steps in one call cost: their number, the first one's seconds (it warms up
    kernels and the allocator), the mean of the others' (the first's when alone) and this process's
    peak GPU memory in GiB (None on a CPU)."""
    rest = step_seconds[1:] or step_seconds
    return {"steps": len(step_seconds), "first_step_seconds": step_seconds[0],
            "seconds_per_step": sum(rest) / len(rest),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def save_loss_plot(losses: dict[str, list[float]], path: Path) -> None:
    """One panel per stage: the raw loss and its 100-step moving average, log scale. A run that
    trained no step writes none (and keeps the plot of the run it resumed)."""
    stages = [s for s in losses if losses[s]]
    if not stages:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.2), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        values = torch.tensor(losses[stage])
        window = min(100, len(values))
        smooth = values.unfold(0, window, 1).mean(1)
        ax.plot(values.numpy(), alpha=0.3, linewidth=0.5)
        ax.plot(range(window - 1, len(values)), smooth.numpy(), linewidth=1.5)
        ax.set_yscale("log")
        ax.set_title(f"stage {stage}")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
