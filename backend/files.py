"""Files written whole or not at all, for folders that a stopped job (or several machines) share."""

import os
import socket
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary path)``, then the file renamed to ``path``: a reader finds the whole file or none,
    and a write that fails or is killed leaves nothing under ``path``. The temporary name is unique to
    the machine and process, since machines sharing a folder may write the same file."""
    partial = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.partial")
    try:
        write(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
