"""A small renderer for training videos without Blender: capsules around the skeleton, flat shaded.

The GPU machine has no bpy, so the procedural rigs are rendered here, in PyTorch (the same code on
a CPU for tests and CI, on CUDA for training). Each parent->child joint pair is a capsule; each
pixel's ray (the camera rig's own pixel rays, so renders line up with the pose maps) takes the
nearest capsule hit and is shaded with a headlight plus ambient term. The background is the grey the
Blender templates use, so that training templates and the add-on's Workbench renders agree on it.
"""

from __future__ import annotations

import numpy as np
import torch

from animax_addon.core.cameras import CameraRig
from animax_addon.core.templates_style import TEMPLATE_BACKGROUND

AMBIENT = 0.35
SUPERSAMPLE = 2  # rays per pixel side; averaged down, so edges are anti-aliased like a real render
# Ray-capsule tests per chunk of frames: each of the hit test's dozen temporaries holds this many floats
# (512 MB), so 81 frames at 480 px (0.9 M rays a view, 20-60 capsules) render a few frames at a time.
HITS_PER_CHUNK = 2**27


def appearance(joints_rest: np.ndarray, joint_parents: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """A creature's look: per-joint capsule colour (J, 3) in [0, 1] and radius (J,) in metres.

    Joint j's capsule runs from its parent to it (roots draw none). Radii follow bone length within
    bounds set by the rig's size, so fingers stay thin and torsos thick; one hue per creature with a
    small per-bone brightness change so that parts stay distinguishable in the RGB video.
    """
    parents = np.asarray(joint_parents)
    lengths = np.zeros(len(parents))
    has_parent = parents >= 0
    lengths[has_parent] = np.linalg.norm(joints_rest[has_parent] - joints_rest[parents[has_parent]], axis=-1)
    size = np.ptp(joints_rest, axis=0).max()
    radii = np.clip(0.22 * lengths, 0.025 * size, 0.09 * size)
    hue = rng.uniform(0, 1)
    base = np.array([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)]) * 0.3 + 0.6
    colours = np.clip(base[None] * rng.uniform(0.8, 1.15, size=(len(parents), 1)), 0, 1)
    return colours, radii


def _capsule_hits(origin, dirs, a, b, radius):
    """Ray-capsule hit distances (F, P, E), inf on a miss.

    origin (3,), dirs (P, 3) unit rays; a, b (F, E, 3) capsule ends per frame; radius (F, E). The
    cylinder body first, then the end sphere on the side the body test fell off (Inigo Quilez's
    formulation). A capsule of radius 0 is never hit (padding).
    """
    ba = b - a  # (F, E, 3)
    oa = origin - a
    baba = (ba * ba).sum(-1)[:, None]  # (F, 1, E)
    baoa = (ba * oa).sum(-1)[:, None]
    oaoa = (oa * oa).sum(-1)[:, None]
    bard = torch.einsum("pc,fec->fpe", dirs, ba)  # (F, P, E)
    rdoa = torch.einsum("pc,fec->fpe", dirs, oa)
    r2 = (radius**2)[:, None]
    qa = baba - bard**2
    qb = baba * rdoa - baoa * bard
    h = qb**2 - qa * (baba * oaoa - baoa**2 - r2 * baba)
    t_body = (-qb - h.clamp(min=0).sqrt()) / qa.clamp(min=1e-12)
    y = baoa + t_body * bard
    body = (h >= 0) & (y > 0) & (y < baba) & (r2 > 0)
    # End caps: the sphere at a when the body hit lies before it, at b otherwise; |oc|^2 and
    # rd.oc per end, chosen per ray, avoid a (F, P, E, 3) tensor.
    ob = origin - b
    at_a = y <= 0
    cb = torch.where(at_a, rdoa, torch.einsum("pc,fec->fpe", dirs, ob))
    cc = torch.where(at_a, oaoa, (ob * ob).sum(-1)[:, None]) - r2
    hc = cb**2 - cc
    t_cap = -cb - hc.clamp(min=0).sqrt()
    t = torch.where(body, t_body, torch.where(hc > 0, t_cap, torch.full_like(t_body, float("inf"))))
    return torch.where(t > 0, t, torch.full_like(t, float("inf")))


