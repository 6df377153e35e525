"""Labelled motions of procedural creatures, their text prompts, and whole training clips.

A motion is a function ``(creature, rng, frames, fps) -> (rotations (T, B, 4) wxyz, locations
(T, B, 3))`` in Blender's pose-bone convention. Rotations are about bone-local axes, chosen from a
direction in rest space ("swing this leg's toe forward", "lift this lid up") so that one motion
works on every proportion and bone roll. Amplitude, speed and phase are random.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from animax_addon.core.rig import Rig, axis_angle_matrices
from backend.data.rig_world import FAMILIES, TRAIN_FAMILIES, Creature
from backend.model import MODEL_FPS
from backend.reconstruction.kinematics import forward_kinematics

FPS = MODEL_FPS
_X, _Z = np.eye(3)[0], np.eye(3)[2]
_FORWARD = np.array([0.0, -1.0, 0.0])
_FORWARD_DOWN = np.array([0.0, -1.0, -1.0]) / np.sqrt(2)


# --- quaternion and axis helpers ---------------------------------------------------------------
def _multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def _direction(rig: Rig, names: list[str]) -> np.ndarray:
    """Unit rest direction from the head of the first bone to the tail of the last."""
    d = rig.tails[rig.bone_index[names[-1]]] - rig.heads[rig.bone_index[names[0]]]
    return d / np.linalg.norm(d)


def _toward(rig: Rig, names: list[str], target: np.ndarray) -> np.ndarray:
    """Rest-space axis about which positive angles turn the chain's tip toward ``target``."""
    axis = np.cross(_direction(rig, names), target)
    norm = np.linalg.norm(axis)
    return axis / norm if norm > 1e-3 else _X  # chain already points there: any hinge will do


def _turn(rotations: np.ndarray, rig: Rig, name: str, axis: np.ndarray, angles: np.ndarray) -> None:
    """Compose a rotation by ``angles`` (T,) about rest-space ``axis`` into a bone's pose."""
    b = rig.bone_index[name]
    local = np.linalg.solve(rig.rest_matrices[b, :3, :3], axis)  # rest matrices may be non-orthogonal
    local /= np.linalg.norm(local)
    q = np.concatenate([np.cos(angles / 2)[:, None], np.sin(angles / 2)[:, None] * local], axis=1)
    rotations[:, b] = _multiply(q, rotations[:, b])


def _move_root(locations: np.ndarray, creature: Creature, offsets: np.ndarray) -> None:
    """Add armature-space offsets (T, 3) to the root bone (its location lives in its rest frame)."""
    rig, b = creature.rig, creature.rig.bone_index[creature.roles["root"][0]]
    locations[:, b] += np.linalg.solve(rig.rest_matrices[b, :3, :3], offsets.T).T


# --- timing ----------------------------------------------------------------------------------
def _start(creature: Creature, frames: int) -> tuple[np.ndarray, np.ndarray]:
    rotations = np.zeros((frames, creature.rig.num_bones, 4))
    rotations[..., 0] = 1.0
    return rotations, np.zeros((frames, creature.rig.num_bones, 3))


def _cycle(rng, frames: int, fps: float, low: float, high: float) -> np.ndarray:
    """Phase (T,) of an oscillation of random frequency (Hz) and phase."""
    return 2 * np.pi * rng.uniform(low, high) * np.arange(frames) / fps + rng.uniform(0, 2 * np.pi)


def _window(rng, frames: int) -> np.ndarray:
    """0 -> 1 over a random window of the clip: when a one-off action starts and ends."""
    s = np.arange(frames) / max(frames - 1, 1)
    start, end = rng.uniform(0.0, 0.25), rng.uniform(0.75, 1.0)
    return np.clip((s - start) / (end - start), 0.0, 1.0)


def _ease(rng, frames: int) -> np.ndarray:
    u = _window(rng, frames)
    return u * u * (3 - 2 * u)


