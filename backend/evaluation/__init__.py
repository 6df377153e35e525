"""Held-out evaluation of the generator: action recognition, multi-view consistency, smoothness.

The splits live here, light to import, so the command line can list them without loading models.
"""

from backend.data.rig_world import HELDOUT_FAMILIES, TRAIN_FAMILIES

SPLITS = {"heldout-families": HELDOUT_FAMILIES, "heldout-proportions": TRAIN_FAMILIES, "heldout-rests": TRAIN_FAMILIES}
"""Families never trained on; the training families drawn from another seed range (new proportions);
and the same, each modelled in another rest pose (a frame of one of its motions, a rest no training
clip has)."""
HELDOUT_SPLITS = ("heldout-families", "heldout-proportions")
