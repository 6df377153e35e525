"""The largest job a worker of a preset takes: steps, frames, camera image size, variations, and a
RESULT that one message carries (its blob count, and each blob's worst-case size).

One check, ``check_job_size``, called by the broker when a SUBMIT arrives (against the preset of
its workers' READY) and by the worker before it decodes anything (against its own preset), so that
both refuse the same jobs with the same sentence. Torch-free: the broker imports it.
"""

from __future__ import annotations

from animax_addon.core.cameras import CameraError, CameraRig
from animax_addon.core.protocol import Limits
from backend.model import MODEL_FPS

# The most denoising steps a job may ask for, as a multiple of the preset's default. A sampler's
# result settles by its default count (the paper's 50 Euler steps at full size, the tiny model's
# 20, --fast's 10 UniPC steps: docs/benchmarks.md), so more steps buy little while each holds the
# worker from every other client; four times the default leaves room to trade time for quality.
STEPS_PER_DEFAULT = 4

# The most denoising work a job may ask for, in runs of the preset's default steps: its variations
# are one batch, so each of its steps costs as many videos. Eight, the panel's most variations at
# the default steps, or fewer at more steps: a job holds the worker from every other client.
RUNS_PER_JOB = 8

# The arrays of a RESULT, each one blob with a leading variation axis; its videos add one PNG blob
# per variation per view per frame per output.
RESULT_ARRAYS = ("rotations", "root_translation", "joints", "confidence", "reprojection_error")


class JobInputError(ValueError):
    """The user's rig, cameras or templates cannot be used; the text is a sentence for them."""


def max_steps(default_steps: int) -> int:
    """The most denoising steps a job may ask of a worker whose preset's default is ``default_steps``."""
    return STEPS_PER_DEFAULT * default_steps


def max_work(default_steps: int) -> int:
    """The most steps times variations a job may ask of a worker whose preset's default is ``default_steps``."""
    return RUNS_PER_JOB * default_steps


def result_blobs(views: int, frames: int, outputs, variations: int = 1) -> int:
    """The blobs of the RESULT of a job of ``views`` cameras, ``frames`` frames, videos ``outputs``
    and ``variations`` seeds."""
    return len(RESULT_ARRAYS) + variations * views * frames * len(outputs)


def png_bytes_most(width: int, height: int) -> int:
    """More bytes than the PNG of any ``width`` x ``height`` RGB image takes, noise included: its
    rows with a filter byte each, twice zlib's bound for data it cannot compress (about 1 byte in
    3,300) and PNG's chunk headers (12 bytes in 64 KiB), and 1 KiB for the file's own chunks."""
    raw = height * (3 * width + 1)
    return raw + raw // 1024 + 1024


def result_blob_bytes_most(frames: int, fps: float, bones: int, width: int, height: int,
                           variations: int = 1) -> dict[str, float]:
    """The most bytes each kind of blob of a RESULT may take (float32 arrays of all ``variations``,
    RGB PNGs), for a job of ``frames`` model frames resampled to ``fps``, a rig of ``bones`` bones
    and video frames of ``width`` x ``height``."""
    scene = (frames - 1) * fps / MODEL_FPS + 1  # at most this many scene frames (kinematics.resample)
    joints = 2 * bones  # each bone's head and a leaf's tail at most
    arrays = {"rotations": scene * bones * 4 * 4, "root_translation": scene * 3 * 4,
              "joints": frames * joints * 3 * 4, "confidence": frames * joints * 4,
              "reprojection_error": frames * joints * 4}
    return {**{name: variations * most for name, most in arrays.items()}, "video frames": png_bytes_most(width, height)}


def check_job_size(body: dict, model: str, size: int, frames: int, default_steps: int,
                   limits: Limits = Limits()) -> CameraRig:
    """The cameras of the SUBMIT ``body``, once its steps, frames, variations and camera image size
    are within what a worker of the preset ``model`` takes (``size`` px a view, ``frames`` frames,
    ``default_steps`` steps by default; steps times variations within ``max_work``) and its
    RESULT fits a message of ``limits``; otherwise a ``JobInputError`` naming the limit.

    Smaller cameras than the preset's are allowed: they cost less, and tests and benchmarks use them.
    The views are bounded by the result alone (the full preset's 81 frames of pose and RGB video
    leave room for 6), and each of its blobs at its worst (a PNG of noise) by the largest frame a
    socket takes (ZMQ_MAXMSGSIZE): checked at admission, a job past them never runs to be refused
    at its end. The message's total is not bounded by the worst case, which real videos are far
    from (the full preset's pose and RGB PNGs of noise would take 450 MB)."""
    options, model = body["options"], f"the {model} model"
    if options["steps"] > max_steps(default_steps):
        raise JobInputError(f"{options['steps']} denoising steps were asked for, but {model}'s worker runs at "
                            f"most {max_steps(default_steps)} ({STEPS_PER_DEFAULT} times its default of "
                            f"{default_steps}); ask for fewer steps.")
    steps, variations = options["steps"], options["variations"]
    if steps * variations > max_work(default_steps):
        raise JobInputError(f"{variations} variations of {steps} denoising steps were asked for, but {model}'s "
                            f"worker runs at most {max_work(default_steps)} steps times variations a job "
                            f"({RUNS_PER_JOB} times its default of {default_steps} steps); ask for fewer "
                            "variations or steps.")
    if options["frames"] > frames:
        raise JobInputError(f"{options['frames']} frames were asked for, but {model} makes at most "
                            f"{frames}; ask for fewer frames.")
    try:
        cameras = CameraRig.from_dict(body["cameras"])
    except CameraError as exc:
        raise JobInputError(f"The cameras cannot be used: {exc}.") from exc
    if cameras.width != cameras.height:
        raise JobInputError(f"The cameras must render square images, got {cameras.width}x{cameras.height}.")
    if cameras.width > size:
        raise JobInputError(f"The cameras render {cameras.width}x{cameras.height} images, but {model} works "
                            f"at {size}x{size} at most; render the templates at {size} px.")
    outputs, most = options["outputs"], limits.max_frames - 1  # blobs: all frames but the header
    if result_blobs(cameras.num_views, options["frames"], outputs, variations) > most:
        several = f"{variations} variations x " if variations > 1 else ""
        fewer = ("fewer variations, views or frames" if variations > 1 else "fewer views or frames") \
            + (", or for one of the videos" if len(outputs) > 1 else "")
        raise JobInputError(f"{several}{cameras.num_views} views x {options['frames']} frames of "
                            f"{' and '.join(outputs)} video are "
                            f"{variations * cameras.num_views * options['frames'] * len(outputs)} images, more than "
                            f"a result carries ({most - len(RESULT_ARRAYS)}); ask for {fewer}.")
    bones = body["rig"].get("bones")  # not yet checked: a rig without a list of bones is refused later
    bones = len(bones) if isinstance(bones, list) else 0
    for blob, size_most in result_blob_bytes_most(options["frames"], options["fps"], bones, cameras.width,
                                                  cameras.height, variations).items():
        if size_most > limits.max_frame_bytes:
            several = f"{variations} variations of " if variations > 1 else ""
            fewer = ("render smaller templates" if blob == "video frames" else
                     ("ask for fewer variations or " if variations > 1 else "ask for ")
                     + "a lower frame rate, or animate fewer bones")
            raise JobInputError(f"The result's {blob} could take {int(size_most)} bytes ({several}{options['frames']} "
                                f"frames at {options['fps']:g} fps, {bones} bones, {cameras.width} px views), more "
                                f"than one message frame carries ({limits.max_frame_bytes}); {fewer}.")
    return cameras
