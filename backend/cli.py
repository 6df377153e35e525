"""The ``animax`` command line: the contract other tools and the tests use.

    animax pose-maps   --rig RIG.json --motion MOTION.npz --out DIR [--size 480]
    animax reconstruct --rig RIG.json --pose-maps DIR --out RESULT.npz [--smooth W]
    animax demo        [--blend IN.blend --armature NAME] --prompt TEXT --out OUT.blend [--preview OUT.mp4]
    animax dataset     ASSETS_DIR --out DIR [--frames 17] [--stride 8] [--size 64] [--min-motion 0.05] [--shard I/N]
    animax motion-bench [--rigs NAMES] [--seeds 2] [--out DIR] [--requests | --videos DIR] [--gifs]
    animax eval        [--count 12] [--split both|heldout-families|heldout-proportions|heldout-rests] [--oracle] [--out DIR]
    animax ping        ADDRESS [--server-key FILE --client-key FILE]
    animax generate    --rig RIG.json --templates DIR --prompt TEXT --out RESULT.npz [--address ...]

A user's mistake (a missing file, a wrong shape, a rig over the joint limit) ends with one
sentence on stderr and exit status 2, never a traceback. Commands import what is heavy (SciPy,
scikit-learn, torch) inside their own function, so that help and argument errors answer at once.
"""

from __future__ import annotations

import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from animax_addon.core.cameras import CameraError, CameraRig, make_camera_rig
from animax_addon.core.client import DEFAULT_ADDRESS, Client, WorkerUnavailable, result_arrays
from animax_addon.core.protocol import MessageType, ProtocolError, blob_png
from animax_addon.core.pose_maps import render_pose_maps
from animax_addon.core.request import Options, Request
from animax_addon.core.rig import Rig, RigError

from .arguments import ArgumentParser, number, output_file, output_folder, zmq_address
from .data.assets import DatasetError, add_dataset_arguments, dataset_command
from .demo import DemoError, run_demo
from .model import MODEL_FPS
from .evaluation.command import EvalError, add_eval_arguments, eval_command
from .evaluation.motion_bench import BenchError
from .evaluation.motion_bench import add_arguments as add_bench_arguments
from .evaluation.motion_bench import run as run_bench
from .demo import add_arguments as add_demo_arguments
from .reconstruction.pose_map_folder import (
    PoseMapFolderError,
    read_pose_map_folder,
    write_pose_map_folder,
)


class UsageError(ValueError):
    """A problem with what the user gave the command."""


_USER_ERRORS = (UsageError, RigError, CameraError, PoseMapFolderError, WorkerUnavailable, ProtocolError, DemoError,
                DatasetError, EvalError, BenchError)
PING_TIMEOUT_S = 4.0  # ping answers "no" within ~5 s


