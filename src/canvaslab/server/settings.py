"""What a server is started with: address, token, limits, models, output folder."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from canvaslab.errors import InputError

TOKEN_ENV = "CANVASLAB_TOKEN"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


@dataclass
class ServerSettings:
    """Everything `create_app` needs; the CLI fills it from flags.

    `models` are the server's configured models (aliases, hub ids or paths): clients may name them
    (by the exact string or the file/folder name) besides the built-in aliases, and nothing else.
    The first one is the default model of `engine`. `workers` is one thread per device.
    """

    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    output: Path = field(default_factory=lambda: Path("canvaslab-server-output"))
    engine: str | None = None
    models: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)
    queue_size: int = 64
    max_upload_mb: float = 50.0
    max_pixels: int = 4096 * 4096
    cors_origins: list[str] = field(default_factory=list)
    workers: int = 1
    history: int = 500

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.queue_size < 1:
            raise InputError(f"--queue-size must be at least 1, got {self.queue_size}")
        if self.max_upload_mb <= 0:
            raise InputError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if self.max_pixels < 64 * 64:
            raise InputError(f"--max-pixels must be at least 4096, got {self.max_pixels}")
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.token is not None and not self.token.strip():
            self.token = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def token_from_env(token: str | None) -> str | None:
    """The flag's token, else CANVASLAB_TOKEN, else None."""
    return token or os.environ.get(TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (anyone on the network could use the GPU)."""
    if token is None and not is_loopback(host):
        raise InputError(
            f"listening on {host} needs an API token: pass --token SECRET or set {TOKEN_ENV} "
            "(or bind to 127.0.0.1)"
        )
