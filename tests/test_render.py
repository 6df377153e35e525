"""The capsule renderer of training videos: geometry against the camera model, and batching."""

import numpy as np
import pytest

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.templates_style import TEMPLATE_BACKGROUND
from backend.data.dataset import Samples, build_samples, draw_clip
from backend.data.motions import MOTIONS
import backend.data.render as render
from backend.data.render import render_rgb

SIZE = 64


def _vertical_bone(radius=0.1, colour=(0.2, 0.6, 1.0)):
    joints = np.array([[[0.0, 0.0, -0.5], [0.0, 0.0, 0.5]]])  # one frame, a bone along Z at the origin
    cameras = make_camera_rig(np.zeros(3), 1.0, SIZE)
    colours = np.array([colour, colour])
    return cameras, joints, np.array([-1, 0]), colours, np.array([0.0, radius])


def test_silhouette_width_matches_the_projected_radius():
    cameras, joints, parents, colours, radii = _vertical_bone()
    image = render_rgb(cameras, joints, parents, colours, radii)[0, 0].astype(int)
    row = image[SIZE // 2]
    covered = np.flatnonzero(np.abs(row - TEMPLATE_BACKGROUND).sum(-1) > 0)
    distance = np.linalg.norm(cameras.positions[0])
    expected = 2 * 0.1 * cameras.focal_px / distance  # pixels across the capsule at the centre row
    assert abs(len(covered) - expected) <= 1.5
    # Facing the camera, the centre is lit almost fully (its rays meet the surface a little off
    # its normal): the pixel is the colour itself within a few percent, never brighter.
    ratio = image[SIZE // 2, SIZE // 2] / (np.array([0.2, 0.6, 1.0]) * 255)
    assert ((ratio > 0.95) & (ratio <= 1.0)).all()
    assert (image[:, :5] == TEMPLATE_BACKGROUND).all()


def test_nearer_capsule_hides_farther_one():
    cameras = make_camera_rig(np.zeros(3), 1.0, SIZE)
    # View 0 looks along +Y: the bone at y = -0.3 is nearer than the one at y = +0.3.
    joints = np.array([[[0, -0.3, -0.4], [0, -0.3, 0.4], [0, 0.3, -0.4], [0, 0.3, 0.4]]], dtype=float)
    parents = np.array([-1, 0, -1, 2])
    colours = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=float)
    radii = np.array([0, 0.1, 0, 0.1])
    front = render_rgb(cameras, joints, parents, colours, radii)[0, 0, SIZE // 2, SIZE // 2]
    assert front[0] > 200 and front[1] < 10


def test_batched_dataset_renders_equal_single_renders(tmp_path):
    samples = build_samples(3, seed=5, size=32, frames=5, render_batch=2)
    seeds = np.random.SeedSequence(5).generate_state(3, dtype=np.uint64).tolist()
    for i, seed in enumerate(seeds):
        item = draw_clip(seed, 32, 5, None, tuple(MOTIONS))
        rig = item["clip"].creature.rig
        video = render_rgb(item["cameras"], item["clip"].joints, rig.joint_parents, item["colours"], item["radii"])
        np.testing.assert_array_equal(samples.rgb[i], video)
        np.testing.assert_array_equal(samples.pose[i], item["pose"])
        assert samples.prompts[i] == item["clip"].prompt
    samples.save(tmp_path / "d.npz")
    again = Samples.load(tmp_path / "d.npz")
    np.testing.assert_array_equal(again.rgb_rest, samples.rgb_rest)
    assert again.motions == samples.motions and again.families == samples.families


def test_frames_rendered_a_few_at_a_time_equal_all_at_once(monkeypatch):
    item = draw_clip(7, 32, 5, None, tuple(MOTIONS))
    rig = item["clip"].creature.rig
    args = (item["cameras"], item["clip"].joints, rig.joint_parents, item["colours"], item["radii"])
    whole = render_rgb(*args)
    edges = int((np.asarray(rig.joint_parents) >= 0).sum())
    monkeypatch.setattr(render, "HITS_PER_CHUNK", 2 * (32 * render.SUPERSAMPLE) ** 2 * edges)  # 2 frames a chunk
    np.testing.assert_array_equal(render_rgb(*args), whole)


def test_build_samples_rejects_nothing_to_build():
    with pytest.raises(ValueError, match="at least 1"):
        build_samples(0)
