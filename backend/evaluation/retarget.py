"""A procedural creature's true motion carried onto another rig: the truth of a motion on rigs the
rig world did not make (Rigify's, a glTF character's), which have no procedural motion of their own.

The rig's training counterpart (``joint_colours.counterpart``: the training creature it is drawn
as, joint for joint) plays the motion; each bone of the rig whose two ends both have a counterpart
turns, in the world, as the line between those two joints of the creature turns (the shortest
arc, so no twist: joint positions do not depend on it), keeping its own length and rest direction;
other bones keep their rest direction below their parent; the root moves as the creature's does,
scaled by the two rigs' sizes. Everything happens in the rig's upright frame, where training
creatures stand (Z up, facing -Y). Plain NumPy, on joint positions.
"""

from __future__ import annotations

import numpy as np

from animax_addon.core.rig import Rig, tree_depths
from backend.data.motions import FPS, MOTIONS
from backend.data.rig_world import Creature
from backend.reconstruction.kinematics import forward_kinematics, shortest_arc


def retarget(rig: Rig, creature_joints: np.ndarray, creature: Creature, counterparts: np.ndarray,
             rotation: np.ndarray | None = None) -> np.ndarray:
    """(T, J, 3) joint positions of ``rig`` moving as ``creature`` does in ``creature_joints``
    (T, Jc, 3, its own rig space); ``counterparts`` (J,) the creature's joint for each of the rig's
    (-1 for none), ``rotation`` the rig's upright frame (world from frame; the world's axes where None)."""
    frame = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    centre, radius = rig.bounding_sphere(rotation)
    rest = (rig.joints_rest - centre) @ frame  # upright frame
    source = creature.rig
    scale = radius / source.bounding_sphere()[1]
    parents = rig.joint_parents
    moved = np.repeat(rest[None], len(creature_joints), axis=0)
    for joint in np.argsort(tree_depths(parents), kind="stable"):  # parents before children
        parent, mine = parents[joint], counterparts[joint]
        if parent < 0:
            if mine >= 0:
                moved[:, joint] += (creature_joints[:, mine] - source.joints_rest[mine]) * scale
            continue
        bone = rest[joint] - rest[parent]
        theirs = counterparts[parent]
        span = source.joints_rest[mine] - source.joints_rest[theirs] if min(mine, theirs) >= 0 else None
        if span is None or np.linalg.norm(span) < 1e-9:
            moved[:, joint] = moved[:, parent] + bone
            continue
        arcs = shortest_arc(span, creature_joints[:, mine] - creature_joints[:, theirs])
        moved[:, joint] = moved[:, parent] + arcs @ bone
    return moved @ frame.T + centre


def counterpart_truth(rig: Rig, creature: Creature, counterparts: np.ndarray, motion: str, seed: int,
                      frames: int, rotation: np.ndarray | None = None) -> np.ndarray:
    """(frames, J, 3): the true ``motion`` (drawn from ``seed``) of ``creature`` at the model's frame
    rate, carried onto ``rig`` by :func:`retarget`."""
    rotations, locations = MOTIONS[motion](creature, np.random.default_rng(seed), frames, FPS)
    _, joints = forward_kinematics(creature.rig, rotations, locations)
    return retarget(rig, joints, creature, counterparts, rotation)
