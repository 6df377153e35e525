"""The joint palette and the one function that draws pose maps.

A pose map is a black image; each joint is a filled disc in its own palette colour and each
parent->child joint pair a grey line beneath the discs. Nearer joints are drawn over farther ones.
Training data, the worker's templates and the tests all draw with :func:`draw_pose_maps`, so the
model learns exactly what reconstruction reads back.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .rig import MAX_JOINTS

BACKGROUND = np.array([0, 0, 0], dtype=np.uint8)
LINE_COLOUR = np.array([128, 128, 128], dtype=np.uint8)


FADE_WEIGHT = 1.5
"""How much a colour's fades count against its neighbours, relative to the colour itself."""


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from ``points`` to the segments ``a``-``b`` (broadcast over the leading axes)."""
    ab = b - a
    t = np.clip(np.sum((points - a) * ab, axis=-1) / np.maximum(np.sum(ab * ab, axis=-1), 1e-9), 0, 1)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


@lru_cache(maxsize=None)
def _palette_table() -> np.ndarray:
    # Greedy farthest-point sampling on a 16-level RGB grid, seeded with the background and line
    # colours. Blur fades a disc's rim towards black and towards the grey of the lines beneath
    # it, so a colour keeps away not only from the chosen colours but from their fades (and its
    # own fades from them): no rim can then pass for another joint. Deterministic; each prefix
    # is as spread out as the greedy choice can make it.
    levels = np.linspace(0, 255, 16)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    black, grey = BACKGROUND.astype(float), LINE_COLOUR.astype(float)
    nearest = np.minimum(np.linalg.norm(grid - black, axis=1), np.linalg.norm(grid - grey, axis=1))
    chosen = []
    for _ in range(MAX_JOINTS):
        colour = grid[int(np.argmax(nearest))]
        chosen.append(colour)
        fades = [_segment_distance(grid, end, colour) for end in (black, grey)]
        fades += [_segment_distance(colour, end, grid) for end in (black, grey)]
        nearest = np.minimum.reduce([nearest, np.linalg.norm(grid - colour, axis=1)] + [FADE_WEIGHT * f for f in fades])
    table = np.round(np.array(chosen)).astype(np.uint8)
    table.setflags(write=False)
    return table


def palette(num_joints: int) -> np.ndarray:
    """(num_joints, 3) uint8 colours: joint j always gets the same colour."""
    if not 0 < num_joints <= MAX_JOINTS:
        raise ValueError(f"the palette holds 1 to {MAX_JOINTS} joints, asked for {num_joints}")
    return _palette_table()[:num_joints]


def disc_radius(size: int) -> float:
    """Joint disc radius in pixels for a square image of ``size`` pixels."""
    return max(2.0, size / 64)


def line_half_width(size: int) -> float:
    return max(0.5, disc_radius(size) / 4)


def _stamp(centres: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (..., P, 2) within ``radius`` of ``centres`` (..., 2), and a mask (..., P) of those inside."""
    reach = int(np.ceil(radius)) + 1
    oy, ox = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    offsets = np.stack([ox.ravel(), oy.ravel()], axis=-1)
    base = np.floor(centres)[..., None, :]
    pixels = base + offsets
    inside = np.linalg.norm(pixels - centres[..., None, :], axis=-1) <= radius
    return pixels.astype(np.int64), inside


def _inside(px: np.ndarray, size: int) -> np.ndarray:
    return ((px >= 0) & (px < size)).all(axis=-1)


