"""Training recipes: the shipped tiny model's recipe states what its training.json records, a recipe
of the same shape scaled down runs stage by stage on the CPU, and the defaults are the shipped settings."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import backend.train.__main__ as train
from backend.data.dataset import build_samples
from backend.train.recipe import RESTARTABLE, RecipeError, load_recipe

SHIPPED = Path(train.__file__).resolve().parents[1] / "model" / "weights" / "tiny"
TINY_RECIPE = Path(train.__file__).resolve().parent / "recipes" / "tiny.json"


def parsed_defaults(*argv: str) -> dict:
    """``python -m backend.train run``'s settings for ``argv``, with the per-preset defaults filled in."""
    return vars(train.with_preset_defaults(train.build_parser().parse_args(["run", "--out", "unused", *argv])))


def shipped_stages() -> list[dict]:
    return json.loads((SHIPPED / "training.json").read_text())["stages"]


def test_the_defaults_are_the_shipped_models_last_settings():
    """Every setting of what is trained (data, batches, conditioning, loss, architecture) defaults to
    the shipped model's last training; only the step counts, the learning rate and where it starts
    from are the recipe's, stage by stage."""
    last = shipped_stages()[-1]["runs"][-1]["settings"]
    defaults = parsed_defaults()
    for key in ("preset", "seed", "samples", "vae_batch", "vae_lr", "batch", "multiview_batch", "multiview_lr",
                "rest_template_probability", "text_drop", "pose_weight", "pooled_text", "cast_share"):
        assert defaults[key] == last[key], key
    config = json.loads((SHIPPED / "transformer" / "config.json").read_text())
    assert defaults["blocks"] is None and train.TINY_BLOCKS == config["num_layers"]  # None: a kept transformer's own
    # None: a kept transformer's own; a new one generates the pose video alone, as the shipped one
    assert defaults["rgb_video"] is None and config["rgb_video"] is False
    guidance = json.loads((SHIPPED / "animax.json").read_text())["text_guidance_scale"]
    assert defaults["text_guidance_scale"] == guidance