def _bump(rng, frames: int) -> np.ndarray:
    """0 -> 1 -> 0: go there and come back."""
    return np.sin(np.pi * _window(rng, frames)) ** 2


# --- legs ------------------------------------------------------------------------------------
def _legs(creature: Creature) -> list[tuple[list[str], float]]:
    """Leg chains with their gait phase: sides alternate, and so do neighbours along the body."""
    rig = creature.rig
    chains = [chain for role, chain in creature.roles.items() if role.startswith("leg_")]
    hips = np.array([rig.heads[rig.bone_index[c[0]]] for c in chains])
    legs = []
    for chain, (x, y, _) in zip(chains, hips):
        rank = np.sum((np.sign(hips[:, 0]) == np.sign(x)) & (hips[:, 1] < y))  # legs in front
        legs.append((chain, np.pi * ((x < 0) + rank)))
    return legs


def _plant(creature: Creature, rotations: np.ndarray, locations: np.ndarray) -> None:
    """Raise or lower the root so that the lowest foot stays on the ground it stood on."""
    rig = creature.rig
    feet = [rig.joint_names.index(f"{chain[-1]}.tail") for chain, _ in _legs(creature)]
    _, joints = forward_kinematics(rig, rotations, locations)
    drop = rig.joints_rest[feet, 2].min() - joints[:, feet, 2].min(axis=1)
    _move_root(locations, creature, drop[:, None] * _Z)


# --- the motions -------------------------------------------------------------------------------
def walk(creature, rng, frames, fps=FPS):
    rotations, locations = _start(creature, frames)
    rig, phase = creature.rig, _cycle(rng, frames, fps, 0.8, 1.6)
    swing, knee = rng.uniform(0.3, 0.55), rng.uniform(0.3, 0.7)
    for chain, offset in _legs(creature):
        axis = _toward(rig, chain, _FORWARD)
        _turn(rotations, rig, chain[0], axis, swing * np.sin(phase + offset))
        _turn(rotations, rig, chain[1], axis, -knee * np.clip(np.cos(phase + offset), 0, None))
    _plant(creature, rotations, locations)
    return rotations, locations


def jump(creature, rng, frames, fps=FPS):
    rotations, locations = _start(creature, frames)
    height = rng.uniform(0.15, 0.35) * creature.rig.bounding_sphere()[1]
    s = np.arange(frames) / max(frames - 1, 1)
    u = (s - rng.uniform(0.0, 0.25)) / rng.uniform(0.5, 0.75)
    _move_root(locations, creature, (height * np.where((u > 0) & (u < 1), 4 * u * (1 - u), 0))[:, None] * _Z)
    return rotations, locations


def _waving_chain(creature, rng) -> list[str]:
    for pair in (("arm_left", "arm_right"), ("wing_left", "wing_right")):
        if pair[0] in creature.roles:
            return creature.roles[pair[int(rng.integers(2))]]
    return creature.roles["arm"][-2:]


def wave(creature, rng, frames, fps=FPS):
    rotations, locations = _start(creature, frames)
    rig, chain = creature.rig, _waving_chain(creature, rng)
    raised = rng.uniform(1.8, 2.6) if "arm_left" in creature.roles else rng.uniform(0.3, 0.8)
    ease = _ease(rng, frames)
    _turn(rotations, rig, chain[0], _toward(rig, chain, _Z), raised * ease)
    side = ease * rng.uniform(0.3, 0.6) * np.sin(_cycle(rng, frames, fps, 1.5, 3.0))
    for name in chain[1:]:  # side to side in the frontal plane
        _turn(rotations, rig, name, np.array([0.0, 1.0, 0.0]), side)
    return rotations, locations


