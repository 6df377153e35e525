"""2D joint detection in pose maps, against the positions the maps were drawn from."""

import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import disc_radius, draw_pose_maps, palette
from animax_addon.core.rig import MAX_JOINTS
from backend.reconstruction.joints2d import detect_joints


def separated_joints(rng, n_images: int, n_joints: int, size: int, gap: float) -> np.ndarray:
    """(n_images, n_joints, 2) random positions in the image, pairwise ``gap`` or more apart."""
    margin = disc_radius(size) + 2
    out = np.empty((n_images, n_joints, 2))
    for i in range(n_images):
        chosen = []
        while len(chosen) < n_joints:
            p = rng.uniform(margin, size - 1 - margin, 2)
            if all(np.hypot(*(p - q)) >= gap for q in chosen):
                chosen.append(p)
        out[i] = chosen
    return out


def chain(n_joints: int) -> np.ndarray:
    return np.arange(n_joints) - 1


def degrade(images: np.ndarray, rng) -> np.ndarray:
    """Roughly what a video VAE does to pose maps: blur, a colour shift, noise, JPEG smudging."""
    lead = images.shape[:-3]
    flat = images.reshape((-1,) + images.shape[-3:]).astype(np.float64)
    flat = gaussian_filter(flat, sigma=(0, 1.0, 1.0, 0))
    flat += np.array([15.0, -15.0, 10.0])
    flat += rng.normal(0, 8.0, flat.shape)
    flat = np.clip(np.round(flat), 0, 255).astype(np.uint8)
    for i, image in enumerate(flat):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=90)
        flat[i] = np.asarray(Image.open(buffer))
    return flat.reshape(lead + images.shape[-3:])


def test_clean_maps_give_sub_pixel_positions():
    rng = np.random.default_rng(0)
    size, n_joints = 256, 20
    truth = separated_joints(rng, 16, n_joints, size, gap=3 * disc_radius(size))
    images = draw_pose_maps(truth, np.ones(truth.shape[:-1]), chain(n_joints), size)
    pixels, confidence = detect_joints(images, palette(n_joints))
    error = np.linalg.norm(pixels - truth, axis=-1)
    assert error.mean() < 0.15
    assert error.max() < 0.5
    assert confidence.min() > 0.9


def test_projected_rig_in_four_views_and_leading_dimensions_kept():
    rng = np.random.default_rng(1)
    views, frames, n_joints, size = 4, 3, 12, 200  # 200: not a multiple of the screening block
    points = rng.uniform(-0.6, 0.6, (frames, n_joints, 3))
    cameras = make_camera_rig(np.zeros(3), 1.0, size)
    truth, depths = cameras.project(points)
    images = draw_pose_maps(truth, depths, chain(n_joints), size)
    pixels, confidence = detect_joints(images, palette(n_joints))
    assert pixels.shape == (views, frames, n_joints, 2)
    assert confidence.shape == (views, frames, n_joints)
    whole = confidence > 0.9  # not covered by a nearer joint
    assert whole.mean() > 0.7
    assert np.linalg.norm(pixels - truth, axis=-1)[whole].mean() < 0.15


@pytest.mark.parametrize("size, n_joints, n_images", [(256, 20, 6), (480, MAX_JOINTS, 2)])
def test_blurred_noisy_shifted_smudged_maps(size, n_joints, n_images):
    rng = np.random.default_rng(2)
    truth = separated_joints(rng, n_images, n_joints, size, gap=3 * disc_radius(size))
    clean = draw_pose_maps(truth, np.ones(truth.shape[:-1]), chain(n_joints), size)
    pixels, confidence = detect_joints(degrade(clean, rng), palette(n_joints))
    error = np.linalg.norm(pixels - truth, axis=-1)
    assert not np.isnan(error).any()
    assert error.mean() < 0.5
    assert confidence.min() > 0.3
    # Joint 27's colour (51, 51, 51) is also what the edge of a blurred grey line looks like: a
    # line passing its disc pulls it a little. Every other joint stays within a pixel.
    assert error[:, np.arange(n_joints) != 27].max() < 1.0
    assert error.max() < 3.0


@pytest.mark.parametrize("degraded", [False, True])
def test_hidden_joint_is_not_found(degraded):
    rng = np.random.default_rng(3)
    size, n_joints = 256, 16
    truth = separated_joints(rng, 4, n_joints, size, gap=3 * disc_radius(size))
    visible = np.ones(truth.shape[:-1], bool)
    visible[1, 5] = visible[3, 0] = False
    depths = np.ones(truth.shape[:-1])
    images = draw_pose_maps(truth, depths, chain(n_joints), size, visible=visible)
    if degraded:
        images = degrade(images, rng)
    pixels, confidence = detect_joints(images, palette(n_joints))
    assert np.all(confidence[~visible] == 0)
    assert np.isnan(pixels[~visible]).all()
    assert not np.isnan(pixels[visible]).any()


