"""One training stage under accelerate: optimiser, checkpoints, resume, a deadline, loss log."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator


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
) -> tuple[list[float], bool]:
    """Run ``steps`` optimiser steps of ``loss_fn(model, step)``; returns (losses, finished).

    Resumes from ``checkpoint_dir`` when it holds this stage's state. Stops early (after saving) when
    ``time.time()`` passes ``deadline``, so a run cut into several machine sessions loses nothing.
    """
    # One accelerator per stage: its saved state then holds exactly this stage's model and optimiser.
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = min(200, steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, cosine decay to 10%
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(s / steps, 1.0))))
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    progress_file = checkpoint_dir / "progress.json"
    start, losses = 0, []
    if progress_file.is_file():
        state = json.loads(progress_file.read_text())
        accelerator.load_state(str(checkpoint_dir))
        start, losses = state["step"], state["losses"]
        log(f"[{name}] resumed at step {start}")

    def save(step: int) -> None:
        accelerator.save_state(str(checkpoint_dir))
        progress_file.write_text(json.dumps({"step": step, "losses": losses, "finished": step >= steps}))

    model.train()
    began = time.time()
    step = start
    for step in range(start + 1, steps + 1):
        with accelerator.autocast():
            loss = loss_fn(model, step)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == steps:
            rate = (step - start) / (time.time() - began)
            log(f"[{name}] step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                f"({rate:.1f} steps/s)")
        if step % checkpoint_every == 0 or step == steps or time.time() > deadline:
            save(step)
            if time.time() > deadline and step < steps:
                log(f"[{name}] deadline reached at step {step}; resume with --resume")
                return losses, False
    model.eval()
    return losses, True


def save_loss_plot(losses: dict[str, list[float]], path: Path) -> None:
    """One panel per stage: the raw loss and its 100-step moving average, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in losses if losses[s]]
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
