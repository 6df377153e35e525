"""One generation job: a SUBMIT message in, a RESULT / CANCELLED / ERROR message out.

``run_job`` is socket-free: the worker's compute thread calls it with a ``progress`` callback
(stage, step, total) and a ``cancelled`` predicate that it polls once per denoising step and
once per variation reconstructed.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from animax_addon.core.cameras import CameraRig
from animax_addon.core.protocol import (
    ErrorCode, Limits, Message, MessageType, ProtocolError, array_blob, blob_png, error_message, png_blob, png_size,
)
from animax_addon.core.request import Request
from animax_addon.core.rig import Rig, RigError
from backend.model import MODEL_FPS, TINY, Preset
from backend.reconstruction.kinematics import resample
from backend.reconstruction.reconstruct import Reconstruction

from .job_limits import RESULT_ARRAYS, JobInputError, check_job_size
from .model_body import ModelBody, model_body

Progress = Callable[[str, int, int], None]

# The most threads that encode a RESULT's video frames (the full preset's pose video alone is 324
# PNGs of 480 px): Pillow's encoder releases the GIL, so frames encode in parallel while the GPU is
# idle; bounded so that the workers of a machine (one a GPU) do not each start one a core.
PNG_THREADS = max(1, min(8, os.cpu_count() or 1))


def png_blobs(frames: list[np.ndarray]) -> list[bytes]:
    """``png_blob`` of each of ``frames``, in their order, encoded by up to ``PNG_THREADS`` threads."""
    if PNG_THREADS == 1 or len(frames) < 2:
        return [png_blob(frame) for frame in frames]
    with ThreadPoolExecutor(min(PNG_THREADS, len(frames)), thread_name_prefix="png") as pool:
        return list(pool.map(png_blob, frames))


def _draws_rgb(pipeline) -> bool:
    """Whether the pipeline's model generates an RGB video beside the pose video (the embedded tiny
    model does not); a pipeline given as a bare callable is taken to."""
    transformer = getattr(pipeline, "transformer", None)
    return transformer is None or transformer.config.rgb_video


def _inputs(submit: Message, preset: Preset, limits: Limits) -> tuple[Request, Rig, CameraRig, np.ndarray]:
    """The request, rig, cameras and RGB templates (V, H, W, 3) of a SUBMIT, checked against each other.

    The options' steps and frames and the cameras' image size are checked against the preset, and
    the templates' count and their PNG headers' sizes against the cameras, before any pixel is
    decoded: a request never costs more memory than the preset's own jobs, nor its cameras' images."""
    cameras = check_job_size(submit.body, preset.name, preset.size, preset.num_frames, preset.num_inference_steps,
                             limits)
    request = Request.from_message(submit)
    try:
        rig = Rig.from_dict(request.rig, max_joints=preset.max_joints)
    except RigError as exc:
        raise JobInputError(f"The rig cannot be used: {exc}.") from exc
    pngs = request.templates
    if len(pngs) != cameras.num_views:
        raise JobInputError(f"{len(pngs)} template images were sent for {cameras.num_views} camera views.")
    for i, png in enumerate(pngs):
        width, height = png_size(png)
        if (width, height) != (cameras.width, cameras.height):
            raise JobInputError(f"Template {i} is {width}x{height} pixels but the cameras "
                                f"render {cameras.width}x{cameras.height}.")
    templates = [blob_png(png, max_pixels=cameras.width * cameras.height) for png in pngs]
    return request, rig, cameras, np.stack(templates)


def scene_motion(rig: Rig, cameras: CameraRig, pose_videos: np.ndarray, scene_fps: float, body: ModelBody):
    """The generated pose maps as the Action's keys: the body's reconstruction (on the model's
    frames; ``ModelBody.motion``) and its ``scene_keys``."""
    motion = body.motion(pose_videos, cameras.rotation)
    return motion, *scene_keys(rig, motion, body.kept, scene_fps)


def scene_keys(rig: Rig, motion: Reconstruction, kept: np.ndarray, scene_fps: float) -> tuple[np.ndarray, np.ndarray]:
    """The rotations (T, B, 4) of every bone of ``rig`` (those of ``motion``, the body's ``kept``
    bones; the others at rest) and the root's translation (T, 3), at the scene's frame rate so that
    keys land on whole scene frames."""
    rotations, locations = resample(motion.rotations, motion.locations, MODEL_FPS, scene_fps)
    every = np.zeros(rotations.shape[:1] + (rig.num_bones, 4))
    every[..., 0] = 1.0
    every[:, kept] = rotations
    return every, locations[:, motion.root]


def run_job(pipeline, submit: Message, progress: Progress, cancelled: Callable[[], bool],
            preset: Preset = TINY, limits: Limits = Limits()) -> Message:
    """Run one SUBMIT to the end; never raises for user input, returns an ERROR message instead.
    ``preset``: the loaded model's, whose size, frames, steps and joints bound the job; ``limits``:
    the messages', which bound its result.

    The variations are one batch of the pipeline (one prompt and template encode, one generator a
    seed); each is then reconstructed, and the RESULT carries them all along a leading axis."""
    job = submit.job
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    try:
        request, rig, cameras, rgb_templates = _inputs(submit, preset, limits)
        if "rgb" in request.options.outputs and not _draws_rgb(pipeline):
            raise JobInputError("This worker's model draws the pose maps alone, so it has no RGB video to show: turn "
                                "off RGB Preview in the AnimaX panel, or use a worker with the full model.")
        shown = model_body(rig, cameras, preset)
        rgb_templates, pose_templates = shown.templates(rgb_templates)
    except ProtocolError as exc:
        return error_message(exc.code, exc.sentence, job)
    except ValueError as exc:  # JobInputError, and any other refusal of the inputs
        return error_message(ErrorCode.BAD_FIELD, str(exc), job)
    seconds["prepare"] = time.perf_counter() - start
    if cancelled():
        return Message(MessageType.CANCELLED, job)

    options = request.options
    total = options.steps

    def on_step(pipe, step, timestep, tensors):
        progress("denoise", step + 1, total)
        if cancelled():
            pipe._interrupt = True
        return tensors

    start = time.perf_counter()
    try:
        output = pipeline(
            prompt=request.prompt, rgb_templates=rgb_templates, pose_templates=pose_templates, cameras=shown.cameras,
            num_frames=options.frames, num_inference_steps=total, guidance_scale=options.guidance,
            generator=[torch.Generator().manual_seed(seed) for seed in options.seeds],
            decode_rgb="rgb" in options.outputs, callback_on_step_end=on_step,
        )
    except torch.cuda.OutOfMemoryError:
        return error_message(ErrorCode.OUT_OF_MEMORY, ErrorCode.OUT_OF_MEMORY.sentence, job)
    except ValueError as exc:  # check_inputs: e.g. a size that is not a multiple of the VAE's
        return error_message(ErrorCode.BAD_FIELD, f"The job cannot run: {exc}.", job)
    seconds["denoise"] = time.perf_counter() - start
    if output.interrupted or cancelled():
        return Message(MessageType.CANCELLED, job)

    count = options.variations
    progress("reconstruct", 0, count)
    start = time.perf_counter()
    motions = []
    for i, pose_videos in enumerate(output.pose_videos):
        motions.append(scene_motion(rig, cameras, pose_videos, options.fps, shown))
        progress("reconstruct", i + 1, count)
        if cancelled():
            return Message(MessageType.CANCELLED, job)
    seconds["reconstruct"] = time.perf_counter() - start

    blobs: list[bytes] = []
    arrays = {}
    per_variation = [(rotations, root_translation, motion.joints, motion.confidence, motion.reprojection_error)
                     for motion, rotations, root_translation in motions]
    for name, values in zip(RESULT_ARRAYS, zip(*per_variation), strict=True):
        spec, data = array_blob(np.stack(values).astype(np.float32))
        arrays[name] = dict(spec, blob=len(blobs))
        blobs.append(data)
    start = time.perf_counter()
    videos = {}
    sources = {"pose": output.pose_videos, "rgb": output.rgb_videos}
    for name in options.outputs:
        # variation-major, then view-major: view 0's frames, then view 1's, ...
        images = [frame for variation in sources[name] for view in variation for frame in view]
        videos[name] = list(range(len(blobs), len(blobs) + len(images)))
        blobs += png_blobs(images)
    seconds["encode"] = time.perf_counter() - start
    views, frames = output.pose_videos.shape[1:3]
    diagnostics = {"seconds": seconds, "views": int(views), "frames": int(frames),
                   "joint_names": motions[0][0].joint_names, "bone_names": rig.bone_names,
                   "drawn_as": None if shown.creature is None else shown.creature.family}
    return Message(MessageType.RESULT, job, {"variations": count, "arrays": arrays, "videos": videos,
                                             "diagnostics": diagnostics}, tuple(blobs))
