"""Procedural rigs: creatures of many topologies with random proportions and semantic roles.

Each family is a function ``(rng) -> Creature``. Blender conventions throughout: Z up, metres,
characters face -Y, so a character's left is +X (``.L``). Rigs go through ``Rig.from_dict`` and so
are validated exactly like a rig the add-on exports. ``roles`` names the bones a motion needs
("leg_front_left" is a chain from hip to toe, "head" the bone that looks), so motions never depend
on bone names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from animax_addon.core.rig import MAX_JOINTS, Rig


@dataclass(frozen=True)
class Creature:
    family: str
    rig: Rig
    roles: dict[str, list[str]]


class _Skeleton:
    """Collects bones and their roles, then builds the validated rig."""

    def __init__(self, family: str):
        self.family = family
        self.bones: list[dict] = []
        self.roles: dict[str, list[str]] = {}

    def bone(self, name, parent, head, tail, *roles) -> str:
        head, tail = (np.round(np.asarray(p, dtype=float), 6).tolist() for p in (head, tail))
        self.bones.append({"name": name, "parent": parent, "head": head, "tail": tail})
        for role in roles:
            self.roles.setdefault(role, []).append(name)
        return name

    def chain(self, names, parent, points, *roles) -> list[str]:
        """Connected bones through ``points`` (one more point than names)."""
        for name, head, tail in zip(names, points[:-1], points[1:]):
            parent = self.bone(name, parent, head, tail, *roles)
        return list(names)

    def build(self) -> Creature:
        rig = Rig.from_dict({"bones": self.bones})
        assert rig.num_joints <= MAX_JOINTS, (self.family, rig.num_joints)
        return Creature(self.family, rig, self.roles)


_SIDES = (("left", "L", 1.0), ("right", "R", -1.0))


def _numbered(prefix: str, count: int) -> list[str]:
    return [f"{prefix}.{i + 1:02d}" for i in range(count)]


def _line(start, end, count: int) -> np.ndarray:
    return np.linspace(start, end, count + 1)


def biped(rng) -> Creature:
    s = _Skeleton("biped")
    height = rng.uniform(1.2, 2.0)
    leg, torso = height * rng.uniform(0.45, 0.52), height * rng.uniform(0.28, 0.34)
    hip_w, shoulder_w = height * rng.uniform(0.05, 0.08), height * rng.uniform(0.09, 0.13)
    arm, foot = height * rng.uniform(0.33, 0.42), height * rng.uniform(0.07, 0.1)
    lean = rng.uniform(-0.03, 0.03) * height  # a slight slouch or straight back
    s.bone("hips", None, [0, 0, leg], [0, 0, leg + 0.2 * torso], "root", "spine")
    top = [0, lean, leg + torso]
    n_spine = int(rng.integers(2, 4))
    spine = s.chain(_numbered("spine", n_spine), "hips", _line([0, 0, leg + 0.2 * torso], top, n_spine), "spine")
    neck = height * rng.uniform(0.04, 0.06)
    s.bone("neck", spine[-1], top, [0, lean - 0.2 * neck, top[2] + neck], "neck")
    s.bone("head", "neck", [0, lean - 0.2 * neck, top[2] + neck],
           [0, lean - 0.3 * neck, top[2] + neck + height * rng.uniform(0.1, 0.14)], "head")
    spread = rng.uniform(0.2, 0.8)  # arm angle from vertical: A-pose to near T-pose
    for side, tag, sx in _SIDES:
        shoulder = np.array([sx * shoulder_w, lean, leg + 0.95 * torso])
        down = np.array([sx * np.sin(spread), 0, -np.cos(spread)])
        elbow = shoulder + 0.45 * arm * down + [0, -0.02 * arm, 0]
        wrist = elbow + 0.4 * arm * down
        s.chain([f"upper_arm.{tag}", f"forearm.{tag}", f"hand.{tag}"], spine[-1],
                [shoulder, elbow, wrist, wrist + 0.15 * arm * down], f"arm_{side}")
        x = sx * hip_w
        s.chain([f"thigh.{tag}", f"shin.{tag}", f"foot.{tag}"], "hips",
                [[x, 0, leg], [x, -0.03 * leg, 0.5 * leg], [x, 0.01 * leg, 0.08 * leg], [x, -foot, 0]],
                f"leg_{side}")
    return s.build()


def quadruped(rng) -> Creature:
    s = _Skeleton("quadruped")
    length, height = rng.uniform(0.5, 1.4), rng.uniform(0.35, 1.1)
    width = length * rng.uniform(0.12, 0.2)
    n_spine = int(rng.integers(2, 4))
    back = _line([0, length / 2, height], [0, -length / 2, height * rng.uniform(1.0, 1.1)], n_spine + 1)
    s.bone("hips", None, back[0], back[1], "root", "spine")
    spine = ["hips"] + s.chain(_numbered("spine", n_spine), "hips", back[1:], "spine")
    neck = length * rng.uniform(0.2, 0.4)
    neck_end = back[-1] + neck * np.array([0, -0.5, 0.85])
    s.bone("neck", spine[-1], back[-1], neck_end, "neck")
    s.bone("head", "neck", neck_end, neck_end + length * rng.uniform(0.15, 0.3) * np.array([0, -1, -0.1]), "head")
    paw = height * rng.uniform(0.08, 0.15)
    for part, parent, y in (("front", spine[-1], back[-1][1] + 0.05 * length), ("back", "hips", back[0][1] - 0.05 * length)):
        for side, tag, sx in _SIDES:
            x, top = sx * width, back[0][2] * 0.95
            s.chain([f"{part}_thigh.{tag}", f"{part}_shin.{tag}", f"{part}_foot.{tag}"], parent,
                    [[x, y, top], [x, y + 0.02 * height, 0.55 * top], [x, y - 0.01 * height, 0.12 * top], [x, y - paw, 0]],
                    f"leg_{part}_{side}")
    n_tail = int(rng.integers(2, 5))
    droop = rng.uniform(-0.4, 0.4)
    tail = back[0] + np.outer(np.arange(n_tail + 1) / n_tail, length * rng.uniform(0.3, 0.7) * np.array([0, 1, droop]))
    s.chain(_numbered("tail", n_tail), "hips", tail, "tail")
    return s.build()


def bird(rng) -> Creature:
    s = _Skeleton("bird")
    body, leg = rng.uniform(0.15, 0.6), rng.uniform(0.1, 0.5)
    s.bone("body", None, [0, 0.5 * body, leg], [0, -0.5 * body, leg + 0.25 * body], "root")
    neck_top = np.array([0, -0.6 * body, leg + body * rng.uniform(0.5, 0.9)])
    s.bone("neck", "body", [0, -0.5 * body, leg + 0.25 * body], neck_top, "neck")
    s.bone("head", "neck", neck_top, neck_top + [0, -body * rng.uniform(0.3, 0.5), -0.05 * body], "head")
    span, sweep = body * rng.uniform(0.8, 2.0), rng.uniform(0.0, 0.4)
    for side, tag, sx in _SIDES:
        root = np.array([sx * 0.15 * body, -0.2 * body, leg + 0.2 * body])
        wing = root + np.outer(np.arange(4) / 3, span * np.array([sx, sweep, 0.1]))
        s.chain([f"wing_{i}.{tag}" for i in (1, 2, 3)], "body", wing, f"wing_{side}")
        x = sx * 0.12 * body
        s.chain([f"thigh.{tag}", f"shin.{tag}", f"foot.{tag}"], "body",
                [[x, 0, leg], [x, -0.1 * leg, 0.5 * leg], [x, 0.05 * leg, 0.05 * leg], [x, -0.4 * leg, 0]],
                f"leg_{side}")
    n_tail = int(rng.integers(1, 3))
    s.chain(_numbered("tail", n_tail), "body",
            _line([0, 0.5 * body, leg], [0, body * rng.uniform(1.0, 1.6), leg + 0.1 * body], n_tail), "tail")
    return s.build()


def snake(rng) -> Creature:
    s = _Skeleton("snake")
    count, length = int(rng.integers(8, 21)), rng.uniform(0.8, 3.0)
    y = np.linspace(length / 2, -length / 2, count + 1)  # tail at +Y, head at -Y
    curve = rng.uniform(0.02, 0.08) * length * np.sin(rng.uniform(2, 6) * y / length + rng.uniform(0, 2 * np.pi))
    points = np.stack([curve, y, np.full_like(y, rng.uniform(0.02, 0.06) * length)], axis=1)
    names = s.chain(_numbered("seg", count), None, points, "spine")
    s.roles.update(root=names[:1], tail=names[:3], neck=names[-2:-1], head=names[-1:])
    return s.build()


def many_legged(rng) -> Creature:
    """Insects, spiders, crabs: 3 or 4 pairs of legs splayed out from a segmented body."""
    s = _Skeleton("many_legged")
    length, height = rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.6)
    height *= length
    body = _line([0, 0.5 * length, height], [0, -0.3 * length, height], 2)
    s.chain(["abdomen", "thorax"], None, body, "spine")
    s.roles["root"] = ["abdomen"]
    s.bone("head", "thorax", body[-1], body[-1] + [0, -0.2 * length, 0], "head")
    pairs, reach = int(rng.integers(3, 5)), length * rng.uniform(0.5, 1.0)
    for i, y in enumerate(np.linspace(-0.25, 0.15, pairs) * length):
        for side, tag, sx in _SIDES:
            attach = np.array([sx * 0.05 * length, y, height])
            fan = np.array([sx, 0.4 * (y / length), 0])  # legs fan forward and backward
            knee = attach + reach * 0.45 * fan + [0, 0, 0.4 * height]
            s.chain([f"coxa_{i + 1}.{tag}", f"femur_{i + 1}.{tag}", f"tibia_{i + 1}.{tag}"], "thorax",
                    [attach, attach + 0.1 * reach * fan, knee, attach + reach * fan * [1, 1.5, 0] - [0, 0, height]],
                    f"leg_{i + 1}_{side}")
    return s.build()


def chest(rng) -> Creature:
    s = _Skeleton("chest")
    width = rng.uniform(0.4, 1.2)
    depth, height = width * rng.uniform(0.5, 0.8), width * rng.uniform(0.3, 0.7)
    s.bone("base", None, [0, 0, 0], [0, depth / 2, height], "root", "base")
    s.bone("lid", "base", [0, depth / 2, height], [0, -depth / 2, height], "lid", "hinge")  # closed
    for side, tag, sx in _SIDES:  # side handles: the box's width, which the lid alone hides
        s.bone(f"handle.{tag}", "base", [sx * width / 2, 0, 0.6 * height], [sx * (width / 2 + 0.05), 0, 0.6 * height],
               f"handle_{side}")
    return s.build()


def laptop(rng) -> Creature:
    s = _Skeleton("laptop")
    depth, tilt = rng.uniform(0.2, 0.35), rng.uniform(0.0, 0.5)  # screen tilt back from vertical
    screen = depth * rng.uniform(0.9, 1.05)
    hinge = [0, depth / 2, 0.02]
    s.bone("base", None, [0, -depth / 2, 0], hinge, "root", "base")
    s.bone("screen", "base", hinge, [0, hinge[1] + screen * np.sin(tilt), screen * np.cos(tilt)], "screen", "hinge")
    return s.build()


def lamp(rng) -> Creature:
    s = _Skeleton("lamp")
    size = rng.uniform(0.3, 0.9)
    s.bone("base", None, [0, 0, 0], [0, 0, 0.08 * size], "root", "base")
    count = int(rng.integers(2, 4))
    angles = rng.uniform(-0.6, 0.6, count) + np.where(np.arange(count) % 2, -0.5, 0.4)  # zig-zag
    steps = size / count * np.stack([np.zeros(count), np.sin(angles), np.cos(angles)], axis=1)
    points = np.concatenate([[[0, 0, 0.08 * size]], [0, 0, 0.08 * size] + np.cumsum(steps, axis=0)])
    arm = s.chain(_numbered("arm", count), "base", points, "arm")
    s.bone("shade", arm[-1], points[-1], points[-1] + 0.25 * size * np.array([0, -0.6, -0.8]), "shade", "head")
    return s.build()


def robot_arm(rng) -> Creature:
    s = _Skeleton("robot_arm")
    reach = rng.uniform(0.4, 1.5)
    s.bone("base", None, [0, 0, 0], [0, 0, 0.15 * reach], "root", "base")
    count = int(rng.integers(3, 7))
    lengths = rng.dirichlet(np.full(count, 3.0)) * reach
    angles = np.cumsum(rng.uniform(-0.3, 0.8, count)) * (np.arange(count) > 0)  # bends toward -Y
    steps = lengths[:, None] * np.stack([np.zeros(count), -np.sin(angles), np.cos(angles)], axis=1)
    points = [0, 0, 0.15 * reach] + np.concatenate([[[0, 0, 0]], np.cumsum(steps, axis=0)])
    names = s.chain([f"joint_{i + 1}" for i in range(count)], "base", points, "arm")
    for name in names:
        s.roles[name] = [name]
    s.roles["head"] = names[-1:]
    return s.build()


FAMILIES = {
    f.__name__: f for f in (biped, quadruped, bird, snake, many_legged, chest, laptop, lamp, robot_arm)
}
HELDOUT_FAMILIES = ("many_legged", "laptop")
"""Never trained on; both use only motions that training families also perform."""
TRAIN_FAMILIES = tuple(f for f in FAMILIES if f not in HELDOUT_FAMILIES)
