"""2D joint localisation in pose maps by colour clustering (paper §3.3, stage 1).

Every joint is a disc in its own palette colour (``animax_addon.core.pose_maps``); generated pose
maps carry those colours shifted, blurred, noisy and smudged. For all images of a call at once:

1. Screen: only 16 x 16 blocks holding a pixel clearly brighter than the background go on.
2. Cluster: k-means started at the palette and the line grey (so centre k stays joint k), fitted
   on a seeded sample of flat pixels pooled over all images: the centres follow the colour shift.
3. Label: a lookup table over 5-bit colours gives every pixel its nearest centre, or none when it
   is far from all of them or half-way between two (mixtures at blurred edges).
4. Locate: per image and joint, seed at the densest spot of its pixels, take their centroid
   (``np.bincount``) in a box around the seed, then again within a disc around that centroid.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from animax_addon.core.pose_maps import LINE_COLOUR, disc_radius

MIN_FOREGROUND_LEVEL, MAX_FOREGROUND_LEVEL = 24, 48
"""Bounds on the brightest channel that marks a pixel as more than background: above a clean
background, and far below any palette colour's brightest channel (at least 187)."""

SHIFT_ROOM = 64.0
"""Farthest a pixel's colour may lie from its palette colour to be fitted as that colour: room
for a shift of 15 per channel on top of noise and smudging."""

MAX_COLOUR_DISTANCE = 40.0
"""Farthest a pixel's colour may lie from its cluster centre (RGB, 0-255) to count as that colour:
noise of 8 per channel stays within it; the nearest palette colours are 48 apart, and the ratio
test below settles pixels between two of them."""

DISTANCE_RATIO = 0.6
"""Largest ratio of a pixel's distances to its nearest and second-nearest centres: a mixture of
two colours at a blurred edge, or of a dark colour and the background, belongs to neither."""

FLAT_STEP, MAX_FLAT_STEP = 2, 32.0
"""A pixel is flat when its colour differs by at most MAX_FLAT_STEP from the pixels FLAT_STEP to
its right and below: noise of 8 per channel passes, a blurred edge's steep ramp does not."""

KMEANS_SAMPLES = 16384
"""Pixels the clusters are fitted on: plenty for 65 centres in 3D, and fast."""

MIN_PIXEL_FRACTION = 0.1
"""A joint with fewer pixels than this fraction of a disc's area (and at least 3) is not found."""

_BLOCK_BITS = 4  # screening blocks of 16 x 16 pixels: a power of two, to split indices by shifts
_BLOCK = 1 << _BLOCK_BITS
_COLOUR_BITS = 5  # the colour lookup table has 32^3 entries
_COLOUR_SHIFT = 8 - _COLOUR_BITS


