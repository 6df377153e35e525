"""Animate (modal; Esc cancels), Cancel, switching variations and opening a preview."""


import time

import bpy
from bpy.app.handlers import persistent
from bpy.props import IntProperty

from .job import AnimateController, AnimateError, use_action

_TIMER_S = 0.1
_BACKGROUND_POLL_S = 0.05


def target_armature(context):
    """The panel's armature, else the active object when it is an armature."""
    settings = context.scene.animax
    if settings.armature is not None:
        return settings.armature
    obj = context.active_object
    return obj if obj is not None and obj.type == "ARMATURE" else None


def animate_blocker(context) -> str:
    """Why Animate cannot run now ('' when it can)."""
    if AnimateController.active is not None and AnimateController.active.running:
        return "An AnimaX job is running; wait for it to finish or press Cancel"
    if target_armature(context) is None:
        return "Select an armature, or pick one in the AnimaX panel"
    if not context.scene.animax.prompt.strip():
        return "Type a prompt: what should the character do?"
    return ""


def _redraw(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class ANIMAX_OT_animate(bpy.types.Operator):
    """Generate a new Action for the armature from the prompt"""

    bl_idname = "animax.animate"
    bl_label = "Animate"
    # No UNDO flag: the controller pushes the one undo step itself, named after the prompt,
    # when the Actions are written (the operator may end long after it started).
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        reason = animate_blocker(context)
        if reason:
            cls.poll_message_set(reason)
        return not reason

    def _start(self, context) -> AnimateController | None:
        controller = AnimateController(context, target_armature(context))
        try:
            controller.start()
        except AnimateError as exc:
            self.report({"ERROR"}, str(exc))
            return None
        if controller.frame.warning:  # before the job: a rest pose lying down (also in the panel)
            self.report({"WARNING"}, controller.frame.warning)
        return controller

    def _finish(self, controller: AnimateController) -> set[str]:
        if controller.outcome == "FINISHED":
            self.report({"INFO"}, controller.message)
            return {"FINISHED"}
        self.report({"WARNING"} if controller.outcome == "CANCELLED" else {"ERROR"}, controller.message)
        return {"CANCELLED"}

    def execute(self, context):
        # Without an event loop (background mode, or a script) no timer runs: deliver here, to the end.
        controller = self._start(context)
        if controller is None:
            return {"CANCELLED"}
        while not controller.poll():
            time.sleep(_BACKGROUND_POLL_S)
        return self._finish(controller)

    def invoke(self, context, event):
        self._controller = self._start(context)
        if self._controller is None:
            return {"CANCELLED"}
        self._controller.deliver_on_timer(context.window)
        # This window's timer only wakes the operator to redraw the panel and report the outcome.
        self._timer = context.window_manager.event_timer_add(_TIMER_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._controller.cancel()
            return {"RUNNING_MODAL"}
        if event.type == "TIMER":
            _redraw(context)
            if self._controller.outcome is not None:
                context.window_manager.event_timer_remove(self._timer)
                return self._finish(self._controller)
        return {"PASS_THROUGH"}

    def cancel(self, context):
        # Blender ends the modal operator this way when another file is loaded (the job itself is
        # abandoned by cancel_job_on_load): its window timer goes with it.
        context.window_manager.event_timer_remove(self._timer)


# Persistent: Blender drops the other load handlers when a file loads, so only the first load would be seen.
@persistent
def cancel_job_on_load(*_args) -> None:
    """``load_pre``: a running job is abandoned before another file replaces this one. Loading drops
    the ``bpy.app.timers`` function that delivers it, which would leave Animate blocked, and what it
    delivered later would reach the new file's data."""
    if AnimateController.active is not None:
        AnimateController.active.abandon()


class ANIMAX_OT_cancel(bpy.types.Operator):
    """Stop the running AnimaX job; no Action is written"""

    bl_idname = "animax.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if AnimateController.active is None or not AnimateController.active.running:
            cls.poll_message_set("No AnimaX job is running")
            return False
        return True

    def execute(self, context):
        AnimateController.active.cancel()
        return {"FINISHED"}


def _variation(context, index: int):
    results = context.scene.animax.results
    return results[index] if 0 <= index < len(results) else None


class ANIMAX_OT_use_variation(bpy.types.Operator):
    """Make this variation's Action the armature's active Action"""

    bl_idname = "animax.use_variation"
    bl_label = "Use Variation"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(name="Variation", min=0)

    @classmethod
    def poll(cls, context):
        if target_armature(context) is None:
            cls.poll_message_set("Select the animated armature")
            return False
        return True

    def execute(self, context):
        entry = _variation(context, self.index)
        if entry is None or entry.action is None:
            self.report({"ERROR"}, "This variation's Action no longer exists; animate again")
            return {"CANCELLED"}
        use_action(target_armature(context), entry.action)
        context.scene.animax.result_index = self.index
        return {"FINISHED"}


class ANIMAX_OT_preview(bpy.types.Operator):
    """Play the generated views of this variation in an Image Editor"""

    bl_idname = "animax.preview"
    bl_label = "Preview"
    bl_options = {"REGISTER"}

    index: IntProperty(name="Variation", min=0)
    rgb: bpy.props.BoolProperty(name="RGB", description="Show the RGB videos instead of the pose maps")

    @classmethod
    def poll(cls, context):
        if context.window is None or bpy.app.background:
            cls.poll_message_set("The preview needs a Blender window")
            return False
        return True

    def execute(self, context):
        entry = _variation(context, self.index)
        name = "" if entry is None else (entry.preview_rgb if self.rgb else entry.preview)
        image = bpy.data.images.get(name)
        if image is None:
            self.report({"ERROR"}, "This variation has no such preview; tick 'RGB Preview' for RGB videos "
                                   "and animate again")
            return {"CANCELLED"}
        space = _image_editor(context)
        space.image = image
        space.image_user.frame_start = 1
        space.image_user.frame_duration = image.get("animax_frames", 1)
        space.image_user.use_cyclic = True
        space.image_user.use_auto_refresh = True
        return {"FINISHED"}


def _image_editor(context):
    """An open Image Editor, or a new window turned into one."""
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                return area.spaces.active
    bpy.ops.wm.window_new()
    area = context.window_manager.windows[-1].screen.areas[0]
    area.type = "IMAGE_EDITOR"
    return area.spaces.active


classes = (ANIMAX_OT_animate, ANIMAX_OT_cancel, ANIMAX_OT_use_variation, ANIMAX_OT_preview)
