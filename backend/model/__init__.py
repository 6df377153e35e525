"""The joint multi-view video-pose diffusion model (paper §3.1-3.2), on diffusers' Wan2.1."""

# Wan2.1 generates at 16 frames per second: every preset, training clip and raw result uses it. Kept
# here, importable without torch, for the CLI, the worker and the data builders.
MODEL_FPS = 16
