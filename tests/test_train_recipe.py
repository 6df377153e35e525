"""The training defaults are the shipped tiny model's settings."""

import json
from pathlib import Path

import backend.train.__main__ as train

SHIPPED = Path(train.__file__).resolve().parents[1] / "model" / "weights" / "tiny"


def parsed_defaults(*argv: str) -> dict:
    """``python -m backend.train run``'s settings for ``argv``, with the per-preset defaults filled in."""
    return vars(train.with_preset_defaults(train.build_parser().parse_args(["run", "--out", "unused", *argv])))


def test_the_defaults_are_the_shipped_models_last_settings():
    """Every setting of what is trained (data, batches, conditioning, loss, architecture) defaults to
    the shipped model's last training; only the step counts, the learning rate and where it starts
    from are the recipe's, stage by stage."""
    last = json.loads((SHIPPED / "training.json").read_text())["sessions"][-1]["settings"]
    defaults = parsed_defaults()
    for key in ("preset", "seed", "samples", "vae_batch", "vae_lr", "batch", "multiview_batch", "multiview_lr",
                "rest_template_probability", "text_drop", "pose_weight", "pooled_text", "blocks_built"):
        expected = last["blocks"] if key == "blocks_built" else last[key]
        value = (defaults["blocks"] or train.TINY_BLOCKS) if key == "blocks_built" else defaults[key]
        assert value == expected, key
    guidance = json.loads((SHIPPED / "animax.json").read_text())["text_guidance_scale"]
    assert defaults["text_guidance_scale"] == guidance
