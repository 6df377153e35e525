"""Training data for the tiny preset: a procedural world of rigged creatures and labelled motions."""
