"""AnimaX for Blender: animate a rigged character from a text prompt.

Blender imports this package as the extension; ``core`` is bpy-free and shared with the worker.
"""
