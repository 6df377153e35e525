"""Training recipes: every stage of a model's lineage, with its settings, in one JSON file.

A recipe (``backend/train/recipes/tiny.json`` is the shipped tiny model's) holds ``settings`` shared
by its stages and a list of ``stages``, each a ``name`` and its own ``settings``. A setting is a
``python -m backend.train run`` option under its argument name (``joint_steps`` for
``--joint-steps``; true / false for switches). ``vae_from`` and ``transformer_from`` name an earlier
stage, whose model the stage starts from. ``python -m backend.train recipe RECIPE --out OUT`` trains
each stage into ``OUT/<name>`` in order, and ``OUT/model`` is the last stage's model with the
lineage's training records (``training.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RUNNER_OPTIONS = ("out", "resume", "deadline_min")
"""Options the recipe command sets for each stage itself."""
STAGE_REFERENCES = ("vae_from", "transformer_from")
"""Settings that name an earlier stage (its ``model`` directory)."""
RESTARTABLE = ("command", "out", "resume", "deadline_min", "processes", "loader_workers", "text_cache") + \
    STAGE_REFERENCES
"""Settings that may differ between the invocations of one stage (paths and how the work is split); the
others must stay what the stage began with."""


class RecipeError(ValueError):
    """The recipe file cannot be run; the text says where and why."""


@dataclass(frozen=True)
class Stage:
    name: str
    settings: dict

    def argv(self, out: Path) -> list[str]:
        """``python -m backend.train``'s arguments for this stage, trained into ``out / name``."""
        argv = ["run", "--out", str(out / self.name)]
        for key, value in self.settings.items():
            flag = "--" + key.replace("_", "-")
            if key in STAGE_REFERENCES:
                value = out / value / "model"
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            elif value is not None:
                argv += [flag, str(value)]
        return argv


@dataclass(frozen=True)
class Recipe:
    path: Path
    stages: tuple[Stage, ...]


def load_recipe(path: str | Path) -> Recipe:
    """The stages of the recipe at ``path``, each with the shared settings under its own."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read a recipe: {exc}") from None
    shared = data.get("settings", {})
    stages: list[Stage] = []
    for number, entry in enumerate(data.get("stages", []), start=1):
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name or name == "model":
            raise RecipeError(f"{path}: stage {number} needs a name that is a folder name other than 'model', "
                              f"not {name!r}")
        if name in {s.name for s in stages}:
            raise RecipeError(f"{path}: two stages are named {name!r}")
        settings = {**shared, **entry.get("settings", {})}
        for key in RUNNER_OPTIONS:
            if key in settings:
                raise RecipeError(f"{path}: stage {name!r} sets {key!r}, which the recipe command sets itself")
        for key in STAGE_REFERENCES:
            if key in settings and settings[key] not in {s.name for s in stages}:
                raise RecipeError(f"{path}: stage {name!r} takes {key} from {settings[key]!r}, which is not an "
                                  f"earlier stage")
        stages.append(Stage(name, settings))
    if not stages:
        raise RecipeError(f"{path}: a recipe needs at least one stage")
    return Recipe(path, tuple(stages))


def changed_settings(recorded: dict, settings: dict) -> list[str]:
    """The settings of ``settings`` (a run's, as ``training.json`` records them) that differ from
    ``recorded``, an earlier invocation's of the same stage."""
    return sorted(key for key in set(recorded) | set(settings)
                  if key not in RESTARTABLE and recorded.get(key) != settings.get(key))
