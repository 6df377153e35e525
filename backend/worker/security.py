"""Which addresses a server may bind, and CurveZMQ: keys, allow-lists and their ZAP handler.

Plain TCP is allowed on loopback only. Anywhere else the server needs a CURVE key pair (its
``.key_secret`` file) and an allow-list folder of client public keys (``*.key``); both files come
from ``animax-worker keygen``. A broker's socket for workers is a CURVE server always, with an
allow-list of worker keys: any local process can reach a loopback port, and a worker reads every
job it gets and answers with results the broker passes on.

The allow-lists are checked by ``Authenticator``, a ZAP handler (ZeroMQ RFC 27) that the server's
own IO loop polls beside its sockets, so no thread of its own is needed. It logs a refused key
once a minute at most (``LogThrottle``), so a flood of handshakes cannot fill the log.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

log = logging.getLogger("animax.security")
KEYGEN_HINT = "make keys with 'animax-worker keygen DIR --name NAME'"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks, in each context (RFC 27)


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


class LogThrottle:
    """Says whether a line about ``key`` may be logged now: once per key per ``period_s``, and at
    most ``most`` lines a period in all (a peer can make a fresh key for every try), which also
    bounds the keys remembered."""

    def __init__(self, period_s: float = 60.0, most: int = 100):
        self.period_s, self.most = period_s, most
        self._logged: dict[object, float] = {}  # key: when, oldest first (a key is never moved)

    def allow(self, key: object, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        while self._logged:
            oldest, when = next(iter(self._logged.items()))
            if now - when < self.period_s:
                break
            del self._logged[oldest]
        if key in self._logged or len(self._logged) >= self.most:
            return False
        self._logged[key] = now
        return True


class Authenticator:
    """The ZAP handler of one ZeroMQ context: a CURVE handshake with a server socket of the
    context succeeds only for a client key in that socket's allow-list.

    Make it before any server socket binds (a CURVE server with no ZAP handler accepts every
    key), poll ``socket`` in the loop that owns the servers and call ``handle`` when it has
    input; a handshake waits for that answer. ``close`` it after the servers.
    """

    def __init__(self, context: zmq.Context):
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)
        self._allowed: dict[bytes, frozenset[bytes]] = {}  # Z85 public keys by ZAP domain
        self._refusals = LogThrottle()

    def serve(self, socket: zmq.Socket, secret_file: str | Path, allow_dir: str | Path, domain: str,
              peers: str = "client") -> None:
        """Make ``socket`` a CURVE server with the key pair in ``secret_file`` that accepts only
        the ``peers``' public keys (``*.key``) in ``allow_dir``, read now. Call before binding."""
        public_key, secret_key = load_keys(secret_file, secret=True)
        try:
            allowed = frozenset(zmq.auth.load_certificates(allow_dir)) if Path(allow_dir).is_dir() else frozenset()
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the {peers} keys in {allow_dir} ({exc}); {KEYGEN_HINT}") from exc
        if not allowed:
            raise ValueError(f"the allow-list folder {allow_dir} holds no {peers} public keys (*.key); copy each "
                             f"{peers}'s NAME.key there ({KEYGEN_HINT})")
        self._allowed[domain.encode()] = allowed
        socket.zap_domain = domain.encode()
        socket.curve_secretkey = secret_key
        socket.curve_publickey = public_key
        socket.curve_server = True

    def handle(self) -> None:
        """Answer every waiting request: 200 for a CURVE client key on its socket's list, else 400."""
        while True:
            try:
                request = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # version, request id, domain, address, routing id, mechanism, credentials (the CURVE client key)
            request_id, domain, mechanism, credentials = request[1], request[2], request[5], request[6:]
            key = z85.encode(credentials[0]) if mechanism == b"CURVE" and len(credentials) == 1 else None
            if key is not None and key in self._allowed.get(domain, ()):
                self.socket.send_multipart([b"1.0", request_id, b"200", b"OK", key, b""])
            else:
                self.socket.send_multipart([b"1.0", request_id, b"400", b"key not allowed", b"", b""])
                self._log_refusal(domain, mechanism, key)

    def _log_refusal(self, domain: bytes, mechanism: bytes, key: bytes | None) -> None:
        # The first characters name a key well enough to find its file, and no more need be logged.
        if self._refusals.allow((domain, mechanism, key)):
            mechanism = mechanism.decode("ascii", "replace")
            who = f"{mechanism} key {key[:8].decode()}..." if key is not None else f"a {mechanism} peer"
            log.warning("refused %s on ZAP domain '%s': not in its allow-list (logged once a minute at most)",
                        who, domain.decode("ascii", "replace"))

    def close(self) -> None:
        self.socket.close(0)


@dataclass(frozen=True)
class LinkKeys:
    """The key files of a broker's link to its workers, as ``link_keys`` makes them."""

    broker_secret: Path  # the broker's --worker-secret
    broker_public: Path  # each worker's --server-key
    worker_secret: Path  # each worker's --client-key
    allow: Path  # the broker's --allow-workers: the folder with the workers' public key


def link_keys(folder: str | Path) -> LinkKeys:
    """A key pair for a broker and one for its workers (shared by them) in ``folder``, and the
    workers' public key alone in the allow-list folder ``folder/workers``: what ``animax-serve``
    hands its broker and the workers it starts."""
    folder = Path(folder)
    broker_public, broker_secret = keygen(folder, "broker")
    worker_public, worker_secret = keygen(folder, "worker")
    allow = folder / "workers"
    allow.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(worker_public, allow / worker_public.name)
    return LinkKeys(broker_secret, broker_public, worker_secret, allow)
