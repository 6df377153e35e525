"""How template renders look, shared by Blender's renders and the training renderer."""

TEMPLATE_BACKGROUND = (64, 64, 64)
"""sRGB background grey of every template render: the training renderer and Blender agree on it,
so the model sees the same backdrop on procedural training data and on the user's character."""
