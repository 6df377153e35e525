"""AnimaX for Blender: animate a rigged character from a text prompt.

Blender imports this package as the extension; ``core`` is bpy-free and shared with the worker.
"""

# The Blender modules are imported in register(), not here: the worker imports ``animax_addon.core``,
# which runs this file, on machines that have no bpy.


def _classes() -> tuple:
    from . import operators, panels, preferences, properties

    return (*properties.classes, *preferences.classes, *operators.classes, *panels.classes)


def register():
    import bpy

    from . import local_worker, operators, properties

    for cls in _classes():
        bpy.utils.register_class(cls)
    properties.register_properties()
    local_worker.register()
    bpy.app.handlers.load_pre.append(operators.cancel_job_on_load)


def unregister():
    import bpy

    from . import local_worker, operators, properties
    from .job import AnimateController

    bpy.app.handlers.load_pre.remove(operators.cancel_job_on_load)
    if AnimateController.active is not None:
        AnimateController.active.cancel()  # delivered at once, while the panel's state still exists
    local_worker.unregister()
    properties.unregister_properties()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