@torch.no_grad()
def render_capsules(cameras: CameraRig, a: torch.Tensor, b: torch.Tensor, radius: torch.Tensor,
                    colour: torch.Tensor) -> torch.Tensor:
    """(V, F, S, S, 3) float images of F frames of capsules a -> b (F, E, 3) in normalised space,
    radius (F, E) (0 = padding), colour (F, E, 3) in [0, 1]."""
    device = a.device
    fine = cameras.resized(cameras.width * SUPERSAMPLE, cameras.height * SUPERSAMPLE)
    rays = torch.from_numpy(fine.plucker_rays()[..., :3]).float().to(device)  # (V, H, W, 3)
    views, height, width = rays.shape[:3]
    origins = torch.from_numpy(cameras.positions).float().to(device)
    background = torch.tensor(TEMPLATE_BACKGROUND, dtype=torch.float32, device=device) / 255.0
    frames = a.shape[0]
    axis = b - a
    out = torch.empty(views, frames, height * width, 3, device=device)
    chunk = max(1, HITS_PER_CHUNK // (height * width * a.shape[1]))
    for v, f in ((v, slice(lo, lo + chunk)) for v in range(views) for lo in range(0, frames, chunk)):
        dirs = rays[v].reshape(-1, 3)
        depth, nearest = _capsule_hits(origins[v], dirs, a[f], b[f], radius[f]).min(dim=2)  # (F, P)
        hit = torch.isfinite(depth)
        # Normal at the hit: away from the closest point on the nearest capsule's axis.
        pos = origins[v] + dirs * depth.nan_to_num(posinf=0.0)[..., None]
        index = nearest[..., None].expand(-1, -1, 3)
        pa, pax = torch.gather(a[f], 1, index), torch.gather(axis[f], 1, index)
        s = (((pos - pa) * pax).sum(-1) / (pax * pax).sum(-1).clamp(min=1e-12)).clamp(0, 1)
        normal = torch.nn.functional.normalize(pos - pa - pax * s[..., None], dim=-1)
        light = AMBIENT + (1 - AMBIENT) * (-(normal * dirs).sum(-1)).clamp(min=0)
        shade = torch.gather(colour[f], 1, index) * light[..., None]
        out[v, f] = torch.where(hit[..., None], shade, background)
    small = torch.nn.functional.avg_pool2d(out.unflatten(2, (height, width)).flatten(0, 1).permute(0, 3, 1, 2),
                                           SUPERSAMPLE)
    return small.permute(0, 2, 3, 1).unflatten(0, (views, frames))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def skeleton_capsules(cameras: CameraRig, joints: np.ndarray, joint_parents: np.ndarray, colours: np.ndarray,
                      radii: np.ndarray) -> tuple[np.ndarray, ...]:
    """Capsule ends a, b (T, E, 3) in normalised space, radius (E,) and colour (E, 3) of a skeleton."""
    parents = np.asarray(joint_parents)
    edges = np.flatnonzero(parents >= 0)
    points = cameras.to_normalized(np.asarray(joints, dtype=np.float64))
    return points[:, parents[edges]], points[:, edges], radii[edges] / cameras.radius, colours[edges]


def render_rgb(
    cameras: CameraRig,
    joints: np.ndarray,
    joint_parents: np.ndarray,
    colours: np.ndarray,
    radii: np.ndarray,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Render (V, T, S, S, 3) uint8 RGB videos of the skeleton ``joints`` (T, J, 3), world space."""
    a, b, radius, colour = skeleton_capsules(cameras, joints, joint_parents, colours, radii)
    frames = len(a)
    tensor = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
    return to_uint8(render_capsules(cameras, tensor(a), tensor(b), tensor(radius).expand(frames, -1),
                                    tensor(colour).expand(frames, -1, -1)))
