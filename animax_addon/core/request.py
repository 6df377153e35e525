"""A generation request as one typed object: the body of a SUBMIT and its template PNGs.

bpy-free. The add-on, the ``animax`` command and the benchmarks build a ``Request`` and the client
sends it (``to_message``); the worker reads it (``from_message``) from a SUBMIT that
``protocol.decode`` has checked against the schema. The wire format is docs/protocol.md's ``submit``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from .protocol import Message, MessageType, png_blob


@dataclass(frozen=True)
class Options:
    """How to generate: denoising steps, image-guidance scale, seed, frames the model makes, the
    frame rate the keys are resampled to (the scene's), the videos sent back and the number of
    variations (seeds ``seed``, ``seed + 1``, ...; one batch, so the templates are encoded once)."""

    steps: int
    guidance: float
    seed: int
    frames: int
    fps: float
    outputs: tuple[str, ...] = ("pose",)
    variations: int = 1

    def to_dict(self) -> dict:
        return dict(asdict(self), outputs=list(self.outputs))

    @classmethod
    def from_dict(cls, options: dict) -> "Options":
        return cls(steps=options["steps"], guidance=float(options["guidance"]), seed=options["seed"],
                   frames=options["frames"], fps=float(options["fps"]), outputs=tuple(options["outputs"]),
                   variations=options["variations"])

    @property
    def seeds(self) -> list[int]:
        """Each variation's seed."""
        return [self.seed + i for i in range(self.variations)]


@dataclass(frozen=True)
class Request:
    """The prompt, the rig (rig JSON, docs/formats.md), the cameras (cameras.json form), the
    options and one template PNG a view, in the cameras' order."""

    prompt: str
    rig: dict
    cameras: dict
    options: Options
    templates: tuple[bytes, ...]

    @classmethod
    def from_images(cls, prompt: str, rig: dict, cameras: dict, images: Iterable[np.ndarray],
                    options: Options) -> "Request":
        """With the templates as (H, W, 3) uint8 images."""
        return cls(prompt, rig, cameras, options, tuple(png_blob(image) for image in images))

    def to_message(self, job: str) -> Message:
        body = {"prompt": self.prompt, "rig": self.rig, "cameras": self.cameras, "options": self.options.to_dict(),
                "templates": list(range(len(self.templates)))}
        return Message(MessageType.SUBMIT, job, body, self.templates)

    @classmethod
    def from_message(cls, message: Message) -> "Request":
        """The request of a SUBMIT; its templates stay PNG bytes, decoded only once checked."""
        body = message.body
        return cls(body["prompt"], body["rig"], body["cameras"], Options.from_dict(body["options"]),
                   tuple(message.blobs[i] for i in body["templates"]))
