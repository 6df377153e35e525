"""The joint multi-view video-pose diffusion model (paper §3.1-3.2), on diffusers' Wan2.1."""
