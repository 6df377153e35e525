"""From generated multi-view pose maps to 3D joints and bone rotations."""
