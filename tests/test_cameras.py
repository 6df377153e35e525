"""The four-view camera rig, projection, Plücker rays and the Blender <-> OpenCV conversion."""

import numpy as np
import pytest

from animax_addon.core.cameras import (
    SPHERE_FILL,
    CameraError,
    CameraRig,
    blender_from_opencv,
    make_camera_rig,
    opencv_from_blender,
)


def unit_rig(size=128):
    return make_camera_rig(np.zeros(3), 1.0, size)


def test_views_orbit_at_the_product_azimuths():
    cams = unit_rig()
    pos = cams.positions / np.linalg.norm(cams.positions, axis=1, keepdims=True)
    np.testing.assert_allclose(pos, [[0, -1, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0]], atol=1e-12)
    # each camera looks at the origin: it projects to the image centre
    pixels, depth = cams.project(np.zeros((1, 3)))
    np.testing.assert_allclose(pixels[:, 0], (128 - 1) / 2)
    assert (depth > 0).all()
    # front view: +X is to the right and +Z is up in the image
    (px, _), (right, _) = cams.project(np.array([[0, 0, 0.0], [0.5, 0, 0.5]]))[0][0]
    assert right > px and cams.project(np.array([[0, 0, 0.5]]))[0][0, 0, 1] < (128 - 1) / 2


def test_rest_sphere_fills_sixty_percent_of_the_frame():
    cams = unit_rig(480)
    # the silhouette of the unit sphere, seen by the front camera: points where the line of
    # sight is tangent; their farthest image distance from the centre is the sphere's image radius
    d = np.linalg.norm(cams.positions[0])
    angle = np.linspace(0, 2 * np.pi, 360)
    rim_dist = np.sqrt(d * d - 1)
    rim_r, rim_y = rim_dist / d, -1 / d  # tangent circle on the sphere, towards the camera
    rim = np.stack([rim_r * np.cos(angle), np.full_like(angle, rim_y), rim_r * np.sin(angle)], axis=1)
    pixels, _ = cams.project(rim)
    radius_px = np.linalg.norm(pixels[0] - (480 - 1) / 2, axis=1).max()
    assert radius_px / (480 / 2) == pytest.approx(SPHERE_FILL, rel=1e-6)


def test_world_and_normalised_space():
    cams = make_camera_rig(np.array([1.0, 2.0, 3.0]), 2.5, 64)
    p = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(cams.to_world(cams.to_normalized(p)), p)
    np.testing.assert_allclose(cams.to_normalized([1.0, 2.0, 3.0]), 0)


def test_blender_opencv_round_trip_and_axes():
    cams = unit_rig()
    for R, t in zip(cams.R, cams.t):
        matrix = blender_from_opencv(R, t)
        R2, t2 = opencv_from_blender(matrix)
        np.testing.assert_allclose(R2, R, atol=1e-12)
        np.testing.assert_allclose(t2, t, atol=1e-12)
        # Blender cameras look down their -Z axis, with +Y up
        np.testing.assert_allclose(-matrix[:3, 2], R[2], atol=1e-12)
        np.testing.assert_allclose(matrix[:3, 1], -R[1], atol=1e-12)


def test_plucker_rays_pass_through_what_each_pixel_sees():
    cams = unit_rig(32)
    rays = cams.plucker_rays()
    assert rays.shape == (4, 32, 32, 6)
    d, m = rays[..., :3], rays[..., 3:]
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1)
    np.testing.assert_allclose(np.sum(d * m, axis=-1), 0, atol=1e-12)
    # a point along the ray of pixel (u, v) projects back onto (u, v), and satisfies X x d = m
    points = cams.positions[:, None, None] + 3.3 * d
    for view in range(4):
        pixels, _ = cams.project(points[view])
        v, u = np.mgrid[0:32, 0:32]
        np.testing.assert_allclose(pixels[view], np.stack([u, v], axis=-1), atol=1e-9)
    np.testing.assert_allclose(np.cross(points, d), m, atol=1e-12)


def test_json_round_trip_and_errors(tmp_path):
    cams = make_camera_rig(np.array([0.1, 0.2, 0.3]), 0.7, 96)
    cams.save(tmp_path / "cameras.json")
    again = CameraRig.load(tmp_path / "cameras.json")
    for name in ("K", "R", "t", "center"):
        np.testing.assert_allclose(getattr(again, name), getattr(cams, name))
    assert (again.width, again.height, again.radius) == (96, 96, 0.7)
    with pytest.raises(CameraError, match="not found"):
        CameraRig.load(tmp_path / "nope.json")
    bad = cams.to_dict()
    del bad["views"][0]["K"]
    with pytest.raises(CameraError, match="incomplete or malformed"):
        CameraRig.from_dict(bad)
    bad = cams.to_dict()
    bad["normalization"]["radius"] = -1
    with pytest.raises(CameraError, match="radius"):
        CameraRig.from_dict(bad)


def test_resized_cameras_see_the_same_points():
    cams = unit_rig(64)
    small = cams.resized(8, 8)
    points = np.random.default_rng(1).normal(0, 0.4, (10, 3))
    big_px, _ = cams.project(points)
    small_px, _ = small.project(points)
    np.testing.assert_allclose(small_px, (big_px + 0.5) * 8 / 64 - 0.5, atol=1e-12)
    assert small.plucker_rays().shape == (4, 8, 8, 6)
