"""Training the AnimaX model (paper §3.2 and A.2): the tiny preset from scratch (procedural rigs or `animax dataset`
samples) and the full preset's LoRA adapter on a local Wan2.1.

Stages, in order: ``vae`` (the tiny preset's video autoencoder), ``joint`` (paper stage 1: the joint
video-pose model on single views), ``multiview`` (paper stage 2: base frozen; camera embeddings
and multi-view attention trained on four views). ``python -m backend.train`` runs them
(docs/training.md).
"""
