"""``animax-worker``: the command line of the worker, for a broker (``server.py``) or standalone
with a broker of its own in front (``standalone.py``), alone or split by views
(``view_parallel_worker.py``); ``animax-worker keygen`` writes CurveZMQ keys."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from animax_addon.core.cameras import AZIMUTHS_DEG
from animax_addon.core.client import DEFAULT_ADDRESS, curve_keys
from backend.arguments import (
    ArgumentParser, curve_files_problem, full_model_problem, number, output_folder, zmq_address,
)

from .pipeline_loading import load_pipeline
from .security import check_address, keygen
from .server import BROKER_KEYS_HINT
from .standalone import serve


def keygen_main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="animax-worker keygen",
                            description="Write a CurveZMQ key pair: NAME.key (public) and NAME.key_secret.")
    parser.add_argument("directory", type=output_folder)
    parser.add_argument("--name", default="worker", help="file name stem (default worker)")
    args = parser.parse_args(argv)
    if not args.name or Path(args.name).name != args.name:
        parser.error(f"--name is a file name stem without folders, got {args.name!r}")
    public, secret = keygen(args.directory, args.name)
    print(f"wrote {public} (public: give it to the other side) and {secret} (secret: keep it here)")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keygen"]:
        return keygen_main(argv[1:])
    parser = ArgumentParser(
        prog="animax-worker", description="Run the AnimaX generation worker ('animax-worker keygen DIR' writes "
                                          "CurveZMQ keys).")
    parser.add_argument("--address", type=zmq_address, default=DEFAULT_ADDRESS,
                        help="the address clients connect to (this worker's own broker binds it); off loopback only "
                             "with --curve-secret and --allow")
    parser.add_argument("--broker", type=zmq_address,
                        help="connect to this broker's worker address instead of binding --address; needs "
                             "--server-key and --client-key")
    parser.add_argument("--server-key", help="with --broker: the broker's public key file (BROKER.key)")
    parser.add_argument("--client-key", help="with --broker: this worker's secret key file (WORKER.key_secret, "
                                             "from keygen), its WORKER.key in the broker's --allow-workers folder")
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny",
                        help="tiny (default, runs on a CPU) or full (Wan2.1-T2V-1.3B + AnimaX adapter)")
    parser.add_argument("--wan", help="--model full: the diffusers-format Wan2.1-T2V-1.3B directory")
    parser.add_argument("--adapter", help="--model full: the AnimaX adapter directory")
    parser.add_argument("--fast", action="store_true",
                        help="sample with Wan's UniPC: 10 steps, image guidance on the first half (full size: 64 s "
                             "instead of 397 s on an H100; docs/benchmarks.md)")
    parser.add_argument("--view-parallel", type=int, default=1, metavar="N",
                        help="split each job's 4 views over N GPUs (1, 2 or 4; one process a GPU): a shorter wait "
                             "for one job. For more jobs an hour, run one worker a GPU instead (animax-serve)")
    parser.add_argument("--queue-size", type=number(minimum=1), default=8)
    parser.add_argument("--curve-secret", help="this worker's NAME.key_secret (from keygen): turns on CurveZMQ")
    parser.add_argument("--allow", help="folder of the client public keys (*.key) allowed to connect")
    parser.add_argument("--name", default="animax-worker", help="the name clients see in welcome")
    args = parser.parse_args(argv)
    if problem := full_model_problem(args.model, args.wan, args.adapter):
        parser.error(problem)
    views = len(AZIMUTHS_DEG)
    splits = [n for n in range(1, views + 1) if views % n == 0]
    if args.view_parallel not in splits:
        parser.error(f"--view-parallel must divide the {views} views of a job: {', '.join(map(str, splits[:-1]))} "
                     f"or {splits[-1]}, got {args.view_parallel}")
    if args.view_parallel > 1:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() < args.view_parallel:
            parser.error(f"--view-parallel {args.view_parallel} needs {args.view_parallel} GPUs, "
                         f"{torch.cuda.device_count()} are visible")
    if args.broker is None:
        if args.server_key or args.client_key:
            parser.error("--server-key/--client-key are the keys for joining a broker: use them with --broker")
        if problem := curve_files_problem(args.curve_secret, args.allow):
            parser.error(problem)
        try:
            check_address(args.address, curve=args.curve_secret is not None)
        except ValueError as exc:
            parser.error(str(exc))
    elif args.curve_secret or args.allow:
        parser.error("--curve-secret/--allow secure a standalone worker; behind a broker, secure the broker instead")
    elif not (args.server_key and args.client_key):
        parser.error(f"a worker joins its broker over CurveZMQ: {BROKER_KEYS_HINT}; animax-serve makes these keys "
                     "for the workers it starts")
    else:
        try:  # before the model loads, which takes a while
            curve_keys(args.server_key, args.client_key)
        except ValueError as exc:
            parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = dict(queue_size=args.queue_size, name=args.name, broker=args.broker, curve_secret=args.curve_secret,
                   allow=args.allow, server_public_key=args.server_key, client_secret_file=args.client_key)
    if args.view_parallel > 1:
        from .view_parallel_worker import serve_view_parallel  # torch: off the path of argument errors

        return serve_view_parallel(args, **options)
    from backend.model.checked_files import WeightsError

    try:
        pipeline, preset = load_pipeline(args)
    except WeightsError as exc:
        parser.error(str(exc))
    serve(args.address, pipeline, preset=preset, **options)


if __name__ == "__main__":
    main()