def draw_pose_maps(
    pixels: np.ndarray,
    depths: np.ndarray,
    joint_parents: np.ndarray,
    size: int,
    colours: np.ndarray | None = None,
    visible: np.ndarray | None = None,
) -> np.ndarray:
    """Draw pose maps for any number of images at once.

    Args:
        pixels: (..., J, 2) joint positions in pixels (x right, y down; (0, 0) is the centre of
            the top-left pixel), e.g. from :meth:`CameraRig.project`.
        depths: (..., J) camera-space depth; nearer joints cover farther ones, and joints behind
            the camera are not drawn.
        joint_parents: (J,) the parent joint of each joint, -1 for none (``Rig.joint_parents``).
        size: width and height of the square images.
        colours: (J, 3) uint8 joint colours; the default palette if not given.
        visible: optional (..., J) mask; hidden joints get no disc (their lines stay).

    Returns:
        (..., size, size, 3) uint8 images.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    depths = np.asarray(depths, dtype=np.float64)
    lead = pixels.shape[:-2]
    n_joints = pixels.shape[-2]
    joint_parents = np.asarray(joint_parents, dtype=np.int64)
    if depths.shape != pixels.shape[:-1] or joint_parents.shape != (n_joints,):
        raise ValueError(
            f"pixels {pixels.shape}, depths {depths.shape} and joint_parents "
            f"{joint_parents.shape} disagree on the joints"
        )
    colours = palette(n_joints) if colours is None else np.asarray(colours, dtype=np.uint8)
    pixels = pixels.reshape(-1, n_joints, 2)
    depths = depths.reshape(-1, n_joints)
    n_images = len(pixels)
    in_front = depths > 1e-6
    shown = in_front if visible is None else in_front & np.asarray(visible, bool).reshape(depths.shape)
    image_of_joint = np.broadcast_to(np.arange(n_images)[:, None], depths.shape)

    # Discs: one stamp per joint; sort key = depth so that the nearest joint wins a pixel.
    disc_px, disc_in = _stamp(pixels, disc_radius(size))
    disc_in &= shown[..., None]
    disc_colour = np.broadcast_to(np.arange(n_joints)[None, :, None], disc_in.shape)
    disc_key = np.broadcast_to(depths[..., None], disc_in.shape)
    disc_img = np.broadcast_to(image_of_joint[..., None], disc_in.shape)

    # Lines: points every half pixel along each parent->child segment (a ragged batch, so that
    # an image looks the same whatever else is drawn with it), stamped with the line width.
    child = np.flatnonzero(joint_parents >= 0)
    a = pixels[:, joint_parents[child]].reshape(-1, 2)
    b = pixels[:, child].reshape(-1, 2)
    both = (in_front[:, joint_parents[child]] & in_front[:, child]).ravel()
    length = np.minimum(np.linalg.norm(b - a, axis=-1), 4 * size)  # cap far-off segments
    counts = np.where(both, np.ceil(2 * length).astype(np.int64) + 1, 0)
    segment = np.repeat(np.arange(len(counts)), counts)
    step = np.arange(len(segment)) - np.repeat(np.cumsum(counts) - counts, counts)
    s = step / np.maximum(counts - 1, 1)[segment]
    samples = a[segment] + s[:, None] * (b - a)[segment]
    line_px, line_in = _stamp(samples, line_half_width(size))
    line_img = np.broadcast_to((segment // max(len(child), 1))[:, None], line_in.shape)

    disc_keep = disc_in & _inside(disc_px, size)
    line_keep = line_in & _inside(line_px, size)
    flat = np.concatenate(
        [
            (disc_img[disc_keep] * size + disc_px[disc_keep][:, 1]) * size + disc_px[disc_keep][:, 0],
            (line_img[line_keep] * size + line_px[line_keep][:, 1]) * size + line_px[line_keep][:, 0],
        ]
    )
    colour_index = np.concatenate(
        [disc_colour[disc_keep], np.full(int(line_keep.sum()), n_joints)]
    )
    key = np.concatenate([disc_key[disc_keep], np.full(int(line_keep.sum()), np.inf)])
    order = np.argsort(key, kind="stable")
    pixel_ids, first = np.unique(flat[order], return_index=True)
    table = np.concatenate([colours, LINE_COLOUR[None]])
    images = np.zeros((n_images * size * size, 3), dtype=np.uint8)
    images[pixel_ids] = table[colour_index[order][first]]
    return images.reshape(lead + (size, size, 3))


def render_pose_maps(cameras, joints: np.ndarray, joint_parents: np.ndarray,
                     colours: np.ndarray | None = None) -> np.ndarray:
    """Pose maps (V, T, H, W, 3) of world-space joints (T, J, 3) seen by a square ``CameraRig``.

    Templates are the rest joints with T = 1. Frames are drawn one at a time to bound memory.
    ``colours``: (J, 3) uint8 joint colours; the palette in joint order if not given.
    """
    if cameras.width != cameras.height:
        raise ValueError(f"pose maps are square, the cameras are {cameras.width}x{cameras.height}")
    pixels, depths = cameras.project(cameras.to_normalized(joints))
    return np.stack(
        [draw_pose_maps(pixels[:, t], depths[:, t], joint_parents, cameras.width, colours) for t in range(len(joints))],
        axis=1,
    )
