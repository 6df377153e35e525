"""The panel's settings (per scene, saved with the .blend) and the job's state (per window manager).

The job state lives on the window manager so that it is neither saved nor undone: Ctrl+Z while a
job runs must not rewind its progress bar.
"""


import bpy
from bpy.props import (
    BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty,
)

from .core.protocol import MAX_VARIATIONS
from .snapshot import BONE_OPTIONS

_BONE_ITEMS = {
    "DEFORM": ("Deform bones", "Every bone that deforms the mesh; past what AnimaX tells apart, the body "
                               "(face, finger, twist and mechanism bones keep their rest)"),
    "COLLECTION": ("Bone collection", "The bones of one bone collection"),
    "SELECTED": ("Selected bones", "The bones selected in Pose Mode"),
}


def _is_armature(self, obj) -> bool:
    return obj.type == "ARMATURE"


class AnimaXVariation(bpy.types.PropertyGroup):
    action: PointerProperty(type=bpy.types.Action, name="Action")
    seed: IntProperty(name="Seed")
    preview: StringProperty(name="Preview", description="Name of the pose preview image sequence")
    preview_rgb: StringProperty(name="RGB Preview", description="Name of the RGB preview image sequence")


class AnimaXSettings(bpy.types.PropertyGroup):
    armature: PointerProperty(type=bpy.types.Object, name="Armature", poll=_is_armature,
                              description="The armature to animate (empty: the active object)")
    prompt: StringProperty(name="Prompt", description="What the character should do, e.g. 'the fox pounces forward'")
    # One second at Blender's default 24 fps: the tiny model's whole clip (17 frames at 16 fps),
    # the length it was trained on; a shorter Action has it make fewer frames than it knows.
    duration: IntProperty(name="Duration", default=25, min=1, soft_max=250, subtype="TIME",
                          description="Length of the new Action in scene frames (the model may make fewer)")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed; variations use seed, seed+1, ...")
    steps: IntProperty(name="Steps", default=0, min=0, max=200,
                       description="Denoising steps; 0 takes the worker's own (20 for the embedded model, 10 for "
                                   "a worker started with --fast)")
    guidance: FloatProperty(name="Guidance", default=3.0, min=1.0, soft_max=10.0,
                            description="Image guidance scale (1 turns guidance off)")
    variations: IntProperty(name="Variations", default=1, min=1, max=MAX_VARIATIONS,
                            description="How many Actions to generate, each with its own seed (one job)")
    bones: EnumProperty(name="Bones", items=[(k, *_BONE_ITEMS[k]) for k in BONE_OPTIONS], default="DEFORM",
                        description="Which bones take part")
    bone_collection: StringProperty(name="Bone Collection", description="The bone collection whose bones take part")
    thin_tolerance: FloatProperty(name="Key Thinning", default=0.0, min=0.0, soft_max=0.05, precision=4,
                                  description="Drop keys that interpolation reproduces within this tolerance "
                                              "(0 keeps every frame)")
    decode_rgb: BoolProperty(name="RGB Preview", default=False,
                             description="Also decode the generated RGB videos for the preview (slower; "
                                         "a worker with the full model: the embedded one draws pose maps alone)")
    results: CollectionProperty(type=AnimaXVariation)
    result_index: IntProperty(name="Variation")


class AnimaXState(bpy.types.PropertyGroup):
    running: BoolProperty()
    stage: StringProperty()
    progress: FloatProperty(min=0.0, max=1.0, subtype="FACTOR")
    eta_s: FloatProperty(default=-1.0)  # negative: unknown
    error: StringProperty()
    summary: StringProperty()  # what the last finished Animate wrote and keyed, shown until the next


classes = (AnimaXVariation, AnimaXSettings, AnimaXState)


def register_properties() -> None:
    bpy.types.Scene.animax = PointerProperty(type=AnimaXSettings)
    bpy.types.WindowManager.animax_state = PointerProperty(type=AnimaXState)


def unregister_properties() -> None:
    del bpy.types.WindowManager.animax_state
    del bpy.types.Scene.animax
