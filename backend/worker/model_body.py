"""What the model is shown of a rig, and how what it draws becomes the rig's motion.

A rig is first reduced to the bones the model can animate (``joint_colours.training_body``: the
bones its training creatures have). A model trained on procedural creatures alone (the preset
``retargets``, as the embedded one) then animates that body as the training creature it is matched
to (``joint_colours.counterpart``): it draws the creature exactly as training drew it (capsule
renders and pose maps in joint order, from cameras around it), and the creature's reconstructed
motion is carried onto the body (``reconstruction.retarget``). A model trained on its cast
(``Preset.cast``, the shipped one) draws every body as a cast member, its own kinds of creature too:
on the benchmark's procedural rigs 64 of 88 read right that way against 56 drawn themselves, on
Rigify's and glTF rigs 46 of 86 (docs/quality.md). A model without a cast draws a body matching
cannot tell from one of its training creatures (``joint_colours.is_training_creature``) itself, from
the request's cameras, with the request's templates, each joint in its counterpart's colour: its
counterparts were creatures it had seen once, and drawn as those the procedural rigs lost (the robot
arm 5 of 8 against 8). A model trained on a library of rigged assets is shown every rig itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from animax_addon.core.cameras import CameraRig, make_camera_rig
from animax_addon.core.pose_maps import palette, render_pose_maps
from animax_addon.core.rig import Rig
from backend.data.joint_colours import counterpart, is_training_creature, joint_colours, training_body
from backend.data.render import appearance, render_rgb
from backend.data.rig_world import Creature
from backend.model import TINY, Preset
from backend.reconstruction.reconstruct import GENERATED, Reconstruction, reconstruct
from backend.reconstruction.retarget import retarget_motion


@dataclass(frozen=True)
class ModelBody:
    """A rig as the model is shown it.

    ``kept`` (B,) bool: the rig's bones it animates (the others hold their rest pose); ``rig``:
    those bones (the body). What the model draws: the body itself, or ``creature``, its training
    counterpart (``counterparts``: the creature's joint for each of the body's, -1 for none); in
    either case ``drawn`` is that rig, ``cameras`` the views it is drawn from and ``colours`` the
    colour each of its joints is drawn in."""

    kept: np.ndarray
    rig: Rig
    drawn: Rig
    cameras: CameraRig
    colours: np.ndarray
    creature: Creature | None = None
    counterparts: np.ndarray | None = None

    def templates(self, rgb_templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The RGB and pose-map templates (V, H, W, 3) of the drawn rig at rest: the request's RGB
        renders of the rig (``rgb_templates``), or the creature's as training renders it."""
        rest, parents = self.drawn.joints_rest[None], self.drawn.joint_parents
        if self.creature is not None:
            # the look training gives every creature of the first appearance seed
            looks, radii = appearance(self.drawn.joints_rest, parents, np.random.default_rng(0))
            rgb_templates = render_rgb(self.cameras, rest, parents, looks, radii)[:, 0]
        return rgb_templates, render_pose_maps(self.cameras, rest, parents, self.colours)[:, 0]

    def motion(self, pose_videos: np.ndarray, rotation: np.ndarray | None) -> Reconstruction:
        """The body's motion in generated pose maps (V, T, H, W, 3) of the drawn rig, as the worker
        reconstructs them (``GENERATED``); ``rotation``: the rig's upright frame (the request cameras')."""
        motion = reconstruct(self.drawn, self.cameras, pose_videos, colours=self.colours, **GENERATED)
        if self.creature is None:
            return motion
        # The body's bones low-passed once more, as the creature's were: carrying the creature's turns
        # onto bones of other lengths and rolls adds steps of its own (Rigify's and glTF rigs: jitter
        # against the truth 4.6 to 3.1, flips of the quadrupeds 1.3-1.7% to 0.2-0.4%; docs/quality.md).
        return retarget_motion(self.rig, motion, self.drawn, self.counterparts, rotation, GENERATED["rest_prior"],
                               GENERATED["rotation_smoothing"])


def model_body(rig: Rig, cameras: CameraRig, preset: Preset = TINY) -> ModelBody:
    """``rig`` as a model of ``preset`` is shown it, from the request's ``cameras`` (see ``ModelBody``)."""
    families = preset.families
    kept = training_body(rig, cameras.rotation, families)
    body = rig.subset(kept)
    # A model trained on its cast draws every rig as a cast member, its own kinds of creature too (the
    # benchmark's procedural rigs: 64 of 88 read right against 56 drawn themselves; docs/quality.md).
    if not preset.retargets or (not preset.cast and is_training_creature(body, cameras.rotation, families)):
        return ModelBody(kept, body, body, cameras, joint_colours(body, cameras.rotation, families))
    creature, counterparts = counterpart(body, cameras.rotation, families, preset.cast)
    drawn = creature.rig  # training creatures stand upright in their own space
    views = make_camera_rig(*drawn.bounding_sphere(), cameras.width)
    return ModelBody(kept, body, drawn, views, palette(drawn.num_joints), creature, counterparts)
