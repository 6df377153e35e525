"""The joint multi-view video-pose diffusion model (paper §3.1-3.2), on diffusers' Wan2.1.

Modules: ``presets`` (the presets and their constants, free of torch), ``transformer_animax`` and
``pipeline_animax`` (the diffusers model and pipeline), ``samplers`` (their schedulers),
``loading`` (building and loading pipelines offline), ``adapter`` (the AnimaX adapter format and its
LoRA), ``checked_files`` (reading weight files and configs with an error naming each bad file),
``view_parallel`` (one generation's views split over ranks).
"""

from .presets import FULL, MODEL_FPS, PRESETS, TINY, Preset

__all__ = ["FULL", "MODEL_FPS", "PRESETS", "TINY", "Preset"]