@pytest.mark.parametrize("size, degraded", [(256, False), (480, True)])
def test_half_covered_joint_gets_partial_confidence(size, degraded):
    # Blurred, a small disc's visible half is a crescent too thin to keep its colour: 480 pixels.
    r = disc_radius(size)
    # Joint 1 lies 0.8 radii behind joint 0, which covers half of its disc; joint 2 is apart.
    truth = np.array([[[100.0, 120.0], [100.0 + 0.8 * r, 120.0], [180.0, 60.0]]])
    images = draw_pose_maps(truth, np.array([[1.0, 2.0, 1.0]]), np.array([-1, 0, 0]), size)
    if degraded:
        images = degrade(images, np.random.default_rng(4))
    pixels, confidence = detect_joints(images, palette(3))
    assert 0.2 < confidence[0, 1] < 0.8
    assert confidence[0, 0] > 0.8 and confidence[0, 2] > 0.8
    # The visible half's centroid lies towards its uncovered side, within a radius of the centre.
    assert np.linalg.norm(pixels[0, 1] - truth[0, 1]) < r


def test_stray_pixels_of_a_joint_colour_far_away_do_not_move_it():
    rng = np.random.default_rng(5)
    size, n_joints = 256, 8
    truth = separated_joints(rng, 1, n_joints, size, gap=5 * disc_radius(size))
    images = draw_pose_maps(truth, np.ones(truth.shape[:-1]), chain(n_joints), size)
    colours = palette(n_joints)
    before, _ = detect_joints(images, colours)
    # Joint 3's colour also as a 3x3 smudge and as scattered single pixels, all on the background.
    far = np.linalg.norm(np.stack(np.mgrid[0:size, 0:size][::-1], -1) - truth[0, 3], axis=-1) > 60
    background = far & (images[0].max(axis=-1) == 0)
    ys, xs = np.nonzero(background)
    pick = rng.choice(len(ys), size=12, replace=False)
    images[0, ys[pick], xs[pick]] = colours[3]
    y, x = ys[pick[0]], xs[pick[0]]
    images[0, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = colours[3]
    after, confidence = detect_joints(images, colours)
    assert np.linalg.norm(after[0, 3] - before[0, 3]) <= 0.5
    assert np.linalg.norm(after[0, 3] - truth[0, 3]) < 0.5
    assert confidence[0, 3] > 0.9


def test_single_image_empty_stack_and_blank_maps():
    size, n_joints = 128, 5
    rng = np.random.default_rng(6)
    truth = separated_joints(rng, 1, n_joints, size, gap=4 * disc_radius(size))[0]
    image = draw_pose_maps(truth, np.ones(n_joints), chain(n_joints), size)
    pixels, confidence = detect_joints(image, palette(n_joints))
    assert pixels.shape == (n_joints, 2) and confidence.shape == (n_joints,)
    assert np.linalg.norm(pixels - truth, axis=-1).max() < 0.5

    pixels, confidence = detect_joints(np.zeros((0, 4, size, size, 3), np.uint8), palette(n_joints))
    assert pixels.shape == (0, 4, n_joints, 2) and confidence.shape == (0, 4, n_joints)

    pixels, confidence = detect_joints(np.zeros((2, size, size, 3), np.uint8), palette(n_joints))
    assert np.isnan(pixels).all() and np.all(confidence == 0)


@pytest.mark.parametrize(
    "images, colours",
    [
        (np.zeros((2, 64, 64, 3), np.float32), palette(4)),  # not uint8
        (np.zeros((64, 64), np.uint8), palette(4)),  # no colour axis
        (np.zeros((2, 64, 64, 4), np.uint8), palette(4)),  # RGBA
        (np.zeros((2, 0, 64, 3), np.uint8), palette(4)),  # no pixels
        (np.zeros((2, 64, 64, 3), np.uint8), palette(4)[:, :2]),  # colours not (J, 3)
        (np.zeros((2, 64, 64, 3), np.uint8), palette(4).ravel()),
        (np.zeros((2, 64, 64, 3), np.uint8), np.zeros((0, 3), np.uint8)),
        (np.zeros((2, 64, 64, 3), np.uint8), palette(4) / 255.0),  # colours not 0..255 integers
    ],
)
def test_bad_inputs_are_rejected(images, colours):
    with pytest.raises(ValueError):
        detect_joints(images, colours)
