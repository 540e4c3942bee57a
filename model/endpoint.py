"""Where a producer publishes and who may attach: addresses, socket files and CURVE keys.

An ADDRESS names the producer's two sockets:

- ``ipc://PATH``: data at ``PATH``, control at ``PATH.control``; socket files of mode 0600,
  so only this user on this machine can connect. The default, ``default_address()``, lies in
  a directory of this user's (mode 0700).
- ``tcp://HOST:PORT``: data on ``PORT``, control on ``PORT + 1``. A loopback ``HOST``
  (``127.0.0.1``, ``::1``, ``localhost``) takes connections from this machine only.

Any other address (another interface, ``*``, ``0.0.0.0``) must be asked for
(``allow_remote``), and then viewers authenticate with ZeroMQ CURVE: the producer's key
pair and the viewer public keys it accepts live in a key directory (files of mode 0600), and
a viewer needs an attach key: the producer's public key and a viewer secret key, as 128 hex
digits. The usual remote pattern keeps the loopback address and forwards both ports with
``ssh -L`` instead (README, "Watching a headless job").
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tempfile
from pathlib import Path

import zmq
from zmq.utils import z85

IPC_PATH_MAX = 107  # bytes of a Unix socket path (sun_path less its terminating NUL)
KEY_BYTES = 32


class AddressError(ValueError):
    """An address or key that cannot be used; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Endpoints:
    address: str  # as the user wrote it
    data: str  # ZeroMQ endpoint of the data socket
    control: str  # ZeroMQ endpoint of the control socket
    loopback: bool  # only this machine can connect (ipc, or tcp on a loopback host)
    ipv6: bool = False

    @property
    def files(self) -> tuple[str, ...]:
        """The socket files (ipc)."""
        return tuple(e.removeprefix("ipc://") for e in (self.data, self.control) if _ipc(e))


def _ipc(endpoint: str) -> bool:
    return endpoint.startswith("ipc://")


def default_address() -> str:
    """``ipc://`` in this user's runtime directory (``$XDG_RUNTIME_DIR``, else the temporary
    directory), in a subdirectory of mode 0700 created here."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    directory = Path(base) / f"qwen3vl-dash-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise AddressError(f"{directory} belongs to another user or is open to others")
    return f"ipc://{directory / 'dash'}"


def parse(address: str) -> Endpoints:
    """The endpoints of ``address``; raises ``AddressError``."""
    if address.startswith("ipc://"):
        path = address.removeprefix("ipc://")
        if not path:
            raise AddressError(f"{address}: no socket path")
        control = path + ".control"
        if len(os.fsencode(control)) > IPC_PATH_MAX:
            raise AddressError(f"{address}: socket path longer than {IPC_PATH_MAX - 8} bytes")
        return Endpoints(address, f"ipc://{path}", f"ipc://{control}", loopback=True)
    match = re.fullmatch(r"tcp://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(\d+)", address)
    if not match:
        raise AddressError(f"{address}: expected tcp://HOST:PORT or ipc://PATH")
    host, port = match[1], int(match[2])
    if not 0 < port < 65535:
        raise AddressError(f"{address}: the port must be 1-65534 (the control socket is PORT + 1)")
    return Endpoints(
        address,
        f"tcp://{host}:{port}",
        f"tcp://{host}:{port + 1}",
        loopback=_loopback(host.strip("[]")),
        ipv6=host.startswith("["),
    )


def check_bind(endpoints: Endpoints, allow_remote: bool) -> None:
    """Raise ``AddressError`` unless ``endpoints`` may be bound: loopback, or asked for."""
    if not (endpoints.loopback or allow_remote):
        raise AddressError(
            f"{endpoints.address} is not a loopback address: binding it needs --allow-remote"
            " (viewers then authenticate with CURVE keys)"
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface name, a host name or "*"
        return False


def bind(socket: zmq.Socket, endpoint: str) -> None:
    """Bind ``socket``; an ipc socket file is created with mode 0600 (the umask is narrowed
    while it is created, then the mode is set again in case the file system ignores it)."""
    if not _ipc(endpoint):
        socket.bind(endpoint)
        return
    umask = os.umask(0o177)
    try:
        socket.bind(endpoint)
    finally:
        os.umask(umask)
    os.chmod(endpoint.removeprefix("ipc://"), 0o600)


# --- CURVE keys ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerKeys:
    """A producer's CURVE keys (Z85 bytes, as ZeroMQ takes them)."""

    public: bytes
    secret: bytes
    allowed: frozenset[bytes]  # viewer public keys
    attach_key: str  # the generated viewer's attach key
    directory: Path


def default_key_dir() -> Path:
    """Where ``server_keys`` keeps the keys by default: ``qwen3vl-dash/curve`` in
    ``$XDG_CONFIG_HOME`` (``~/.config`` without it)."""
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "qwen3vl-dash" / "curve"


def server_keys(directory: str | Path | None = None) -> ServerKeys:
    """The keys in ``directory`` (default ``default_key_dir()``), made on first use:

    - ``server.secret``: the producer's public and secret key;
    - ``viewer.key``: the attach key of a viewer made with it (what ``--serve`` prints);
    - ``viewers.allowed``: the viewer public keys that may attach, one per line (Z85); add
      a line per further viewer key.
    """
    directory = Path(directory) if directory else default_key_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = directory / "server.secret"
    if not server.exists():
        public, secret = zmq.curve_keypair()
        viewer_public, viewer_secret = zmq.curve_keypair()
        _write_private(server, f"{public.decode()} {secret.decode()}\n")
        _write_private(directory / "viewer.key", attach_key(public, viewer_secret) + "\n")
        _write_private(directory / "viewers.allowed", viewer_public.decode() + "\n")
    try:
        public, secret = (w.encode() for w in _read_private(server).split())
        allowed = frozenset(
            w.encode() for w in _read_private(directory / "viewers.allowed").split()
        )
        key = _read_private(directory / "viewer.key").strip()
    except (OSError, ValueError) as e:
        raise AddressError(f"the keys in {directory}: {e}") from None
    return ServerKeys(public, secret, allowed, key, directory)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _read_private(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        raise ValueError(f"{path.name} is readable by others (chmod 600 it)")
    return path.read_text()


def attach_key(server_public: bytes, viewer_secret: bytes) -> str:
    """128 hex digits: the producer's public key, then the viewer's secret key."""
    return (z85.decode(server_public) + z85.decode(viewer_secret)).hex()


@dataclasses.dataclass(frozen=True)
class ViewerKey:
    """A viewer's CURVE keys (Z85 bytes)."""

    server_public: bytes
    public: bytes
    secret: bytes


def viewer_key(text: str) -> ViewerKey:
    """The keys of an attach key, given as its 128 hex digits or as ``@FILE`` holding them;
    raises ``AddressError``."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text().strip()
        except OSError as e:
            raise AddressError(f"--key {text}: {e.strerror}") from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 2 * KEY_BYTES:
        raise AddressError("--key: expected the 128 hex digits that --serve printed, or @FILE")
    server_public, secret = (z85.encode(raw[i : i + KEY_BYTES]) for i in (0, 32))
    return ViewerKey(server_public, zmq.curve_public(secret), secret)


def secure_server(socket: zmq.Socket, keys: ServerKeys) -> None:
    """Make ``socket`` a CURVE server with the producer's ``keys`` (before it binds)."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def secure_viewer(socket: zmq.Socket, key: ViewerKey) -> None:
    """Make ``socket`` a CURVE client of the producer ``key`` names (before it connects)."""
    socket.curve_serverkey = key.server_public
    socket.curve_publickey = key.public
    socket.curve_secretkey = key.secret
