"""``animax eval``: its arguments and its run. Light to import: models and scikit-learn load only
when the command runs, so that the other ``animax`` commands stay quick to start."""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from backend.arguments import number, output_folder
from backend.model.presets import TINY

from . import HELDOUT_SPLITS, SPLITS

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "model" / "weights" / "tiny"
DEFAULT_COUNT = 12  # clips per split: about 15-30 min for both splits on a 2-core CPU at 20 steps
COLUMNS = (("accuracy", "action acc.", "{:.0%}"), ("detected", "joints detected", "{:.0%}"),
           ("reprojection_px", "reproj. px", "{:.2f}"), ("bone_drift_pct", "bone drift %", "{:.2f}"),
           ("smoothness", "accel. / truth", "{:.2f}"), ("mpjpe_pct", "MPJPE % radius", "{:.1f}"))


def table(rows: dict[str, dict]) -> str:
    """A Markdown table of summaries keyed by a row name."""
    lines = ["| run | clips | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "| --- | ---: |" + " ---: |" * len(COLUMNS)]
    for name, s in rows.items():
        cells = ("n/a" if s[key] is None else fmt.format(s[key]) for key, _, fmt in COLUMNS)
        lines.append(f"| {name} | {s['clips']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class EvalError(ValueError):
    """The model to score cannot be used; the text says which file and why."""


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="tiny model directory (default: the shipped one)")
    parser.add_argument("--count", type=number(minimum=1), default=DEFAULT_COUNT,
                        help=f"clips per split (default {DEFAULT_COUNT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clips, the classifier and the sampler")
    parser.add_argument("--steps", type=number(minimum=1), help="denoising steps (default: the tiny preset's 20)")
    parser.add_argument("--guidance", type=number(float, minimum=1),
                        help="image guidance scale, 1 turns it off (default: the tiny preset's 3.0)")
    parser.add_argument("--text-guidance", type=number(float, minimum=1),
                        help="guidance on the prompt; 1 turns it off (default: the model's own, in its animax.json)")
    parser.add_argument("--guidance-end", type=number(float, above=0, maximum=1), default=1.0,
                        help="share of the steps, from the first, that are guided (default 1: all)")
    parser.add_argument("--sampler", choices=("euler", "unipc"), default="euler",
                        help="the scheduler: euler (the preset's) or unipc (Wan's multistep solver)")
    parser.add_argument("--size", type=number(minimum=16), default=TINY.size,
                        help=f"view size in pixels (default the tiny preset's {TINY.size}; the VAE and the transformer "
                             "are convolutional and rotary, so any size runs)")
    parser.add_argument("--device", default="cpu", help="where the model runs, e.g. cuda (default cpu)")
    parser.add_argument("--text-cache", help="precomputed prompt embeddings (python -m backend.train text-cache) "
                                             "instead of the MiniLM encoder, for machines without it")
    parser.add_argument("--processes", type=number(minimum=1), default=1,
                        help="processes that reconstruct and score the clips (default 1)")
    parser.add_argument("--split", choices=[*SPLITS, "both"], default="both",
                        help="both: the two held-out splits, families and proportions (default); "
                             "heldout-rests: the training families modelled in other rest poses")
    parser.add_argument("--out", type=output_folder, default="eval_out",
                        help="folder for the results JSON and the GIFs (default eval_out)")
    parser.add_argument("--results", help="name of the results JSON in --out (default results_model.json or "
                                          "results_oracle.json)")
    parser.add_argument("--gifs", type=number(minimum=0), default=3, help="GIFs per split (default 3)")
    parser.add_argument("--oracle", nargs="?", const="truth", choices=("truth", "vae"),
                        help="score the ground-truth pose maps instead of a model (the reconstruction's ceiling); "
                             "`--oracle vae`: after a round trip through the --model's VAE (the VAE's ceiling)")
    parser.add_argument("--classifier-clips", type=number(minimum=50), default=2000,
                        help="ground-truth clips the action classifier learns from (default 2000)")
    parser.add_argument("--save-videos", metavar="DIR", type=output_folder,
                        help="keep each clip's generated pose-map videos in DIR, to score them again with --videos")
    parser.add_argument("--videos", metavar="DIR",
                        help="score the videos that --save-videos kept in DIR instead of generating (no model runs; "
                             "the same --seed, and --count at most what was saved)")


def splits_of(args) -> list[str]:
    """The splits ``--split`` names; ``both`` is the two held-out ones."""
    return list(HELDOUT_SPLITS) if args.split == "both" else [args.split]


def _write_report(args, report: dict, default_name: str) -> Path:
    """``report`` as JSON in ``--out``, named ``--results`` or ``default_name``."""
    path = Path(args.out) / (args.results or default_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def _check_arguments(args) -> None:
    """Refuse at once what would fail only after the model and the classifier have loaded (a minute)."""
    if args.videos and (args.oracle or args.save_videos):
        raise EvalError("--videos scores saved videos: it goes with neither --oracle nor --save-videos")
    if args.videos and not Path(args.videos).is_dir():
        raise EvalError(f"--videos folder not found: {args.videos}; give the folder that --save-videos wrote")
    if not args.videos and args.oracle != "truth" and not Path(args.model).is_dir():
        raise EvalError(f"{args.model} is not a folder; --model takes a tiny model directory such as "
                        f"{DEFAULT_MODEL}")
    if args.text_cache and not Path(args.text_cache).is_file():
        raise EvalError(f"--text-cache file not found: {args.text_cache}; make one with "
                        "`python -m backend.train text-cache`")


def _generator(args):
    """The generator under test and what it is (``about``: the report's description of it)."""
    from backend.model.checked_files import WeightsError
    from backend.model.loading import load_tiny
    from backend.model.presets import TINY
    from backend.model.samplers import make_scheduler

    from .evaluate import SavedVideosMissing, model_generator, oracle_generator, saved_generator, vae_oracle_generator

    if args.videos:
        try:
            generate, about = saved_generator(args.videos)
        except SavedVideosMissing as exc:
            raise EvalError(str(exc)) from None
        return generate, dict(about, generator=f"{about['generator']}, saved in {args.videos}")
    steps = TINY.num_inference_steps if args.steps is None else args.steps
    guidance = TINY.guidance_scale if args.guidance is None else args.guidance
    about = {"generator": "oracle" if args.oracle == "truth" else "oracle through the VAE",
             "kind": {None: "model", "truth": "oracle", "vae": "vae_oracle"}[args.oracle],
             "model": None if args.oracle == "truth" else str(args.model), "steps": None, "guidance": None,
             "text_guidance": None, "sampler": args.sampler, "guidance_end": None}
    if args.oracle != "truth":
        try:
            pipeline = load_tiny(args.model, text_encoder=args.text_cache is None and not args.oracle).to(args.device)
        except WeightsError as exc:
            raise EvalError(f"{exc}; --model takes a tiny model directory such as {DEFAULT_MODEL}") from None
    if args.oracle:
        return (oracle_generator if args.oracle == "truth" else vae_oracle_generator(pipeline)), about
    pipeline.scheduler = make_scheduler(args.sampler)
    pipeline.set_progress_bar_config(disable=True)  # a line a clip says how far it is; bars per clip clutter logs
    embed = None
    if args.text_cache:
        from backend.train.text import TextCache

        cache = TextCache(args.text_cache)
        embed = lambda prompt: cache[[prompt]][:, :pipeline.config.max_sequence_length]  # noqa: E731
    text_guidance = pipeline.config.text_guidance_scale if args.text_guidance is None else args.text_guidance
    about.update(steps=steps, guidance=guidance, text_guidance=text_guidance, guidance_end=args.guidance_end,
                 generator=f"model ({steps} {args.sampler} steps, guidance {guidance:g}, prompt guidance "
                           f"{text_guidance:g}" + (f", guided until {args.guidance_end:.0%})"
                                                   if args.guidance_end < 1 else ")"))
    return model_generator(pipeline, steps, guidance, args.seed, text_guidance, args.guidance_end, embed), about


def eval_command(args) -> None:
    _check_arguments(args)
    from .classifier import train_classifier
    from .evaluate import SavedVideosMissing, evaluate, saving_generator, scoring_pool
    from .gifs import write_gif

    generate, about = _generator(args)
    if args.save_videos:
        generate = saving_generator(generate, args.save_videos, about)
    print(f"training the action classifier on {args.classifier_clips} ground-truth clips", flush=True)
    classifier = train_classifier(args.seed, args.classifier_clips)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = splits_of(args)
    name, kind = about["generator"], about["kind"]
    report = {**{key: about[key] for key in ("generator", "model", "steps", "guidance", "text_guidance",
                                             "sampler", "guidance_end")},
              "seed": args.seed, "classifier_clips": args.classifier_clips, "splits": {}}
    with scoring_pool(args.processes, classifier) if args.processes > 1 else nullcontext() as pool:
        for split in splits:
            try:
                result = evaluate(generate, args.count, args.seed, split, classifier, keep=args.gifs,
                                  log=lambda line: print(line, flush=True), pool=pool, size=args.size)
            except SavedVideosMissing as exc:  # a clip that --videos lacks
                raise EvalError(str(exc)) from None
            report["splits"][split] = {"summary": result.summary, "families": result.families, "clips": result.clips}
            for i, (item, videos, motion) in enumerate(result.examples):
                write_gif(out / f"{kind}_{split}_{i}.gif", item, videos, motion)
    path = _write_report(args, report, f"results_{kind}.json")
    print(table({f"{name}, {split}": report["splits"][split]["summary"] for split in splits}))
    families = {f"{split}, {family}": summary for split in splits
                for family, summary in report["splits"][split]["families"].items()}
    print("\nper family:\n" + table(families))
    for row, summary in families.items():
        print(f"{row}: read as " + ", ".join(f"{label} {n}" for label, n in summary["predicted"].items()))
    print(f"wrote {path}")