def spin(creature, rng, frames, fps=FPS):
    """Turn about the vertical through the rig's centre, not about the root's head."""
    rotations, locations = _start(creature, frames)
    rig, root = creature.rig, creature.roles["root"][0]
    angles = rng.choice([-1, 1]) * rng.uniform(np.pi / 2, 2 * np.pi) * _ease(rng, frames)
    _turn(rotations, rig, root, _Z, angles)
    centre = rig.bounding_sphere()[0] - rig.heads[rig.bone_index[root]]
    centre[2] = 0.0
    turned = axis_angle_matrices(np.broadcast_to(_Z, (frames, 3)), angles) @ centre
    _move_root(locations, creature, centre - turned)
    return rotations, locations


def nod(creature, rng, frames, fps=FPS):
    rotations, locations = _start(creature, frames)
    rig = creature.rig
    amount = rng.uniform(0.3, 0.6) * np.sin(_cycle(rng, frames, fps, 1.0, 2.2))
    for share, role in ((0.5, "neck"), (1.0, "head")):
        for name in creature.roles.get(role, []):
            _turn(rotations, rig, name, _toward(rig, [name], _FORWARD_DOWN), share * amount)
    return rotations, locations


def bow(creature, rng, frames, fps=FPS):
    rotations, locations = _start(creature, frames)
    rig, root = creature.rig, creature.roles["root"][0]
    names = [n for role in ("spine", "arm", "neck", "head") for n in creature.roles.get(role, []) if n != root]
    depth = rng.uniform(0.6, 1.1) * _bump(rng, frames) / len(names) * 2
    for name in names:
        _turn(rotations, rig, name, _toward(rig, [name], _FORWARD_DOWN), depth)
    return rotations, locations


def _hinge(creature, rng, opening: bool, frames: int):
    """Swing the hinged part between closed (folded onto the base's front) and open."""
    rotations, locations = _start(creature, frames)
    rig, name = creature.rig, creature.roles["hinge"][0]
    axis = -_X  # hinges run along X at the back; positive angles tip the part up and back
    closed = -np.arccos(np.clip(_direction(rig, [name]) @ _FORWARD, -1, 1)) * rng.uniform(0.92, 1.0)
    opened = max(closed + rng.uniform(1.2, 1.7), rng.uniform(0.0, 0.3))
    ease = _ease(rng, frames)
    angles = closed + (opened - closed) * (ease if opening else 1 - ease)
    _turn(rotations, rig, name, axis, angles)
    return rotations, locations


def open_(creature, rng, frames, fps=FPS):
    return _hinge(creature, rng, True, frames)


def close(creature, rng, frames, fps=FPS):
    return _hinge(creature, rng, False, frames)


def _wave_along(creature, rng, frames, fps, role, amplitude, hertz, waves):
    """A side-to-side (about Z) wave travelling along a chain: tails and snakes."""
    rotations, locations = _start(creature, frames)
    chain = creature.roles[role]
    phase = _cycle(rng, frames, fps, *hertz)
    amp, k = rng.uniform(*amplitude), 2 * np.pi * rng.uniform(*waves) / len(chain)
    for i, name in enumerate(chain):
        _turn(rotations, creature.rig, name, _Z, amp * np.sin(phase - k * i))
    return rotations, locations


def wag(creature, rng, frames, fps=FPS):
    return _wave_along(creature, rng, frames, fps, "tail", (0.3, 0.6), (1.5, 3.0), (0.1, 0.3))


def slither(creature, rng, frames, fps=FPS):
    count = len(creature.roles["spine"])  # keep the summed bend bounded on long snakes
    return _wave_along(creature, rng, frames, fps, "spine", (2.0 / count, 3.5 / count), (0.6, 1.5), (0.8, 1.6))


def crouch(creature, rng, frames, fps=FPS):
    """Fold every leg into a Z (hip forward, knee back, ankle forward) and let the body sink."""
    rotations, locations = _start(creature, frames)
    rig, depth = creature.rig, rng.uniform(0.3, 0.7) * _ease(rng, frames)
    for chain, _ in _legs(creature):
        axis = _toward(rig, chain, _FORWARD)
        for name, share in zip(chain, (1.0, -2.0, 1.0)):
            _turn(rotations, rig, name, axis, share * depth)
    _plant(creature, rotations, locations)
    return rotations, locations


