"""Which addresses a server may bind, and CurveZMQ for the ones off loopback.

Plain TCP is allowed on loopback only. Anywhere else the server needs a CURVE key pair (its
``.key_secret`` file) and an allow-list folder of client public keys (``*.key``), checked by a
ZAP authenticator thread; both files come from ``animax-worker keygen``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

KEYGEN_HINT = "make keys with 'animax-worker keygen DIR --name NAME'"


def check_address(address: str, curve: bool = False) -> None:
    """Refuse plain TCP on anything but loopback: a remote server needs CurveZMQ (``curve``)."""
    if address.startswith(("ipc://", "inproc://")):
        return
    if not address.startswith("tcp://"):
        raise ValueError(f"unsupported address {address!r}; use tcp://127.0.0.1:<port>")
    if curve:
        return
    host = address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing to serve plain TCP on {address!r}: only loopback (127.0.0.1) is allowed "
                         "without encryption; a remote server requires CurveZMQ: start it with "
                         f"--curve-secret SERVER.key_secret --allow DIR_OF_CLIENT_KEYS ({KEYGEN_HINT})")


def keygen(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, to hand out; mode 0644) and ``NAME.key_secret`` (keep private;
    mode 0600, readable by its owner only) in ``directory``. A folder made here is made 0700; an
    existing one keeps its mode."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    old_secret = directory / f"{name}.key_secret"
    if old_secret.exists():  # overwritten below: narrow an older, wider file before the new key goes in
        os.chmod(old_secret, 0o600)
    umask = os.umask(0o077)  # a new secret file is never readable by others, not even for a moment
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(umask)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return Path(public), Path(secret)


def load_keys(path: str | Path, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) from a key file written by ``keygen``; ``secret`` requires the secret half."""
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the CurveZMQ key file {path} ({exc}); {KEYGEN_HINT}") from exc
    if secret and secret_key is None:
        raise ValueError(f"{path} holds only a public key; pass the .key_secret file ({KEYGEN_HINT})")
    return public_key, secret_key


def curve_server(context: zmq.Context, sockets: list[zmq.Socket], secret_file: str | Path,
                 allow_dir: str | Path) -> ThreadAuthenticator:
    """Make ``sockets`` CURVE servers that accept only the client keys in ``allow_dir``.

    Call before binding. The returned authenticator serves the whole ``context`` (one per
    context: give each server its own); stop it after closing the sockets.
    """
    public_key, secret_key = load_keys(secret_file, secret=True)
    if not Path(allow_dir).is_dir() or not any(Path(allow_dir).glob("*.key")):
        raise ValueError(f"the allow-list folder {allow_dir} holds no client public keys (*.key); copy each "
                         f"client's NAME.key there ({KEYGEN_HINT})")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(allow_dir))
    for socket in sockets:
        socket.curve_secretkey = secret_key
        socket.curve_publickey = public_key
        socket.curve_server = True
    return auth
