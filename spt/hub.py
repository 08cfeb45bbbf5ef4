"""Is the Hugging Face Hub usable right now? Decided fast, for models and datasets alike."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the Hub endpoint: an offline machine fails in seconds, not minutes
    (huggingface_hub retries a refused connection five times, ~25 s)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; don't second-guess it
    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
        host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def offline_reason() -> str | None:
    """Why the Hub must not be tried now (an offline variable set now, read at call time rather
    than at import, or an unreachable endpoint), or None."""
    set_vars = [v for v in OFFLINE_VARS if truthy(os.environ.get(v))]
    if set_vars:
        return f"{set_vars[0]} is set"
    if not hub_reachable():
        from huggingface_hub import constants

        return f"{constants.ENDPOINT} is unreachable"
    return None
