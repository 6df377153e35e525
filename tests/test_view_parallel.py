"""shard_views: one forward split by views across 2 CPU processes (gloo) equals the forward of one
process, and a view count that does not split is refused."""

import datetime
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_transformer_animax import CONFIG

from backend.model.transformer_animax import AnimaXTransformer3DModel
from backend.model.view_parallel import shard_views

B, V, C, F, H, W = 2, 4, 4, 6, 4, 6  # a batch of two like image CFG; 2 views a rank


def tiny_model() -> AnimaXTransformer3DModel:
    torch.manual_seed(0)
    model = AnimaXTransformer3DModel(**CONFIG).eval()
    with torch.no_grad():  # the zero-initialised parts (multi-view output, rays, modality) made to count
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return model


def inputs(views=V):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, views, C, F, H, W, generator=g), torch.tensor([700.0, 700.0]),
            torch.randn(B, 5, 16, generator=g), torch.randn(B, views, 6, H, W, generator=g))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, world, port, model, out_dir):
    # a timeout, so that a rank missing a collective fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    x, t, text, rays = inputs()
    results = {}
    try:
        with torch.no_grad():
            with shard_views(model):
                results["split"] = model(hidden_states=x, timestep=t, encoder_hidden_states=text, plucker=rays).sample
                results["positional"] = model(x, t, text, rays, return_dict=False)[0]  # as the pipeline calls it
                try:
                    model(*inputs(views=3))
                except ValueError as error:
                    results["error"] = str(error)
            results["after"] = model(x, t, text, rays).sample
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_split_forward_equals_the_single_process_forward_and_odd_views_are_refused(tmp_path):
    model = tiny_model()
    x, t, text, rays = inputs()
    with torch.no_grad():
        reference = model(x, t, text, rays).sample
        alone = model(x[:, :2], t, text, rays[:, :2]).sample
    # the exchange matters: views 0-1 come out differently without views 2-3
    assert not torch.allclose(alone, reference[:, :2], atol=1e-3)

    mp.spawn(rank_main, args=(2, free_port(), model, tmp_path), nprocs=2)

    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        assert results["split"].shape == (B, V, C, F, H, W)
        torch.testing.assert_close(results["split"], reference, atol=1e-5, rtol=1e-5)
        assert torch.equal(results["positional"], results["split"])
        assert results["error"] == "3 views cannot be split evenly across the 2 ranks of the process group"
        assert torch.equal(results["after"], reference)  # the context leaves the model as it was
