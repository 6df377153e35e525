"""Drawing -> 2D joints -> triangulation -> IK -> FK against ground-truth motions (paper §3.3).

Random trees of 2 to 64 joints (chains, wide fans, long tails, random trees) with random smooth
motions, drawn with the product's one pose-map function, on clean and on damaged maps.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import draw_pose_maps, render_pose_maps
from backend.reconstruction.reconstruct import reconstruct
from synthetic import SHAPES, random_motion, random_rig

SIZE = 320
FRAMES = 3
rigs = dict(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES), n_bones=st.integers(1, 32))


def scene(seed, shape, n_bones):
    rng = np.random.default_rng(seed)
    rig = random_rig(rng, n_bones, shape)
    _, _, joints = random_motion(rng, rig, FRAMES)
    center, radius = rig.bounding_sphere()
    return rng, rig, joints, make_camera_rig(center, radius, SIZE)


def bone_lengths(rig, joints):
    child = np.flatnonzero(rig.joint_parents >= 0)
    return np.linalg.norm(joints[..., child, :] - joints[..., rig.joint_parents[child], :], axis=-1)


def check_result(rig, cameras, truth, result, mpjpe_limit):
    radius = cameras.radius
    mpjpe = np.linalg.norm(result.joints - truth, axis=-1).mean() / radius
    assert mpjpe <= mpjpe_limit, f"MPJPE {100 * mpjpe:.2f}% of the rig radius"
    lengths = bone_lengths(rig, result.triangulated)
    rest = bone_lengths(rig, rig.joints_rest)
    assert np.abs(lengths / rest - 1).max() <= 0.005, "triangulation changed a bone length by > 0.5%"
    ik_fk = np.linalg.norm(result.joints - result.triangulated, axis=-1).max() / radius
    assert ik_fk <= 0.005, f"IK -> FK is {100 * ik_fk:.2f}% of the radius from the triangulated joints"


@settings(max_examples=20, deadline=None)
@given(**rigs)
def test_clean_pose_maps(seed, shape, n_bones):
    _, rig, truth, cameras = scene(seed, shape, n_bones)
    images = render_pose_maps(cameras, truth, rig.joint_parents)
    check_result(rig, cameras, truth, reconstruct(rig, cameras, images), mpjpe_limit=0.01)


def damaged_pose_maps(rng, rig, cameras, joints):
    """What a video model's decoder does to pose maps, and worse: blur, colour noise and a colour
    cast, 2 px of jitter, and every joint hidden in one of the four views."""
    pixels, depths = cameras.project(cameras.to_normalized(joints))
    pixels = pixels + rng.uniform(-2, 2, pixels.shape)
    visible = np.ones(depths.shape, bool)
    hidden_view = rng.integers(0, cameras.num_views, rig.num_joints)
    visible[hidden_view, :, np.arange(rig.num_joints)] = False
    images = draw_pose_maps(pixels, depths, rig.joint_parents, cameras.width, visible=visible).astype(float)
    images = gaussian_filter(images, sigma=(0, 0, 1.0, 1.0, 0))
    images += rng.normal(0, 8, images.shape) + rng.uniform(-12, 12, 3)
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


@settings(max_examples=20, deadline=None)
@given(**rigs)
def test_damaged_pose_maps(seed, shape, n_bones):
    rng, rig, truth, cameras = scene(seed, shape, n_bones)
    images = damaged_pose_maps(rng, rig, cameras, truth)
    check_result(rig, cameras, truth, reconstruct(rig, cameras, images), mpjpe_limit=0.03)
