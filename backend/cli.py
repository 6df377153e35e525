"""The ``animax`` command line: the contract other tools and the tests use.

    animax pose-maps   --rig RIG.json --motion MOTION.npz --out DIR [--size 480]
    animax reconstruct --rig RIG.json --pose-maps DIR --out RESULT.npz [--smooth W]
    animax demo        [--out DIR]

A user's mistake (a missing file, a wrong shape, a rig over the joint limit) ends with one
sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from animax_addon.core.cameras import CameraError, CameraRig, make_camera_rig
from animax_addon.core.pose_maps import render_pose_maps
from animax_addon.core.rig import Rig, RigError

from .reconstruction.pose_map_folder import (
    PoseMapFolderError,
    read_pose_map_folder,
    write_pose_map_folder,
)
from .reconstruction.reconstruct import reconstruct

MODEL_FPS = 16
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class UsageError(ValueError):
    """A problem with what the user gave the command."""


_USER_ERRORS = (UsageError, RigError, CameraError, PoseMapFolderError)


def load_motion(path: Path, rig: Rig) -> np.ndarray:
    """``joints`` (T, J, 3) from a motion file, checked against the rig."""
    if not path.is_file():
        raise UsageError(f"motion file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable .npz motion file ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UsageError(f"{path} holds a single array; write an .npz with a 'joints' array")
    with data:
        if "joints" not in data.files:
            raise UsageError(f"{path} has no 'joints' array (it has: {', '.join(data.files) or 'nothing'})")
        try:
            joints = np.asarray(data["joints"], dtype=np.float64)
        except (zipfile.BadZipFile, OSError, ValueError, TypeError) as exc:
            raise UsageError(f"'joints' in {path} is not a numeric array ({exc})") from None
    expected = f"(T, {rig.num_joints}, 3)"
    if joints.ndim != 3 or joints.shape[1:] != (rig.num_joints, 3) or len(joints) == 0:
        raise UsageError(f"'joints' in {path} has shape {joints.shape}; the rig needs {expected}")
    if not np.isfinite(joints).all():
        raise UsageError(f"'joints' in {path} holds NaN or infinite values")
    return joints


def rig_cameras(rig: Rig, size: int) -> CameraRig:
    center, radius = rig.bounding_sphere()
    return make_camera_rig(center, radius, size)


def pose_maps_command(args) -> None:
    if args.size < 16:
        raise UsageError(f"--size must be at least 16 pixels, got {args.size}")
    rig = Rig.load(args.rig)
    joints = load_motion(Path(args.motion), rig)
    cameras = rig_cameras(rig, args.size)
    write_pose_map_folder(args.out, cameras, render_pose_maps(cameras, joints, rig.joint_parents))
    print(f"wrote {cameras.num_views} views x {len(joints)} frames to {args.out}")


def save_result(path: Path, result, fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        joints=result.joints,
        rotations=result.rotations,
        root_translation=result.root_translation,
        locations=result.locations,
        confidence=result.confidence,
        reprojection_error=result.reprojection_error,
        joint_names=np.array(result.joint_names),
        bone_names=np.array(result.bone_names),
        fps=np.array(fps),
    )


def reconstruct_command(args) -> None:
    if args.smooth < 0:
        raise UsageError(f"--smooth must be >= 0, got {args.smooth}")
    rig = Rig.load(args.rig)
    cameras, images = read_pose_map_folder(args.pose_maps)
    result = reconstruct(rig, cameras, images, smoothing=args.smooth)
    save_result(Path(args.out), result, MODEL_FPS)
    print(
        f"reconstructed {len(result.joints)} frames x {rig.num_bones} bones; mean reprojection "
        f"error {np.nanmean(result.reprojection_error):.2f} px; wrote {args.out}"
    )


def demo_command(args) -> None:
    """Pose maps of a shipped example motion, reconstructed and compared with the truth."""
    from .demo import run_demo

    run_demo(EXAMPLES / "fox.rig.json", EXAMPLES / "fox_trot.npz", Path(args.out), args.size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animax", description="AnimaX: text to 3D animation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pose-maps", help="draw 4-view pose-map videos of a joint motion")
    p.add_argument("--rig", required=True, help="rig file (JSON, see docs/formats.md)")
    p.add_argument("--motion", required=True, help=".npz with 'joints' (T, J, 3)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=480, help="image size in pixels (default 480)")
    p.set_defaults(run=pose_maps_command)

    p = sub.add_parser("reconstruct", help="bone rotations from a pose-map folder")
    p.add_argument("--rig", required=True)
    p.add_argument("--pose-maps", required=True, help="folder with cameras.json and view_*/")
    p.add_argument("--out", required=True, help="result .npz")
    p.add_argument("--smooth", type=float, default=0.0, help="temporal smoothing weight (default 0)")
    p.set_defaults(run=reconstruct_command)

    p = sub.add_parser("demo", help="run the reconstruction on a shipped example and score it")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--size", type=int, default=480)
    p.set_defaults(run=demo_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        args.run(args)
    except _USER_ERRORS as exc:
        print(f"animax {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an output folder that cannot be written
        print(f"animax {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
