"""What a server is started with: address, token, limits, budgets, models, output folder."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from canvaslab.errors import InputError

TOKEN_ENV = "CANVASLAB_TOKEN"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
# 16 characters of a random alphabet are ~80+ bits: out of reach of guessing over HTTP.
MIN_TOKEN_LENGTH = 16
# Characters that travel unchanged in a header, a cookie and a query string (base64 and hex included).
TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9._~+/=-]+")
TOKEN_HINT = "e.g. --token $(openssl rand -hex 16)"
# The server's own pixel limit, below the library's 179 MP: what one job may cost a shared worker
# (PatchMatch on 2048x2048 with a 10 % hole: ~15 s, ~1 GB; 4096x4096 took 60 s and 4.3 GB).
SERVER_MAX_PIXELS = 2048 * 2048


@dataclass
class ServerSettings:
    """Everything `create_app` needs; the CLI fills it from flags.

    `models` are the server's configured models (aliases, hub ids or paths): clients may name them
    (by the exact string or the file/folder name) and nothing else, unless `allow_downloads` also
    offers the built-in aliases (and lets a missing model be downloaded when first used). The first
    one is the default model of `engine`. `workers` is one thread per device.

    Cost bounds: `max_pixels` covers the uploads and every size a job works at; a running job is
    cancelled after `max_job_seconds` (0: never); a client has `request_timeout` seconds to send its
    headers and again to send its body; at most `max_connections` connections are served at once.
    """

    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    output: Path = field(default_factory=lambda: Path("canvaslab-server-output"))
    engine: str | None = None
    models: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)
    control_models: list[str] = field(default_factory=list)  # ControlNets clients may name (by file/folder name)
    ip_adapters: list[str] = field(default_factory=list)  # IP-Adapter weights files clients may name
    allow_downloads: bool = False
    queue_size: int = 64
    max_upload_mb: float = 50.0
    max_pixels: int = SERVER_MAX_PIXELS
    max_job_seconds: float = 300.0
    request_timeout: float = 60.0
    max_connections: int = 256
    cors_origins: list[str] = field(default_factory=list)
    workers: int = 1
    history: int = 200
    # What result files and job answers say about how they were made: "private" names the server's
    # models, LoRAs and inputs by name + sha256, never by the server's paths (see core.metadata).
    metadata: str = "private"
    # Mask models (SAM, CLIPSeg, detectors) clients may name for /api/v1/mask, /sam/* and the Select tool;
    # the first of each kind is the default. Folders or cached hub ids: never downloaded (masks.models).
    mask_models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.token is not None:
            check_token(self.token)
        if self.queue_size < 1:
            raise InputError(f"--queue-size must be at least 1, got {self.queue_size}")
        if self.max_upload_mb <= 0:
            raise InputError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if self.max_pixels < 64 * 64:
            raise InputError(f"--max-pixels must be at least 4096, got {self.max_pixels}")
        if self.max_job_seconds < 0:
            raise InputError(f"--max-job-seconds must be 0 (no limit) or more, got {self.max_job_seconds}")
        if self.request_timeout <= 0:
            raise InputError(f"--request-timeout must be positive, got {self.request_timeout}")
        if self.max_connections < 2:
            raise InputError(f"--max-connections must be at least 2, got {self.max_connections}")
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.metadata not in ("full", "private", "none"):
            raise InputError(f"--metadata must be full, private or none, got {self.metadata!r}")
        if self.history < 1:
            raise InputError(f"the job history must hold at least 1 job, got {self.history}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def check_token(token: str) -> None:
    """Refuse a token that is blank, short, or cannot travel in a header/cookie unchanged.

    A whitespace-only token used to count as "no token", so a public server ran with no
    authentication at all; any token given must now be a real one.
    """
    if not token.strip():
        raise InputError(f"the API token is empty or only whitespace: give a random secret of at least "
                         f"{MIN_TOKEN_LENGTH} characters ({TOKEN_HINT})")
    if not TOKEN_CHARACTERS.fullmatch(token):
        raise InputError("the API token has spaces, control or non-ASCII characters, which do not survive a header, "
                         f"cookie or address: use letters, digits and - . _ ~ + / = ({TOKEN_HINT})")
    if len(token) < MIN_TOKEN_LENGTH:
        raise InputError(f"the API token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH} ({TOKEN_HINT})")


def token_from_env(token: str | None) -> str | None:
    """The flag's token, else CANVASLAB_TOKEN (when set, even if blank: check_token refuses it), else None."""
    return token if token is not None else os.environ.get(TOKEN_ENV)


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse a weak token anywhere, and no token beyond loopback (anyone on the network could use the GPU)."""
    if token is not None:
        check_token(token)
    elif not is_loopback(host):
        raise InputError(
            f"listening on {host} needs an API token: pass --token SECRET or set {TOKEN_ENV} "
            "(or bind to 127.0.0.1)"
        )
