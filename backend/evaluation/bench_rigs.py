"""The rigs of ``animax motion-bench``, built in Blender: procedural creatures, Rigify metarigs, glTF.

Each ``BenchRig`` builds its armature (with a skinned mesh) in the current, emptied scene and says
which motions to prompt it with. Procedural creatures come with their true motion for each label;
Rigify's metarigs (they ship inside bpy) and their glTF round trips have none: they are the rig
layouts nobody on this project designed. Needs ``bpy``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from backend.data.motions import APPLICABLE, NOUNS, PROMPTS, phrase
from backend.data.rig_world import FAMILIES, Creature

CREATURE_SEED = 1_000_003
"""Creatures of the benchmark come from ``default_rng((CREATURE_SEED, family index))``: seeds no
training or evaluation split draws (those draw 64-bit seeds from small ``SeedSequence`` roots)."""

HUMAN_MOTIONS = ("jump", "walk", "wave", "spin", "nod", "crouch")
QUADRUPED_MOTIONS = ("jump", "walk", "spin", "nod", "crouch")

# name -> (module under rigify.metarigs, family its motions are read as, noun for prompts, motions)
RIGIFY_METARIGS = {
    "basic_human": ("Basic.basic_human", "biped", "person", HUMAN_MOTIONS),
    "basic_quadruped": ("Basic.basic_quadruped", "quadruped", "dog", QUADRUPED_MOTIONS),
    "human": ("human", "biped", "person", HUMAN_MOTIONS),
    "wolf": ("Animals.wolf", "quadruped", "wolf", QUADRUPED_MOTIONS),
    "horse": ("Animals.horse", "quadruped", "horse", QUADRUPED_MOTIONS),
    "cat": ("Animals.cat", "quadruped", "cat", QUADRUPED_MOTIONS),
}
GLTF_ROUND_TRIPS = ("basic_human", "basic_quadruped")
SKIN_COLOR = (0.75, 0.6, 0.5)


@dataclass(frozen=True)
class BenchRig:
    name: str  # "procedural:fox" style: group, then what
    group: str  # "procedural", "rigify" or "gltf"
    family: str  # the family whose motions and nouns it takes
    motions: tuple[str, ...]
    noun: str
    build: Callable  # (bpy) -> armature object; the scene is empty when it is called
    creature: Creature | None = None  # procedural rigs: the creature, for the true motions

    def prompt(self, motion: str) -> str:
        """The benchmark's prompt for ``motion``: its first template with this rig's noun."""
        return phrase(PROMPTS[motion][0], self.noun, self.family)


def _procedural(family: str) -> BenchRig:
    creature = FAMILIES[family](np.random.default_rng((CREATURE_SEED, list(FAMILIES).index(family))))

    def build(bpy):
        from backend.data.blender_build import build_creature

        return build_creature(creature, family.replace("_", " ").title().replace(" ", ""))

    return BenchRig(f"procedural:{family}", "procedural", family, APPLICABLE[family], NOUNS[family][0], build,
                    creature)


def create_metarig(bpy, module: str, name: str | None = None):
    """Rigify's metarig ``module`` (under ``rigify.metarigs``, e.g. "Basic.basic_human") at the
    origin, built as Rigify's Add menu does; Rigify is enabled first where it is not."""
    import importlib

    import addon_utils

    if "rigify" not in bpy.context.preferences.addons:  # a factory reset disables add-ons
        addon_utils.enable("rigify", default_set=True)  # registers its preferences, which create() reads
    armature = bpy.data.armatures.new(name or module)
    obj = bpy.data.objects.new(name or module, armature)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    importlib.import_module(f"rigify.metarigs.{module}").create(obj)
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def build_metarig(bpy, which: str):
    """A Rigify metarig (``RIGIFY_METARIGS``) at the origin with a capsule skin on its deform bones."""
    from backend.data.blender_build import add_skin

    obj = create_metarig(bpy, RIGIFY_METARIGS[which][0], which)
    add_skin(obj, SKIN_COLOR)
    return obj


def _rigify(which: str) -> BenchRig:
    _, family, noun, motions = RIGIFY_METARIGS[which]
    return BenchRig(f"rigify:{which}", "rigify", family, motions, noun, lambda bpy: build_metarig(bpy, which))


def gltf_round_trip(bpy, which: str):
    """The skinned metarig exported with Blender's glTF exporter and imported back (bone tails,
    rolls and names as the importer rebuilds them); returns the imported armature."""
    build_metarig(bpy, which)
    with tempfile.TemporaryDirectory(prefix="animax-gltf-") as folder:
        path = str(Path(folder) / f"{which}.glb")
        bpy.ops.export_scene.gltf(filepath=path, export_format="GLB", export_animations=False)
        for obj in list(bpy.data.objects):
            bpy.data.objects.remove(obj)
        bpy.ops.import_scene.gltf(filepath=path)
    armatures = [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]
    if len(armatures) != 1:
        raise RuntimeError(f"the glTF round trip of {which} gave {len(armatures)} armatures")
    return armatures[0]


def _gltf(which: str) -> BenchRig:
    _, family, noun, motions = RIGIFY_METARIGS[which]
    return BenchRig(f"gltf:{which}", "gltf", family, motions, noun, lambda bpy: gltf_round_trip(bpy, which))


def bench_rigs() -> dict[str, BenchRig]:
    """Every rig of the benchmark by name, in the order it runs them."""
    rigs = [_procedural(f) for f in FAMILIES] + [_rigify(w) for w in RIGIFY_METARIGS] + [
        _gltf(w) for w in GLTF_ROUND_TRIPS]
    return {r.name: r for r in rigs}
