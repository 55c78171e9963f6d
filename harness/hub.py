"""Whether the Hugging Face hub can be used right now, decided in seconds: transformers and datasets otherwise
retry an unreachable hub for about a minute before failing."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def offline(*variables: str) -> bool:
    """Whether any of the named offline switches (default HF_HUB_OFFLINE) is set to a true value."""
    return any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in (variables or ("HF_HUB_OFFLINE",)))


def _endpoint():
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def host() -> str:
    return _endpoint().hostname or "huggingface.co"


def reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connection to the hub's host (HF_ENDPOINT), within `timeout_s`."""
    endpoint = _endpoint()
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False