def detect_joints(images: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Locate each joint's disc in pose maps.

    Args:
        images: (..., H, W, 3) uint8 pose maps, any leading dimensions (e.g. (V, T)).
        colours: (J, 3) uint8 joint palette (``pose_maps.palette(J)``).

    Returns:
        pixels: (..., J, 2) float64 positions (x, y), (0, 0) the centre of the top-left pixel;
            NaN where the joint was not found.
        confidence: (..., J) in [0, 1]: the joint's pixels relative to a whole disc's, so a
            half-covered joint gets about 0.5 and a hidden one 0.
    """
    images, colours = _checked(images, colours)
    lead, (height, width) = images.shape[:-3], images.shape[-3:-1]
    n_joints = len(colours)
    stack = images.reshape((-1, height, width, 3))
    n_groups = len(stack) * n_joints  # group: image * n_joints + joint
    if n_groups == 0:
        return np.zeros(lead + (n_joints, 2)), np.zeros(lead + (n_joints,))

    background, level = _background(stack)
    blocks, block_image, block_y, block_x = _active_blocks(stack, level)
    code = _colour_code(blocks.reshape(-1, 3))
    centres = _fit_centres(blocks, code, colours, background)
    label = np.take(_nearest_table(centres, MAX_COLOUR_DISTANCE, DISTANCE_RATIO), code)
    # Joint pixels as their block and their offset in it (row-major), and their coordinates.
    pixel = np.flatnonzero(label < n_joints)
    block, offset, joint = pixel >> (2 * _BLOCK_BITS), pixel & (_BLOCK * _BLOCK - 1), label[pixel]
    within_y, within_x = np.divmod(np.arange(_BLOCK * _BLOCK, dtype=np.float64), _BLOCK)
    x = block_x.astype(np.float64)[block] + within_x[offset]
    y = block_y.astype(np.float64)[block] + within_y[offset]
    group = block_image[block] * n_joints + joint

    radius = disc_radius(width)
    # Seed at the densest spot of each joint's colour in each image: stray pixels of that colour
    # elsewhere would drag a plain mean, here they are left out from the start.
    cell_bits = max(0, round(np.log2(radius)))  # cells of about a radius
    block_cell = _cell_of(block_image, block_y, block_x, height, width, cell_bits)
    x0, y0 = _densest(block_cell[block] + _cell_in_block(offset, width, cell_bits), joint,
                      stack.shape[:3], n_joints, cell_bits)
    reach = radius + (1 << cell_bits) + 1.0  # the seed lies within a cell of the disc's centre
    near = (np.abs(x - x0[group]) <= reach) & (np.abs(y - y0[group]) <= reach)
    _, x1, y1 = _centroids(group, x, y, near, n_groups)
    # Then the disc alone: a half-covered disc's centroid lies 0.42 radii off its centre.
    reach = 1.5 * radius + 1.0
    near = (x - x1[group]) ** 2 + (y - y1[group]) ** 2 <= reach**2
    count, x2, y2 = _centroids(group, x, y, near, n_groups)

    area = np.pi * radius**2
    found = count >= max(3.0, MIN_PIXEL_FRACTION * area)
    # A whole disc covers pi r^2 pixels; blur costs it its rim, so where the best-seen discs of
    # the call are smaller, they set the scale (a half-covered disc still gets about 0.5).
    best_seen = np.percentile(count[found], 90) if found.any() else area
    whole = np.clip(best_seen, 0.25 * area, area)
    pixels = np.where(found[:, None], np.stack([x2, y2], axis=-1), np.nan)
    confidence = np.where(found, np.minimum(count / whole, 1.0), 0.0)
    return pixels.reshape(lead + (n_joints, 2)), confidence.reshape(lead + (n_joints,))


def _checked(images, colours) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(
            f"pose maps must be uint8 images of shape (..., H, W, 3), "
            f"got {images.dtype} {images.shape}"
        )
    if images.shape[-2] == 0 or images.shape[-3] == 0:
        raise ValueError(f"pose maps must have at least one pixel, got shape {images.shape}")
    colours = np.asarray(colours)
    # Labels are uint8 and number the joints, the line, the background and "none".
    if colours.ndim != 2 or colours.shape[1] != 3 or not 0 < len(colours) <= 253:
        raise ValueError(
            f"colours must be a (J, 3) palette of 1 to 253 joints, got shape {colours.shape}"
        )
    if colours.dtype.kind not in "ui" or colours.min() < 0 or colours.max() > 255:
        raise ValueError(f"colours must be integers in 0..255, got {colours.dtype}")
    return images, colours.astype(np.uint8)


def _background(stack: np.ndarray) -> tuple[np.ndarray, float]:
    """The background colour (3,) and the brightest-channel level above which a pixel is more.

    Pose maps are mostly background, so the median of a random sample of pixels is background;
    the level sits five noise deviations above it, so that noise does not make every block busy.
    """
    rgb = stack.reshape(-1, 3)
    sample = rgb[np.random.default_rng(0).integers(0, len(rgb), size=65536)]
    brightest = sample.max(axis=1)
    typical = np.median(brightest)
    noise = 1.4826 * np.median(np.abs(brightest - typical))  # robust standard deviation
    level = float(np.clip(typical + 5 * noise, MIN_FOREGROUND_LEVEL, MAX_FOREGROUND_LEVEL))
    return np.median(sample, axis=0), level


def _active_blocks(stack: np.ndarray, level: float):
    """The 16 x 16 blocks holding a pixel brighter than ``level``: their pixels (K, 16, 16, 3)
    and each block's image index and top-left y and x (K,).

    Maxima over rows and then over short runs of bytes are two cheap passes over the stack; all
    later work is on the few blocks that hold any of the pose.
    """
    n_images, height, width, _ = stack.shape
    pad_y, pad_x = -height % _BLOCK, -width % _BLOCK
    if pad_y or pad_x:
        stack = np.pad(stack, ((0, 0), (0, pad_y), (0, pad_x), (0, 0)))  # black: never a joint
    rows, cols = stack.shape[1] // _BLOCK, stack.shape[2] // _BLOCK
    tiled = stack.reshape(n_images, rows, _BLOCK, cols, _BLOCK * 3)
    column_max = tiled.max(axis=2)  # (N, rows, cols, 48): contiguous, so this pass is fast
    image, row, col = np.nonzero(column_max.max(axis=-1) > level)
    blocks = tiled[image, row, :, col, :].reshape(-1, _BLOCK, _BLOCK, 3)
    return blocks, image, row * _BLOCK, col * _BLOCK


def _colour_code(rgb: np.ndarray) -> np.ndarray:
    """Lookup-table index of each (P, 3) uint8 colour."""
    q = rgb >> _COLOUR_SHIFT
    code = q[:, 0].astype(np.uint16)  # in place from here on: this runs over every block pixel
    code <<= _COLOUR_BITS
    code |= q[:, 1]
    code <<= _COLOUR_BITS
    code |= q[:, 2]
    return code


def _nearest_table(centres: np.ndarray, max_distance: float, max_ratio: float) -> np.ndarray:
    """Index of the nearest centre of every colour quantised to _COLOUR_BITS per channel, or
    len(centres) where that is farther than ``max_distance`` or than ``max_ratio`` times the
    distance to the second-nearest centre."""
    levels = (np.arange(1 << _COLOUR_BITS) << _COLOUR_SHIFT) + ((1 << _COLOUR_SHIFT) - 1) / 2
    r, g, b = ((levels[:, None] - centres[:, c]) ** 2 for c in range(3))  # each (level, centre)
    squared = (r[:, None, None] + g[None, :, None] + b[None, None, :]).reshape(-1, len(centres))
    nearest = np.argmin(squared, axis=1)
    rows = np.arange(len(squared))
    first = squared[rows, nearest]
    squared[rows, nearest] = np.inf
    second = squared.min(axis=1)
    close = (first <= max_distance**2) & (first <= max_ratio**2 * second)
    return np.where(close, nearest, len(centres)).astype(np.uint8)


def _fit_centres(
    blocks: np.ndarray, code: np.ndarray, colours: np.ndarray, background: np.ndarray
) -> np.ndarray:
    """Colour centres (J + 2, 3): the joints and the line grey by k-means on the blocks' pixels
    (``code``: their lookup-table indices), then the background as measured.

    k-means starts at the palette shifted by the median shift of all colours, so that centre k
    stays joint k; it then follows each colour's own drift. Each start colour is also a sample of
    tiny weight: a cluster never empties, since k-means would move an empty one elsewhere.
    """
    start = np.concatenate([colours, LINE_COLOUR[None]]).astype(np.float64)
    pixel, nearest = _flat_pixels(blocks, code, np.concatenate([start, background[None]]))
    # A video VAE shifts all colours alike; a shifted colour may lie half-way to its neighbour's.
    if len(pixel):
        start = np.clip(start + np.median(pixel - start[nearest], axis=0), 0, 255)
    table = _nearest_table(np.concatenate([start, background[None]]), SHIFT_ROOM, DISTANCE_RATIO)
    sample = pixel[np.take(table, _colour_code(pixel.astype(np.uint8))) < len(start)]
    data = np.concatenate([sample[:KMEANS_SAMPLES], start])
    weight = np.concatenate([np.ones(len(data) - len(start)), np.full(len(start), 1e-3)])
    kmeans = KMeans(n_clusters=len(start), init=start, n_init=1, random_state=0)
    centres = kmeans.fit(data, sample_weight=weight).cluster_centers_
    # A centre that wandered off its colour has been taken over by something else: undo that.
    lost = np.linalg.norm(centres - start, axis=1) > SHIFT_ROOM
    centres[lost] = start[lost]
    return np.concatenate([centres, background[None]])


def _flat_pixels(blocks: np.ndarray, code: np.ndarray, references: np.ndarray):
    """A seeded random sample of flat block pixels within SHIFT_ROOM of a reference colour other
    than the last (the background): their colours (P, 3) and nearest references (P,).

    Mixtures at blurred edges, dimmed thin lines and overlaps hold colours of no joint and would
    drag the centres off theirs; the far more numerous background would swallow dark colours.
    """
    rng = np.random.default_rng(0)
    candidate = rng.integers(0, len(code), size=min(len(code), 8 * KMEANS_SAMPLES))
    nearest = np.take(_nearest_table(references, SHIFT_ROOM, 1.0), code[candidate])
    block, offset = candidate >> (2 * _BLOCK_BITS), candidate & (_BLOCK * _BLOCK - 1)
    y, x = offset >> _BLOCK_BITS, offset & (_BLOCK - 1)
    # Neighbours FLAT_STEP right and below must lie in the same block.
    keep = (nearest < len(references) - 1) & (y < _BLOCK - FLAT_STEP) & (x < _BLOCK - FLAT_STEP)
    block, y, x, nearest = block[keep], y[keep], x[keep], nearest[keep]
    pixel = blocks[block, y, x].astype(np.float64)
    right = np.linalg.norm(pixel - blocks[block, y, x + FLAT_STEP], axis=1)
    below = np.linalg.norm(pixel - blocks[block, y + FLAT_STEP, x], axis=1)
    flat = np.maximum(right, below) <= MAX_FLAT_STEP
    return pixel[flat], nearest[flat]


def _cell_of(image, y, x, height: int, width: int, cell_bits: int) -> np.ndarray:
    """Index of the cell of 2^cell_bits pixels, numbered over all images, holding (image, y, x)."""
    rows, cols = -(-height >> cell_bits), -(-width >> cell_bits)
    return (image * rows + (y >> cell_bits)) * cols + (x >> cell_bits)


def _cell_in_block(offset: np.ndarray, width: int, cell_bits: int) -> np.ndarray:
    """How many cells past its block's top-left cell a pixel's is (blocks and cells are aligned
    powers of two; with cells larger than blocks, none)."""
    y, x = np.divmod(np.arange(_BLOCK * _BLOCK), _BLOCK)
    cols = -(-width >> cell_bits)
    return ((y >> cell_bits) * cols + (x >> cell_bits))[offset]


def _densest(cell: np.ndarray, joint: np.ndarray, shape, n_joints: int, cell_bits: int):
    """Per group (image * n_joints + joint), the centre (x, y) of the cell whose 3 x 3
    neighbourhood holds most of the joint's pixels in that image: a disc about a cell in radius
    fills most of it, a line of stray pixels only a strip.

    ``cell`` and ``joint``: each pixel's cell (``_cell_of``) and joint.
    """
    n_images, height, width = shape
    size = 1 << cell_bits
    rows, cols = -(-height >> cell_bits), -(-width >> cell_bits)
    # Pixel counts per (cell, joint), kept small by numbering only the occupied cells.
    occupied = np.bincount(cell, minlength=n_images * rows * cols) > 0
    number = np.cumsum(occupied) - 1
    counts = np.bincount(number[cell] * n_joints + joint, minlength=(number[-1] + 1) * n_joints)
    pair = np.flatnonzero(counts)  # the (occupied cell, joint) pairs with pixels
    if not len(pair):
        return np.zeros(n_images * n_joints), np.zeros(n_images * n_joints)
    joint_of = pair % n_joints
    image_of, rest = np.divmod(np.flatnonzero(occupied)[pair // n_joints], rows * cols)
    row, col = np.divmod(rest, cols)
    window = np.zeros(len(pair), dtype=np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            r, c = row + dy, col + dx
            inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
            neighbour = (image_of * rows + np.clip(r, 0, rows - 1)) * cols + np.clip(c, 0, cols - 1)
            there = inside & occupied[neighbour]
            window += np.where(there, counts[number[neighbour] * n_joints + joint_of], 0)
    # Best pair per group in one pass: its window count and its index packed in one integer.
    best = np.zeros(n_images * n_joints, dtype=np.int64)
    np.maximum.at(best, image_of * n_joints + joint_of, window * len(pair) + np.arange(len(pair)))
    chosen = best % len(pair)  # groups without pixels get any seed: none of theirs is near it
    return (col[chosen] + 0.5) * size - 0.5, (row[chosen] + 0.5) * size - 0.5


def _centroids(group, x, y, keep, n_groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count and mean x, y per group of the pixels in ``keep`` (NaN for empty groups)."""
    kept = np.where(keep, group, n_groups)  # the rest to a spare bin: cheaper than compressing
    count = np.bincount(kept, minlength=n_groups + 1)[:-1].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x = np.bincount(kept, weights=x, minlength=n_groups + 1)[:-1] / count
        mean_y = np.bincount(kept, weights=y, minlength=n_groups + 1)[:-1] / count
    return count, mean_x, mean_y
