"""The joint palette and the one pose-map drawing function."""

import numpy as np
import pytest

from animax_addon.core.pose_maps import (
    LINE_COLOUR,
    disc_radius,
    draw_pose_maps,
    palette,
)
from animax_addon.core.rig import MAX_JOINTS


def test_palette_is_deterministic_and_well_separated():
    colours = palette(MAX_JOINTS).astype(float)
    assert np.array_equal(palette(MAX_JOINTS), palette(MAX_JOINTS))
    assert np.array_equal(palette(10), palette(MAX_JOINTS)[:10])  # same joint, same colour
    gaps = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    gaps[np.diag_indices(MAX_JOINTS)] = np.inf
    assert gaps.min() > 45  # of 441 across the RGB cube
    assert np.linalg.norm(colours, axis=1).min() > 200  # far from the black background
    assert np.linalg.norm(colours - LINE_COLOUR, axis=1).min() > 100
    # a blurred rim fades towards black or the line grey: no fade passes near another colour
    for end in (np.zeros(3), LINE_COLOUR.astype(float)):
        t = np.linspace(0, 1, 101)[:, None, None]
        fades = end + t * (colours - end)  # (101, J, 3)
        distance = np.linalg.norm(fades[:, :, None] - colours[None, None], axis=-1).min(axis=0)
        distance[np.diag_indices(MAX_JOINTS)] = np.inf
        assert distance.min() > 25
    with pytest.raises(ValueError, match="1 to 64"):
        palette(MAX_JOINTS + 1)


def test_discs_have_their_colour_and_radius():
    size = 128
    pixels = np.array([[30.0, 40.0], [90.0, 80.0]])
    image = draw_pose_maps(pixels, np.ones(2), np.array([-1, -1]), size)
    colours = palette(2)
    for j, (x, y) in enumerate(pixels.astype(int)):
        assert np.array_equal(image[y, x], colours[j])
    area = np.all(image == colours[0], axis=-1).sum()
    assert area == pytest.approx(np.pi * disc_radius(size) ** 2, rel=0.15)
    assert np.array_equal(image[0, 0], [0, 0, 0])


def test_nearer_joint_covers_farther_and_lines_lie_beneath():
    pixels = np.array([[32.0, 32.0], [34.0, 32.0], [32.0, 10.0]])
    parents = np.array([-1, 0, 0])
    colours = palette(3)
    near_second = draw_pose_maps(pixels, np.array([2.0, 1.0, 1.0]), parents, 64)
    near_first = draw_pose_maps(pixels, np.array([1.0, 2.0, 1.0]), parents, 64)
    assert np.array_equal(near_second[32, 33], colours[1])
    assert np.array_equal(near_first[32, 33], colours[0])
    # the line from joint 0 up to joint 2 is grey between the discs, and discs cover it
    assert np.array_equal(near_first[21, 32], LINE_COLOUR)
    assert np.array_equal(near_first[11, 32], colours[2])


def test_hidden_and_behind_camera_joints_are_not_drawn():
    pixels = np.array([[20.0, 20.0], [40.0, 40.0]])
    parents = np.array([-1, 0])
    colours = palette(2)
    hidden = draw_pose_maps(pixels, np.ones(2), parents, 64, visible=np.array([True, False]))
    assert not np.all(hidden == colours[1], axis=-1).any()
    assert np.all(hidden == colours[0], axis=-1).any()
    behind = draw_pose_maps(pixels, np.array([1.0, -1.0]), parents, 64)
    assert not np.all(behind == colours[1], axis=-1).any()
    assert not np.all(behind == LINE_COLOUR, axis=-1).any()  # no line to a joint behind us


def test_batches_draw_like_single_images_and_clip_at_the_border():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-10, 74, (3, 2, 5, 2))
    depths = rng.uniform(1, 2, (3, 2, 5))
    parents = np.array([-1, 0, 1, 1, 0])
    batch = draw_pose_maps(pixels, depths, parents, 64)
    assert batch.shape == (3, 2, 64, 64, 3) and batch.dtype == np.uint8
    for i in range(3):
        for k in range(2):
            assert np.array_equal(batch[i, k], draw_pose_maps(pixels[i, k], depths[i, k], parents, 64))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="disagree"):
        draw_pose_maps(np.zeros((3, 2)), np.ones(2), np.array([-1, 0, 0]), 32)