def flap(creature, rng, frames, fps=FPS):
    rotations, locations = _start(creature, frames)
    rig, phase, amp = creature.rig, _cycle(rng, frames, fps, 2.0, 4.0), rng.uniform(0.5, 1.0)
    for side in ("wing_left", "wing_right"):
        chain = creature.roles[side]
        axis = _toward(rig, chain, _Z)
        _turn(rotations, rig, chain[0], axis, amp * np.sin(phase))
        _turn(rotations, rig, chain[1], axis, 0.5 * amp * np.sin(phase - 0.8))  # the tip lags
    return rotations, locations


MOTIONS = {
    "walk": walk, "jump": jump, "wave": wave, "spin": spin, "nod": nod, "bow": bow, "open": open_,
    "close": close, "wag": wag, "crouch": crouch, "flap": flap, "slither": slither,
}

APPLICABLE = {
    "biped": ("walk", "jump", "wave", "spin", "nod", "bow", "crouch"),
    "quadruped": ("walk", "jump", "spin", "nod", "bow", "wag", "crouch"),
    "bird": ("walk", "jump", "wave", "spin", "nod", "bow", "crouch", "flap"),
    "snake": ("spin", "nod", "slither"),  # its tail is the root end: a wag would swing it all
    "many_legged": ("walk", "jump", "spin", "nod", "crouch"),
    "chest": ("open", "close", "spin"),
    "laptop": ("open", "close", "spin"),
    "lamp": ("jump", "spin", "nod", "bow"),
    "robot_arm": ("wave", "spin", "nod", "bow"),
}


def applicable(creature: Creature) -> list[str]:
    return list(APPLICABLE[creature.family])


# --- prompts ---------------------------------------------------------------------------------
NOUNS = {
    "biped": ("person", "man", "woman", "child", "robot", "character", "knight"),
    "quadruped": ("fox", "dog", "wolf", "cat", "horse", "deer", "lion"),
    "bird": ("bird", "crow", "duck", "eagle", "parrot", "chicken"),
    "snake": ("snake", "serpent", "python", "eel", "worm"),
    "many_legged": ("spider", "ant", "beetle", "crab", "insect"),
    "chest": ("chest", "treasure chest", "wooden box", "trunk"),
    "laptop": ("laptop", "notebook computer", "computer"),
    "lamp": ("desk lamp", "lamp", "reading lamp"),
    "robot_arm": ("robot arm", "robotic arm", "industrial robot", "crane arm"),
}
PARTS = {"chest": "lid", "laptop": "screen"}

PROMPTS = {
    "walk": ("the {noun} walks forward", "a {noun} walking", "the {noun} strolls along", "a {noun} takes a few steps"),
    "jump": ("the {noun} jumps", "a jumping {noun}", "the {noun} leaps into the air", "a {noun} hops up and lands"),
    "wave": ("the {noun} waves", "a {noun} waving hello", "the {noun} raises a limb and waves", "a {noun} greets with a wave"),
    "spin": ("the {noun} spins around", "a {noun} turning in place", "the {noun} rotates", "a {noun} twirls"),
    "nod": ("the {noun} nods", "a {noun} nodding its head", "the {noun} bobs its head up and down"),
    "bow": ("the {noun} bows", "a {noun} bowing forward", "the {noun} leans forward and back up", "a {noun} bends down in a bow"),
    "open": ("the {noun} opens", "the {noun} opens its {part}", "a {noun} lifting its {part} open", "an opening {noun}"),
    "close": ("the {noun} closes", "the {noun} shuts its {part}", "a {noun} closing its {part}", "the {noun} lowers its {part} shut"),
    "wag": ("the {noun} wags its tail", "a {noun} wagging", "the {noun} swishes its tail", "a {noun} with a wagging tail"),
    "crouch": ("the {noun} crouches", "a {noun} crouching down", "the {noun} squats low", "a {noun} ducks down"),
    "flap": ("the {noun} flaps its wings", "a {noun} flapping", "the {noun} beats its wings"),
    "slither": ("the {noun} slithers", "a {noun} slithering", "the {noun} wriggles along", "an undulating {noun}"),
}
KEYWORDS = {
    "walk": ("walk", "stroll", "step"), "jump": ("jump", "leap", "hop"), "wave": ("wav",),
    "spin": ("spin", "turn", "rotat", "twirl"), "nod": ("nod", "bob"), "bow": ("bow", "lean"),
    "open": ("open",), "close": ("clos", "shut"), "wag": ("wag", "swish"),
    "crouch": ("crouch", "squat", "duck"), "flap": ("flap", "beat"), "slither": ("slither", "wriggl", "undulat"),
}
"""Word stems that every prompt of a motion contains one of (how the tests tell it names it)."""


