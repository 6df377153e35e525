"""AnimaX worker: model, reconstruction, training and the request loop (no bpy)."""
