"""The four-view camera rig, projection, Plücker ray maps, and Blender's camera convention.

Inside the maths cameras are OpenCV pinholes (x right, y down, z forward) with world-to-camera
``[R|t]`` and intrinsics ``K``, in normalised rig space (rest bounding sphere at the origin with
radius 1, axes those of the character's upright frame: ``core.upright``). Blender's cameras look
down -Z with +Y up; the conversion lives here and only here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

AZIMUTHS_DEG = (0.0, 90.0, 180.0, 270.0)
ELEVATION_DEG = 0.0
FIELD_OF_VIEW_DEG = 39.6  # Blender's default 50 mm lens on its 36 mm sensor
SPHERE_FILL = 0.6  # the rest bounding sphere spans this fraction of the frame: room for motion

# OpenCV camera axes expressed in Blender camera axes (and back): flip y and z.
_CV_FROM_BLENDER = np.diag([1.0, -1.0, -1.0])
_ORTHONORMAL_TOLERANCE = 1e-5  # a rotation read from JSON: float32 matrices from Blender pass


class CameraError(ValueError):
    """A camera description that cannot be used."""


@dataclass(frozen=True)
class CameraRig:
    """V pinhole cameras in normalised rig space, plus the map from world space.

    ``K``, ``R``: (V, 3, 3); ``t``: (V, 3). World points ``p`` map to normalised space as
    ``rotation.T @ (p - center) / radius``: ``rotation`` (3, 3) is world from the character's
    upright frame (``core.upright``; the identity for a character standing upright on Z), so the
    cameras circle the character as it stands, whichever way it lies in the world.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int
    center: np.ndarray
    radius: float
    azimuths_deg: tuple[float, ...] = AZIMUTHS_DEG
    elevation_deg: float = ELEVATION_DEG
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def num_views(self) -> int:
        return len(self.R)

    @property
    def positions(self) -> np.ndarray:
        """(V, 3) camera centres in normalised space."""
        return -np.einsum("vji,vj->vi", self.R, self.t)

    @property
    def focal_px(self) -> float:
        return float(self.K[0, 0, 0])

    def to_normalized(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - self.center) @ self.rotation / self.radius

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.rotation.T * self.radius + self.center

    def camera_points(self, points: np.ndarray) -> np.ndarray:
        """Normalised points (..., J, 3) in each camera's frame: (V, ..., J, 3)."""
        points = np.asarray(points, dtype=np.float64)
        extra = (slice(None),) + (None,) * (points.ndim - 1)
        rotated = np.einsum("vab,...b->v...a", self.R, points)
        return rotated + self.t[extra]

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (V, ..., J, 2) and depths (V, ..., J) of normalised points (..., J, 3).

        Pixel (0, 0) is the centre of the top-left pixel.
        """
        cam = self.camera_points(points)
        depth = cam[..., 2]
        extra = (slice(None),) + (None,) * (cam.ndim - 2)
        K = self.K[extra]
        uv = cam[..., :2] / depth[..., None]
        pixels = uv * K[..., [0, 1], [0, 1]] + K[..., [0, 1], [2, 2]]
        return pixels, depth

    def resized(self, width: int, height: int) -> "CameraRig":
        """The same cameras rendering ``width`` x ``height`` images (e.g. a latent grid).

        Pixel centres map to pixel centres: x' = (x + 0.5) * width / self.width - 0.5.
        """
        scale = np.diag([width / self.width, height / self.height, 1.0])
        K = scale @ self.K
        K[:, 0, 2] += 0.5 * width / self.width - 0.5
        K[:, 1, 2] += 0.5 * height / self.height - 0.5
        return dataclasses.replace(self, K=K, width=width, height=height)

    def blender_matrices_world(self) -> np.ndarray:
        """(V, 4, 4) Blender ``matrix_world`` of each camera in world space."""
        matrices = np.array([blender_from_opencv(R, t) for R, t in zip(self.R, self.t)])
        matrices[:, :3, :3] = self.rotation @ matrices[:, :3, :3]
        matrices[:, :3, 3] = self.to_world(matrices[:, :3, 3])
        return matrices

    def plucker_rays(self) -> np.ndarray:
        """Plücker ray maps (V, H, W, 6): unit direction d and moment o x d per pixel centre."""
        v, u = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)
        dirs_cam = np.einsum("vab,hwb->vhwa", np.linalg.inv(self.K), pix)
        dirs = np.einsum("vba,vhwb->vhwa", self.R, dirs_cam)  # R^T: camera -> world
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        origins = np.broadcast_to(self.positions[:, None, None, :], dirs.shape)
        return np.concatenate([dirs, np.cross(origins, dirs)], axis=-1)

    # --- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        normalization = {"center": self.center.tolist(), "radius": self.radius}
        if not np.array_equal(self.rotation, np.eye(3)):  # written only where it is not the identity
            normalization["rotation"] = self.rotation.tolist()
        return {
            "convention": "opencv, world-to-camera in normalised rig space",
            "width": self.width,
            "height": self.height,
            "normalization": normalization,
            "elevation_deg": self.elevation_deg,
            "views": [
                {"azimuth_deg": az, "K": K.tolist(), "R": R.tolist(), "t": t.tolist()}
                for az, K, R, t in zip(self.azimuths_deg, self.K, self.R, self.t)
            ],
        }

    @classmethod
    def from_dict(cls, data) -> "CameraRig":
        try:
            views = data["views"]
            rig = cls(
                K=np.array([v["K"] for v in views], dtype=np.float64).reshape(-1, 3, 3),
                R=np.array([v["R"] for v in views], dtype=np.float64).reshape(-1, 3, 3),
                t=np.array([v["t"] for v in views], dtype=np.float64).reshape(-1, 3),
                width=int(data["width"]),
                height=int(data["height"]),
                center=np.array(data["normalization"]["center"], dtype=np.float64).reshape(3),
                radius=float(data["normalization"]["radius"]),
                azimuths_deg=tuple(float(v.get("azimuth_deg", math.nan)) for v in views),
                elevation_deg=float(data.get("elevation_deg", ELEVATION_DEG)),
                rotation=np.array(data["normalization"].get("rotation", np.eye(3)), dtype=np.float64).reshape(3, 3),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CameraError(f"camera description is incomplete or malformed ({exc!r})") from None
        arrays = (rig.K, rig.R, rig.t, rig.center, np.array(rig.radius), rig.rotation)
        if not all(np.isfinite(a).all() for a in arrays) or rig.radius <= 0:
            raise CameraError("camera description holds non-finite numbers or a radius <= 0")
        if (np.abs(rig.rotation.T @ rig.rotation - np.eye(3)).max() > _ORTHONORMAL_TOLERANCE
                or np.linalg.det(rig.rotation) <= 0):
            raise CameraError("the normalization's rotation is not a rotation matrix (orthonormal, determinant +1)")
        if rig.width <= 0 or rig.height <= 0:
            raise CameraError(f"camera image size must be positive, got {rig.width}x{rig.height}")
        return rig

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CameraRig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise CameraError(f"camera file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CameraError(f"cannot read camera file {path}: {exc}") from None


def orbit_distance(fov_deg: float = FIELD_OF_VIEW_DEG, fill: float = SPHERE_FILL) -> float:
    """Distance at which a unit sphere's silhouette spans ``fill`` of the frame's width."""
    half_silhouette = math.atan(fill * math.tan(math.radians(fov_deg) / 2))
    return 1.0 / math.sin(half_silhouette)


def look_at(position: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world-to-camera (R, t) of a camera at ``position`` looking at ``target``."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return R, -R @ np.asarray(position, float)


def make_camera_rig(
    center: np.ndarray,
    radius: float,
    size: int,
    azimuths_deg=AZIMUTHS_DEG,
    elevation_deg: float = ELEVATION_DEG,
    fov_deg: float = FIELD_OF_VIEW_DEG,
    rotation: np.ndarray | None = None,
) -> CameraRig:
    """The product's camera rig around a rest bounding sphere, square images of ``size`` pixels.

    Azimuth 0 looks from -Y towards +Y (Blender's front view); 90 looks from +X (right view), in the
    frame ``rotation`` (world from the character's upright frame; the world's axes where None).
    """
    if size <= 0:
        raise CameraError(f"image size must be positive, got {size}")
    distance = orbit_distance(fov_deg)
    focal = (size / 2) / math.tan(math.radians(fov_deg) / 2)
    K = np.array([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1.0]])
    elev = math.radians(elevation_deg)
    Rs, ts = [], []
    for az in azimuths_deg:
        a = math.radians(az)
        position = distance * np.array(
            [math.sin(a) * math.cos(elev), -math.cos(a) * math.cos(elev), math.sin(elev)]
        )
        R, t = look_at(position, np.zeros(3))
        Rs.append(R)
        ts.append(t)
    return CameraRig(
        K=np.repeat(K[None], len(Rs), axis=0),
        R=np.array(Rs),
        t=np.array(ts),
        width=size,
        height=size,
        center=np.asarray(center, dtype=np.float64),
        radius=float(radius),
        azimuths_deg=tuple(float(a) for a in azimuths_deg),
        elevation_deg=float(elevation_deg),
        rotation=np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64).reshape(3, 3),
    )


# --- Blender <-> OpenCV: the one place where the axis conventions meet ------------------------
def opencv_from_blender(matrix_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera OpenCV (R, t) from a Blender camera's ``matrix_world`` (4x4, no scale)."""
    m = np.asarray(matrix_world, dtype=np.float64)
    R = _CV_FROM_BLENDER @ m[:3, :3].T
    return R, -R @ m[:3, 3]


def blender_from_opencv(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A Blender camera's ``matrix_world`` (4x4) from world-to-camera OpenCV (R, t)."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(R, dtype=np.float64).T @ _CV_FROM_BLENDER
    m[:3, 3] = -np.asarray(R, dtype=np.float64).T @ np.asarray(t, dtype=np.float64)
    return m


def blender_lens_mm(focal_px: float, size_px: int, sensor_mm: float = 36.0) -> float:
    """The Blender lens (mm) that gives ``focal_px`` on a square image with sensor fit AUTO."""
    return focal_px * sensor_mm / size_px