def phrase(template: str, noun: str, family: str) -> str:
    text = template.format(noun=noun, part=PARTS.get(family, "part"))
    return re.sub(r"\b([Aa])n? (?=(\w))", lambda m: m[1] + ("n " if m[2] in "aeiou" else " "), text)


def prompt(creature: Creature, motion: str, rng) -> str:
    """A prompt for ``motion`` that names the creature by one of its family's nouns."""
    nouns = NOUNS[creature.family]
    template = PROMPTS[motion][int(rng.integers(len(PROMPTS[motion])))]
    return phrase(template, nouns[int(rng.integers(len(nouns)))], creature.family)


def all_prompts(families=tuple(FAMILIES)) -> list[str]:
    """Every prompt ``prompt`` can write for ``families``, sorted (for precomputed text embeddings)."""
    return sorted({phrase(template, noun, family) for family in families for motion in APPLICABLE[family]
                   for template in PROMPTS[motion] for noun in NOUNS[family]})


# --- clips -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    creature: Creature
    motion: str
    prompt: str
    rotations: np.ndarray  # (T, B, 4) w, x, y, z
    locations: np.ndarray  # (T, B, 3)
    joints: np.ndarray  # (T, J, 3) armature space
    fps: int = FPS


def capable_families(families=None, motions=None) -> list[str]:
    """The families of ``families`` (default: the training families) that can do one of ``motions``
    (default: any), in their order; a clear error for unknown names or where none can."""
    families = TRAIN_FAMILIES if families is None else tuple(families)
    allowed = set(MOTIONS) if motions is None else set(motions)
    unknown = (set(families) - set(FAMILIES)) | (allowed - set(MOTIONS))
    if unknown:
        raise ValueError(f"unknown families or motions: {sorted(unknown)}")
    candidates = [f for f in families if allowed & set(APPLICABLE[f])]
    if not candidates:
        raise ValueError(f"no family among {families} can perform any of {sorted(allowed)}")
    return candidates


def sample_creature(rng, families=None, motions=None) -> Creature:
    """A random creature of ``families`` (default: the training families) that can do one of ``motions``."""
    candidates = capable_families(families, motions)
    return FAMILIES[candidates[int(rng.integers(len(candidates)))]](rng)


def play(creature: Creature, rng, frames: int = 17, motions=None, fps: int = FPS) -> Clip:
    """``creature`` doing one of ``motions`` that it can do, with a prompt that says so."""
    names = [m for m in applicable(creature) if motions is None or m in motions]
    motion = names[int(rng.integers(len(names)))]
    rotations, locations = MOTIONS[motion](creature, rng, frames, fps)
    _, joints = forward_kinematics(creature.rig, rotations, locations)
    return Clip(creature, motion, prompt(creature, motion, rng), rotations, locations, joints, fps)


def sample_clip(rng, frames: int = 17, families=None, motions=None, fps: int = FPS) -> Clip:
    """A random creature of ``families`` (default: the training families) doing one of ``motions``."""
    return play(sample_creature(rng, families, motions), rng, frames, motions, fps)