def load_motion(path: Path, rig: Rig) -> np.ndarray:
    """``joints`` (T, J, 3) from a motion file, checked against the rig."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder; --motion takes an .npz file with a 'joints' array")
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
    rig = Rig.load(args.rig)
    cameras, images = read_pose_map_folder(args.pose_maps)
    from .reconstruction.reconstruct import reconstruct  # SciPy and scikit-learn: ~1.5 s to import

    result = reconstruct(rig, cameras, images, smoothing=args.smooth)
    save_result(Path(args.out), result, MODEL_FPS)
    print(
        f"reconstructed {len(result.joints)} frames x {rig.num_bones} bones; mean reprojection "
        f"error {np.nanmean(result.reprojection_error):.2f} px; wrote {args.out}"
    )


def demo_command(args) -> None:
    """Animate a character headless with the add-on and a local worker (backend/demo.py)."""
    run_demo(args)


def connect(args, timeout_s: float) -> Client:
    """A client for ``args.address``, with CurveZMQ when both key files are given."""
    if (args.server_key is None) != (args.client_key is None):
        raise UsageError("CurveZMQ needs both --server-key (the server's NAME.key) and --client-key "
                         "(your NAME.key_secret)")
    try:
        return Client(args.address, timeout_s=timeout_s, server_public_key=args.server_key,
                      client_secret_file=args.client_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def ping_command(args) -> None:
    with connect(args, PING_TIMEOUT_S) as client:
        welcome = client.hello()
    preset = welcome["preset"]
    print(f"{welcome['worker']} {welcome['version']} (protocol {welcome['protocol']}) at {args.address}: "
          f"model {welcome['model']}, {preset['size']} px, {preset['frames']} frames at {preset['fps']} fps, "
          f"{preset['steps']} steps, guidance {preset['guidance']}")


TEMPLATE_NAMES = [f"view_{view}.png" for view in range(4)]


def read_templates(folder: Path) -> np.ndarray:
    """The 4 RGB template renders ``view_0.png`` .. ``view_3.png`` (square, one size): (4, S, S, 3)."""
    if not folder.is_dir():
        raise UsageError(f"template folder not found: {folder}; --templates needs a folder with "
                         f"{', '.join(TEMPLATE_NAMES)}")
    images = []
    for name in TEMPLATE_NAMES:
        path = folder / name
        if not path.is_file():
            raise UsageError(f"template {path} is missing; --templates needs {', '.join(TEMPLATE_NAMES)}")
        try:
            images.append(blob_png(path.read_bytes()))
        except ProtocolError as exc:
            raise UsageError(f"template {path}: {exc}") from None
    sizes = {image.shape[:2] for image in images}
    if len(sizes) != 1 or images[0].shape[0] != images[0].shape[1]:
        raise UsageError(f"the templates must be square and of one size, got {sorted(sizes)}")
    return np.stack(images)


def generate_command(args) -> None:
    if not args.prompt.strip():
        raise UsageError("--prompt is blank; describe the motion, e.g. --prompt 'the fox jumps forward'")
    rig = Rig.load(args.rig)
    templates = read_templates(Path(args.templates))
    cameras = rig_cameras(rig, templates.shape[1])
    with connect(args, args.timeout) as client:
        preset = client.hello()["preset"]
        chosen = {"steps": args.steps, "guidance": args.guidance, "frames": args.frames, "fps": args.fps}
        options = Options(**{key: preset[key] if value is None else value for key, value in chosen.items()},
                          seed=args.seed, outputs=("pose", "rgb") if args.rgb else ("pose",))
        job = client.submit(Request.from_images(args.prompt, rig.to_dict(), cameras.to_dict(), templates, options))
        try:
            for message in client.events(job):
                if message.type == MessageType.ACCEPTED:
                    print(f"queued at position {message.body['position']}", flush=True)
                elif message.type == MessageType.PROGRESS:
                    body = message.body
                    eta = f", about {body['eta_s']:.0f} s left" if body["eta_s"] is not None else ""
                    print(f"{body['stage']} {body['step']}/{body['total']}{eta}", flush=True)
                elif message.type == MessageType.RESULT:
                    result = message
                else:  # ERROR or CANCELLED
                    raise UsageError(message.body.get("message", "the job was cancelled"))
        except KeyboardInterrupt:
            client.cancel(job)  # free the worker for the next job
            raise
    (arrays,) = result_arrays(result)  # one variation
    diagnostics = result.body["diagnostics"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays, joint_names=np.array(diagnostics["joint_names"]),
             bone_names=np.array(diagnostics["bone_names"]), fps=np.array(float(options.fps)),
             prompt=np.array(args.prompt), drawn_as=np.array(diagnostics.get("drawn_as") or ""))
    drawn = f", moving as the model's {diagnostics['drawn_as']} does" if diagnostics.get("drawn_as") else ""
    print(f"generated {len(arrays['rotations'])} frames x {rig.num_bones} bones{drawn}; wrote {out}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="animax", description="AnimaX: text to 3D animation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pose-maps", help="draw 4-view pose-map videos of a joint motion")
    p.add_argument("--rig", required=True, help="rig file (JSON, see docs/formats.md)")
    p.add_argument("--motion", required=True, help=".npz with 'joints' (T, J, 3)")
    p.add_argument("--out", required=True, type=output_folder, help="output folder")
    p.add_argument("--size", type=int, default=480, help="image size in pixels (default 480)")
    p.set_defaults(run=pose_maps_command)

    p = sub.add_parser("reconstruct", help="bone rotations from a pose-map folder")
    p.add_argument("--rig", required=True)
    p.add_argument("--pose-maps", required=True, help="folder with cameras.json and view_*/")
    p.add_argument("--out", required=True, type=output_file, help="result .npz")
    p.add_argument("--smooth", type=number(float, minimum=0), default=0.0,
                   help="temporal smoothing weight (default 0)")
    p.set_defaults(run=reconstruct_command)

    p = sub.add_parser("demo", help="animate a character from a prompt in headless Blender, as the Animate "
                                    "button does, and render a preview video")
    add_demo_arguments(p)
    p.set_defaults(run=demo_command)

    p = sub.add_parser("dataset", help="training samples from a folder of rigged, animated assets (needs bpy)")
    add_dataset_arguments(p)
    p.set_defaults(run=dataset_command)

    p = sub.add_parser("eval", help="score the model on held-out rigs and prompts (docs/quality.md)")
    add_eval_arguments(p)
    p.set_defaults(run=eval_command)

    p = sub.add_parser("motion-bench", help="animate procedural, Rigify and glTF rigs through the Animate button in "
                                            "headless Blender and score the Actions (docs/quality.md)")
    add_bench_arguments(p)
    p.set_defaults(run=run_bench)

    def add_keys(p):
        p.add_argument("--server-key", help="CurveZMQ: the server's public key file (NAME.key)")
        p.add_argument("--client-key", help="CurveZMQ: your secret key file (NAME.key_secret)")

    p = sub.add_parser("ping", help="ask a worker or broker for its version and preset")
    p.add_argument("address", type=zmq_address, help=f"tcp://HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    add_keys(p)
    p.set_defaults(run=ping_command)

    p = sub.add_parser("generate", help="animate a rig from a prompt on a worker")
    p.add_argument("--rig", required=True, help="rig file (JSON, see docs/formats.md)")
    p.add_argument("--templates", required=True, help="folder with view_0.png .. view_3.png (RGB renders)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, type=output_file, help="result .npz (docs/formats.md)")
    p.add_argument("--address", type=zmq_address, default=DEFAULT_ADDRESS,
                   help=f"worker or broker (default {DEFAULT_ADDRESS})")
    add_keys(p)
    p.add_argument("--steps", type=number(minimum=1), help="denoising steps (default: the worker's preset)")
    p.add_argument("--seed", type=number(minimum=0), default=0)
    p.add_argument("--frames", type=number(minimum=1), help="video frames, 1 + 4k (default: the worker's preset)")
    p.add_argument("--fps", type=number(float, above=0), help="frame rate of the result (default: the model's 16)")
    p.add_argument("--guidance", type=number(float, minimum=1),
                   help="image guidance scale, 1 turns it off (default: the worker's preset)")
    p.add_argument("--rgb", action="store_true", help="also return the generated RGB videos")
    p.add_argument("--timeout", type=number(float, above=0), default=10.0,
                   help="seconds to wait for the worker (default 10)")
    p.set_defaults(run=generate_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a mistake argparse found: its status, like any other
        return exc.code
    start = time.perf_counter()
    try:
        args.run(args)
    except _USER_ERRORS as exc:
        print(f"animax {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an output folder that cannot be written
        print(f"animax {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"animax {args.command}: interrupted", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