def test_the_tiny_recipe_states_what_the_shipped_model_records():
    """Stage by stage, the recipe's settings are those of the run that finished the stage (where
    the record has them: the first stages predate some options, whose defaults they had; a stage
    without diffusion steps has no use for their settings), and the last stage builds the shipped
    transformer. A stage ends when its steps are done, or where its run's deadline stopped it and
    the next stage started from its model, as the record says."""
    recipe, stages = load_recipe(TINY_RECIPE), shipped_stages()
    described = {stage["name"]: stage.get("description", "") for stage in json.loads(TINY_RECIPE.read_text())["stages"]}
    assert [stage.name for stage in recipe.stages] == [stage["name"] for stage in stages]
    diffusion = (set(train.STAGE_DEFAULTS["tiny"]) | {"compile"}) - {"joint_steps", "multiview_steps"}
    for stage, shipped in zip(recipe.stages, stages):
        record = shipped["runs"][-1]
        assert record["finished"] or (record["steps"].get("multiview", 0) < stage.settings["multiview_steps"]
                                      and "deadline" in described[stage.name]), stage.name
        settings = vars(train.with_preset_defaults(train.build_parser().parse_args(stage.argv(Path("runs/tiny")))))
        unused = diffusion if settings["joint_steps"] == settings["multiview_steps"] == 0 else set()
        for key, value in settings.items():
            if key in record["settings"] and key not in set(RESTARTABLE) | unused:  # paths, split
                assert json.loads(json.dumps(value, default=str)) == record["settings"][key], (stage.name, key)
    config = json.loads((SHIPPED / "transformer" / "config.json").read_text())
    lineage = {}  # the architecture settings down to the last stage, each from the last stage that gives it
    for stage in recipe.stages:
        lineage.update({key: stage.settings[key] for key in ("blocks", "pooled_text", "rgb_video")
                        if key in stage.settings})
    assert (lineage["blocks"], lineage["pooled_text"], lineage["rgb_video"]) == \
        (config["num_layers"], config["pooled_text"], config["rgb_video"])
    last = recipe.stages[-1].settings
    assert json.loads((SHIPPED / "animax.json").read_text())["text_guidance_scale"] == last["text_guidance_scale"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "samples.npz"
    build_samples(2, seed=0, size=32, frames=5).save(path)
    return path


def scaled_recipe(directory: Path, dataset: Path) -> Path:
    """The tiny recipe's shape at toy sizes: a VAE; a transformer of 1 block; deepened to 2 with the
    pooled prompt; trained on; deepened to 3; trained on. The "trained on" stages take a learning
    rate of almost 0, so their model is the one they started from."""
    stage = lambda name, **settings: {"name": name, "settings": settings}  # noqa: E731
    recipe = {
        "settings": {"dataset": str(dataset), "vae_batch": 2, "batch": 2, "multiview_batch": 1, "joint_steps": 3,
                     "multiview_steps": 2, "compile": False, "text_guidance_scale": 2.0},
        "stages": [
            stage("vae", vae_steps=2, joint_steps=0, multiview_steps=0),
            stage("blocks-1", vae_from="vae", blocks=1, pooled_text=False, lr=1e-3),
            stage("blocks-2", vae_from="vae", transformer_from="blocks-1", blocks=2, pooled_text=True, lr=1e-3),
            stage("blocks-2-on", vae_from="vae", transformer_from="blocks-2", blocks=2, pooled_text=True, lr=1e-12),
            stage("blocks-3", vae_from="vae", transformer_from="blocks-2-on", blocks=3, pooled_text=True, lr=1e-3),
            stage("blocks-3-on", vae_from="vae", transformer_from="blocks-3", blocks=3, pooled_text=True, lr=1e-12),
        ],
    }
    path = directory / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def transformer(model: Path) -> tuple[dict, dict]:
    return (json.loads((model / "transformer" / "config.json").read_text()),
            load_file(model / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_a_recipe_runs_its_stages_in_order_each_from_the_last(dataset, tmp_path, capsys):
    recipe, out = scaled_recipe(tmp_path, dataset), tmp_path / "out"
    argv = ["recipe", str(recipe), "--out", str(out)]
    train.main(argv + ["--deadline-min", "1e-9"])  # stopped after the first step of the first stage
    assert "the same command continues" in capsys.readouterr().out
    assert [path.name for path in out.iterdir()] == ["vae"] and not train.recorded_runs(out / "vae")[0]["finished"]

    train.main(argv)
    printed = capsys.readouterr().out
    assert "--resume" in printed.splitlines()[0]  # the stopped stage goes on from its checkpoint
    lineage = json.loads((out / "model" / "training.json").read_text())
    assert lineage["recipe"] == str(recipe)
    assert [stage["name"] for stage in lineage["stages"]] == [stage.name for stage in load_recipe(recipe).stages]
    vae_runs = lineage["stages"][0]["runs"]
    assert [run["steps"] for run in vae_runs] == [{"vae": 1}, {"vae": 2}] and vae_runs[-1]["finished"]
    models = {}
    for number, stage in enumerate(lineage["stages"][1:], start=1):
        (run,) = stage["runs"]
        assert run["finished"] and run["steps"] == {"joint": 3, "multiview": 2}
        assert run["settings"]["vae_from"] == str(out / "vae" / "model")
        previous = lineage["stages"][number - 1]["name"]
        assert run["settings"]["transformer_from"] == (str(out / previous / "model") if number > 1 else None)
        assert "encode" not in run["seconds"] if number > 1 else "encode" in run["seconds"]  # encoded once
        models[stage["name"]] = transformer(out / stage["name"] / "model")
    depth = {name: (config["num_layers"], config["pooled_text"]) for name, (config, _) in models.items()}
    assert depth == {"blocks-1": (1, False), "blocks-2": (2, True), "blocks-2-on": (2, True), "blocks-3": (3, True),
                     "blocks-3-on": (3, True)}
    for kept, went_on in (("blocks-2", "blocks-2-on"), ("blocks-3", "blocks-3-on")):  # learning rate ~0
        before, after = models[kept][1], models[went_on][1]
        assert before.keys() == after.keys()
        assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-3) for k in before), went_on
    assert transformer(out / "model")[1].keys() == models["blocks-3-on"][1].keys()
    animax = json.loads((out / "model" / "animax.json").read_text())
    assert animax["text_guidance_scale"] == 2.0

    train.main(argv)  # finished: nothing trains again
    assert capsys.readouterr().out.count("finished earlier") == 6
    assert len(train.recorded_runs(out / "blocks-3-on")) == 1

    changed = json.loads(recipe.read_text())
    changed["stages"][-1]["settings"]["joint_steps"] = 4
    recipe.write_text(json.dumps(changed))
    with pytest.raises(SystemExit, match="blocks-3-on was trained with other settings \\(joint_steps\\)"):
        train.main(argv)


@pytest.mark.parametrize("change, message", [
    (lambda r: r["stages"][1]["settings"].update(transformer_from="later"), "takes transformer_from from 'later'"),
    (lambda r: r["stages"][0]["settings"].update(out="elsewhere"), "sets 'out', which the recipe command sets"),
    (lambda r: r["stages"].append(dict(r["stages"][0])), "two stages are named 'vae'"),
])
def test_a_recipe_that_cannot_run_says_why(tmp_path, change, message):
    recipe = json.loads(TINY_RECIPE.read_text())
    change(recipe)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_a_recipe_setting_that_run_does_not_take_stops_before_any_stage_trains(tmp_path):
    recipe = json.loads(TINY_RECIPE.read_text())
    recipe["stages"][-1]["settings"]["rest_variety"] = 0.3
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(SystemExit, match="stage 'cast' does not parse"):
        train.main(["recipe", str(path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
