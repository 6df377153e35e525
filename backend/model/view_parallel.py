"""One AnimaX generation split across GPUs by views.

Every rank of a process group holds a full replica of :class:`AnimaXTransformer3DModel` and is
called with the same full ``(B, V, ...)`` inputs; under :func:`shard_views` each rank runs only its
``V / world`` views through the transformer and every rank returns the full output, so a pipeline
(``AnimaXPipeline``, its scheduler and guidance) runs unchanged on every rank and stays in step
as long as all ranks start from the same latents (same seed).

Everything in a forward is per view except the multi-view attention of each block. There each
rank's queries are its local views' tokens and its keys and values those of all views: the
normalised tokens are all-gathered (``D`` values a token, half of what gathering the projected
keys and values would send) and the key and value projections of the other ranks' views are
computed again locally. That repeats a small part of the multi-view layer (2 of its 4
projections) but not its attention, and uses the stock ``WanAttention`` as cross-attention.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
import torch.distributed as dist

from .transformer_animax import AnimaXTransformer3DModel


def _gather(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The ranks' ``x`` concatenated along ``dim``, in rank order."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


@contextlib.contextmanager
def shard_views(model: AnimaXTransformer3DModel, group: dist.ProcessGroup | None = None) -> Iterator[None]:
    """Within this context, ``model``'s forward splits the views across the ranks of ``group``.

    Every rank must call the forward with the same inputs, all views included; rank ``r`` computes
    views ``r * V / world`` up to ``(r + 1) * V / world`` and the output of all views is gathered
    back on every rank. Inference only: the gathers do not carry gradients.

    Args:
        model: the transformer, the same weights on every rank.
        group: the process group (NCCL on GPUs, gloo on CPUs); the default group when ``None``.

    Raises:
        ValueError: from a forward whose number of views is not a multiple of the group's size.
    """
    if any(block.attn_mv.fused_projections for block in model.blocks):
        # fused projections compute keys and values from the queries' tokens, ignoring the gathered ones
        raise ValueError("shard_views needs the multi-view attention's projections unfused")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    signature = inspect.signature(model.forward)

    def local_views(module, args, kwargs):
        if torch.is_grad_enabled():
            raise RuntimeError("shard_views is for inference: run the forward under torch.no_grad()")
        bound = signature.bind(*args, **kwargs)
        views = bound.arguments["hidden_states"].shape[1]
        if views % world:
            raise ValueError(f"{views} views cannot be split evenly across the {world} ranks of the process group")
        size = views // world
        for name in ("hidden_states", "plucker"):
            bound.arguments[name] = bound.arguments[name][:, rank * size : (rank + 1) * size]
        return bound.args, bound.kwargs

    def all_views(module, args, output):
        if isinstance(output, tuple):
            return (_gather(output[0], 1, group), *output[1:])
        output.sample = _gather(output.sample, 1, group)
        return output

    def gather_tokens(x: torch.Tensor) -> torch.Tensor:
        return _gather(x, 1, group)  # (B*F, local V*HW, D): each rank's views are whole, in order

    handles = [model.register_forward_pre_hook(local_views, with_kwargs=True), model.register_forward_hook(all_views)]
    for block in model.blocks:
        block.gather_views = gather_tokens
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for block in model.blocks:
            block.gather_views = None
