"""The AnimaX tab of the 3D viewport's sidebar."""


import bpy

from .operators import target_armature
from .snapshot import choice_summary, upright_warning


class VIEW3D_PT_animax(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "AnimaX"
    bl_label = "AnimaX"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.animax
        state = context.window_manager.animax_state

        col = layout.column()
        col.prop(settings, "armature")
        if settings.armature is None:
            obj = target_armature(context)
            col.label(text=f"Active: {obj.name}" if obj else "No armature selected", icon="ARMATURE_DATA")
        _upright(layout, target_armature(context), context)  # the rest pose lies down: said before Animate
        col = layout.column()
        col.prop(settings, "prompt", text="")
        col.prop(settings, "duration")
        col.prop(settings, "variations")

        box = layout.box()
        box.use_property_split = True
        box.prop(settings, "seed")
        box.prop(settings, "steps")
        box.prop(settings, "guidance")
        box.prop(settings, "bones")
        if settings.bones == "DEFORM":
            _default_choice(box, target_armature(context), context)
        elif settings.bones == "COLLECTION":
            obj = target_armature(context)
            if obj is not None:
                box.prop_search(settings, "bone_collection", obj.data, "collections_all", text="Collection")
            else:
                box.prop(settings, "bone_collection")
        box.prop(settings, "thin_tolerance")
        box.prop(settings, "decode_rgb")

        row = layout.row(align=True)
        row.scale_y = 1.4
        if state.running:
            row.operator("animax.cancel", icon="CANCEL")
        else:
            row.operator("animax.animate", icon="PLAY")
        if state.running or state.stage:
            text = state.stage
            if state.running and state.eta_s >= 0:
                text += f" (about {state.eta_s:.0f} s left)"
            layout.progress(factor=state.progress, type="BAR", text=text)
        if state.summary and not state.running:  # which Actions and bones (or rig controls) were keyed
            _wrapped(layout.box().column(align=True), state.summary, context)
        if state.error:
            error = layout.box()
            error.alert = True
            error.label(text="AnimaX could not animate", icon="ERROR")
            _wrapped(error, state.error, context)

        if len(settings.results):
            layout.label(text="Variations")
            for i, entry in enumerate(settings.results):
                row = layout.row(align=True)
                name = entry.action.name if entry.action else "(deleted)"
                icon = "RADIOBUT_ON" if i == settings.result_index else "RADIOBUT_OFF"
                row.operator("animax.use_variation", text=f"{name} (seed {entry.seed})", icon=icon).index = i
                if entry.preview:
                    row.operator("animax.preview", text="", icon="IMAGE_DATA").index = i
                if entry.preview_rgb:
                    op = row.operator("animax.preview", text="", icon="SHADING_RENDERED")
                    op.index, op.rgb = i, True


def _default_choice(layout, obj, context) -> None:
    """Which bones the default choice leaves at rest, where it leaves any."""
    if obj is None or obj.mode == "EDIT":  # edit bones reach obj.data.bones only on leaving Edit Mode
        return
    summary, refused = choice_summary(obj)
    if summary:
        column = layout.column(align=True)
        column.alert = refused
        _wrapped(column, summary, context)


def _upright(layout, obj, context) -> None:
    """Where the rest pose lies down in its own data and in the scene: what happens and what to do."""
    if obj is None or obj.mode == "EDIT":
        return
    warning = upright_warning(obj)
    if warning:
        box = layout.box()
        box.alert = True
        box.label(text="Not upright", icon="ERROR")
        _wrapped(box.column(align=True), warning, context)


def _wrapped(layout, text: str, context) -> None:
    """Label lines that fit the sidebar's width."""
    import textwrap

    width = max(20, int(context.region.width / 7)) if context.region else 40
    for line in textwrap.wrap(text, width):
        layout.label(text=line)


classes = (VIEW3D_PT_animax,)
