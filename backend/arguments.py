"""Argument parsing shared by the command-line tools (``animax``, ``animax-worker``, ``animax-broker``,
``animax-serve``): a mistake in the arguments is answered like every other user error, with one line
on stderr and exit status 2, before anything slow runs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from animax_addon.core.client import DEFAULT_ADDRESS


class ArgumentParser(argparse.ArgumentParser):
    """argparse without the usage block on errors: one line that names the argument and the problem.

    The usage stays one ``--help`` away; printed before every error it buries the sentence that
    says what is wrong (the ``eval`` usage alone is a dozen lines).
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind=int, minimum: float | None = None, above: float | None = None, maximum: float | None = None):
    """An argparse type: a finite ``kind`` (int or float) >= ``minimum``, > ``above``, <= ``maximum``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be more than {above}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def shard(text: str) -> tuple[int, int]:
    """An argparse type: ``I/N``, the I-th (0-based) of N processes or machines sharing work, as (I, N)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"I must be from 0 to N-1 in I/N, got {text!r}")
    return index, count


def zmq_address(text: str) -> str:
    """An argparse type: a ZeroMQ endpoint, ``tcp://HOST:PORT`` or ``ipc://PATH``.

    A bare ``HOST:PORT`` means TCP, as people write it; ZeroMQ itself would refuse it with an
    ``Invalid argument`` error, and would take a port past 65535 as "any free port".
    """
    address = text.strip()
    if "://" not in address:
        address = f"tcp://{address}"
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc") and rest:
        return address
    host, _, port = rest.rpartition(":")
    if scheme != "tcp" or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected tcp://HOST:PORT with a port from 1 to 65535 "
                                         f"(e.g. {DEFAULT_ADDRESS}) or ipc://PATH, got {text!r}")
    return address


def _blocking_file(path: Path) -> Path | None:
    """``path``'s nearest existing parent where that is a file (so no folder can be made there)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_file(text: str) -> Path:
    """An argparse type: a file to write, refused at once if a folder (or a file) is in the way."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name inside it")
    if blocking := _blocking_file(path):
        raise argparse.ArgumentTypeError(f"{blocking} is a file, not a folder; choose another place for {text}")
    return path


def output_folder(text: str) -> Path:
    """An argparse type: a folder to write into (made if missing), refused at once if a file is in the way."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; give a folder to write into")
    if blocking := _blocking_file(path):
        raise argparse.ArgumentTypeError(f"{blocking} is a file, not a folder; choose another place for {text}")
    return path


def full_model_problem(model: str, wan: str | None, adapter: str | None) -> str | None:
    """What is wrong with ``--model full --wan DIR --adapter DIR`` of a worker or server, or None;
    checked before anything starts (loading the model takes a while)."""
    if model != "full":
        return None
    if not (wan and adapter):
        return "--model full needs --wan DIR (Wan2.1-T2V-1.3B, diffusers format) and --adapter DIR"
    for option, folder in (("--wan", wan), ("--adapter", adapter)):
        if not Path(folder).is_dir():
            return f"{option} folder not found: {folder}"
    return None


def curve_files_problem(secret: str | None, allow: str | None, peers: str = "client") -> str | None:
    """What is wrong with ``--curve-secret FILE --allow DIR`` of a worker or broker (or a
    broker's ``--worker-secret FILE --allow-workers DIR``: ``peers`` "worker"), or None.

    Checked before a model loads (which takes a while), not when the socket is made.
    """
    if (secret is None) != (allow is None):
        return "CurveZMQ needs both --curve-secret FILE and --allow DIR"
    if secret is None:
        return None
    from backend.worker.security import KEYGEN_HINT, load_keys

    try:
        load_keys(secret, secret=True)
    except ValueError as exc:
        return str(exc)
    if not any(Path(allow).glob("*.key")):
        return (f"the allow-list folder {allow} holds no {peers} public keys (*.key); copy each {peers}'s "
                f"NAME.key there ({KEYGEN_HINT})")
    return None
