"""The character's own upright frame: which way its rest pose has up and front.

The model knows characters standing upright on Blender's +Z and facing -Y (the front view), and
the cameras look at elevation 0 from four azimuths about the frame they are given. Three frames
meet here: the world (the scene), the armature object's own axes (``world = C @ armature``, ``C``
the rotation of its ``matrix_world``) and the character's upright frame (``world = U @ upright``),
in which the cameras are placed, so that the templates show the character standing.

What can be measured is the legs: on every legged rig of the benchmark (procedural bipeds,
quadrupeds and birds, the six Rigify metarigs with legs, their glTF round trips) the leg bones
(thigh, shin, calf, leg ...) point within 22 degrees of straight down, and the foot and toe bones
point forward (-Y). So:

- no legs (snakes, lamps, chests, laptops, robot arms): the object's own axes (``U = C``), as
  they were modelled; a rig rotated as a whole is seen as before its rotation;
- legs within ``UPRIGHT_DEG`` of down in armature space: the object's axes too, turned about Z
  by quarter turns so the feet point to -Y where they clearly point elsewhere;
- legs along another axis (within ``AXIS_DEG``): the quarter turn that stands the rest pose up
  (and faces it -Y), so a rig imported with Y up and stood up by its object's rotation (FBX)
  works as one modelled with Z up. Where the result does not stand in the scene either, the rest
  pose lies down in the scene and in its own data: it is animated standing in its own frame, and
  ``UprightFrame.warning`` says so and what to do;
- legs neither down nor along an axis: the object's axes, and a warning, unless the scene shows
  the legs pointing down (then the world's axes).

bpy-free: the add-on computes it from the armature's bones and the object's rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .skeleton import name_words, named_group

LEG_WORDS = frozenset({"thigh", "thighs", "shin", "shins", "calf", "leg", "legs", "upleg", "lowerleg",
                       "upperleg", "foreleg", "hindleg", "tibia", "shank"})
"""Word parts that name a leg bone (``thigh.L``, ``mixamorig:LeftUpLeg``, ``calf_l``, ``lower_leg.R``);
not the femur (an insect's reaches up and out) nor the knee (often a short helper)."""

FOOT_WORDS = frozenset({"foot", "feet", "toe", "toes", "hoof", "paw"})
"""Word parts that name a foot bone, whose head-to-tail direction points forward."""

UPRIGHT_DEG = 60.0
"""Legs within this of straight down stand (a seated or crouching rest pose does; the benchmark's
rigs are within 22)."""

AXIS_DEG = 30.0
"""Legs within this of another axis: the rest pose lies along it, and a quarter turn stands it up."""

COHERENCE = 0.5
"""The leg (foot) bones' summed direction must be at least this fraction of their summed lengths,
or they tell no direction (legs splayed all around)."""

SCENE_UPRIGHT_DEG = 45.0
"""An upright frame whose up is within this of the world's +Z stands in the scene."""

_AXES = np.vstack([np.eye(3), -np.eye(3)])
_AXIS_NAMES = ("+X", "+Y", "+Z", "-X", "-Y", "-Z")
_DOWN, _FRONT = np.array([0.0, 0.0, -1.0]), np.array([0.0, -1.0, 0.0])


@dataclass(frozen=True)
class UprightFrame:
    """``rotation``: (3, 3) world from upright (its columns are the character's right, back and up
    axes in the world); ``turn``: (3, 3) upright from armature axes (``rotation = C @ turn.T``),
    quarter turns except where the scene's axes were taken; ``evidence``: what decided it ("none",
    "legs", "legs and feet"); ``warning``: a sentence for the user where the rest pose is upright
    neither in its own data nor in the scene, else None."""

    rotation: np.ndarray
    turn: np.ndarray
    evidence: str
    warning: str | None = None


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _direction(vectors: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The unit direction of the summed vectors (None where they cancel, see ``COHERENCE``)."""
    if not len(vectors):
        return None, 0.0
    total = np.linalg.norm(vectors, axis=1).sum()
    summed = vectors.sum(axis=0)
    length = float(np.linalg.norm(summed))
    if total <= 0 or length < COHERENCE * total:
        return None, float(total)
    return summed / length, float(total)


def body_directions(names, heads, tails, deform) -> tuple[np.ndarray | None, np.ndarray]:
    """The legs' direction (unit, armature axes; None where the rig has no legs that agree) and
    the feet's summed head-to-tail vector, from bone names and rest ends.

    The deform bones are read (all bones where none deforms), leaving out mechanism and twist
    bones (``core.skeleton``'s groups), whose directions follow no body part.
    """
    heads, tails = np.asarray(heads, np.float64).reshape(-1, 3), np.asarray(tails, np.float64).reshape(-1, 3)
    deform = np.asarray(deform, dtype=bool)
    body = deform if deform.any() else np.ones(len(names), dtype=bool)
    words = [name_words(name) if keep and named_group(name) not in (0, 1) else set()
             for name, keep in zip(names, body)]
    feet = np.array([bool(w & FOOT_WORDS) for w in words], dtype=bool)
    legs = np.array([bool(w & LEG_WORDS) for w in words], dtype=bool) & ~feet
    down, _ = _direction((tails - heads)[legs])
    return down, (tails - heads)[feet].reshape(-1, 3)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _quarter_turn(a: np.ndarray, b: np.ndarray, half_turn_axis: np.ndarray) -> np.ndarray:
    """The signed permutation turning axis ``a`` onto axis ``b`` by the shortest arc (half a turn
    about ``half_turn_axis`` where they are opposite)."""
    cos = float(a @ b)
    if cos > 0.5:
        return np.eye(3)
    turn = _rotation(half_turn_axis, math.pi) if cos < -0.5 else _rotation(np.cross(a, b), math.pi / 2)
    return np.rint(turn)


def _nearest_axis(direction: np.ndarray) -> int:
    return int(np.argmax(_AXES @ direction))


def upright_turn(down: np.ndarray, feet: np.ndarray) -> np.ndarray | None:
    """The quarter turns (3, 3), upright from armature axes, that stand a rest pose whose legs
    point ``down`` and whose feet sum to ``feet`` (K, 3) upright facing -Y; None where the legs
    are neither down nor along an axis."""
    if _angle_deg(down, _DOWN) <= UPRIGHT_DEG:
        stand = np.eye(3)
    else:
        axis = _AXES[_nearest_axis(down)]
        if _angle_deg(down, axis) > AXIS_DEG:
            return None
        # legs pointing up: half a turn about Y keeps a -Y front in front
        stand = _quarter_turn(axis, _DOWN, np.array([0.0, 1.0, 0.0]))
    # Facing: the feet's summed direction, flattened, where the feet agree on one
    flat = (feet @ stand.T) * np.array([1.0, 1.0, 0.0])
    front, _ = _direction(flat)
    if front is None:
        return stand
    face = _quarter_turn(_AXES[_nearest_axis(front)], _FRONT, np.array([0.0, 0.0, 1.0]))
    return face @ stand


def _axis_text(direction: np.ndarray) -> str:
    """"+Y" for a direction within ``AXIS_DEG`` of an axis, else its rounded components."""
    i = _nearest_axis(direction)
    if _angle_deg(direction, _AXES[i]) <= AXIS_DEG:
        return _AXIS_NAMES[i]
    return "(" + ", ".join(f"{v:.2f}" for v in direction / np.linalg.norm(direction)) + ")"


def _posture(rotation: np.ndarray) -> str:
    """How a character whose upright frame is ``rotation`` (world from upright) lies in the scene."""
    up, front = rotation[:, 2], -rotation[:, 1]
    tilt = math.cos(math.radians(SCENE_UPRIGHT_DEG))
    if up[2] < -tilt:
        return "stands on its head"
    if front[2] > tilt:
        return "lies on its back"
    if front[2] < -tilt:
        return "lies face down"
    return "lies on its side"


def _euler_xyz_deg(rotation: np.ndarray) -> np.ndarray:
    """Blender's XYZ Euler angles (degrees) of a rotation matrix (``Rz @ Ry @ Rx``)."""
    y = math.asin(min(1.0, max(-1.0, -rotation[2, 0])))
    if abs(rotation[2, 0]) < 1 - 1e-9:
        x = math.atan2(rotation[2, 1], rotation[2, 2])
        z = math.atan2(rotation[1, 0], rotation[0, 0])
    else:  # gimbal lock: Z taken as 0
        x, z = math.atan2(-rotation[1, 2], rotation[1, 1]), 0.0
    return np.degrees([x, y, z]) + 0.0  # no "-0"


def stand_up_rotation(rotation: np.ndarray, object_rotation: np.ndarray) -> str:
    """What to do to stand up a character whose upright frame is ``rotation`` (world from upright)
    by turning its object (world rotation ``object_rotation``): the shortest turn of its up onto
    +Z (half a turn about its right axis where it points down), e.g. "90° about the scene's X
    axis (to the rotation X 90°, Y 0°, Z 0°)"."""
    up = rotation[:, 2] / np.linalg.norm(rotation[:, 2])
    angle = _angle_deg(up, np.array([0.0, 0.0, 1.0]))
    axis = np.cross(up, [0.0, 0.0, 1.0])
    axis = rotation[:, 0] if np.linalg.norm(axis) < 1e-6 else axis / np.linalg.norm(axis)
    target = _rotation(axis, math.radians(angle)) @ object_rotation
    i = _nearest_axis(axis)
    if _angle_deg(axis, _AXES[i]) <= 2.0:
        about = f"{(1 if i < 3 else -1) * angle:.0f}° about the scene's {'XYZ'[i % 3]} axis"
    else:
        about = f"{angle:.0f}° about the axis ({', '.join(f'{v:.2f}' for v in axis)})"
    x, y, z = np.round(_euler_xyz_deg(target)) + 0.0
    return f"{about} (to the rotation X {x:.0f}°, Y {y:.0f}°, Z {z:.0f}°)"


def upright_frame(names, heads, tails, deform, object_rotation, name: str = "the armature") -> UprightFrame:
    """The frame the cameras are placed in (see the module doc): from the bones' names and rest
    ends in armature space and the object's rotation ``C`` (3, 3; world from armature)."""
    C = np.asarray(object_rotation, dtype=np.float64)
    down, feet = body_directions(names, heads, tails, deform)
    if down is None:
        return UprightFrame(C, np.eye(3), "none")
    evidence = "legs and feet" if len(feet) else "legs"
    turn = upright_turn(down, feet)
    scene_down = C @ down
    if turn is None:  # tilted in its own data: the scene's axes where they show it standing
        if _angle_deg(scene_down, _DOWN) <= UPRIGHT_DEG:
            return UprightFrame(np.eye(3), C, evidence)
        away = _angle_deg(scene_down, _DOWN)
        warning = (f"'{name}' is not upright: its legs point {away:.0f}° away from straight down "
                   f"(along {_axis_text(scene_down)}); AnimaX's model knows characters standing "
                   "upright, so its templates would show it tilted. Turn the armature object (with its "
                   "mesh) until the character stands upright before animating it")
        return UprightFrame(C, np.eye(3), evidence, warning)
    rotation = C @ turn.T
    stood_up = not np.allclose(turn[:, 2], [0.0, 0.0, 1.0])  # the quarter turns changed which way is up
    if not stood_up or _angle_deg(rotation[:, 2], np.array([0.0, 0.0, 1.0])) <= SCENE_UPRIGHT_DEG:
        return UprightFrame(rotation, turn, evidence)
    warning = (f"'{name}' {_posture(rotation)} in its rest pose and in the scene (its legs point along "
               f"{_axis_text(scene_down)}); AnimaX's model knows characters standing upright, so it "
               "animates it in its own upright frame and it will move lying down. To animate it "
               f"standing, turn the armature object (with its mesh) {stand_up_rotation(rotation, C)} "
               "before animating it")
    return UprightFrame(rotation, turn, evidence, warning)

