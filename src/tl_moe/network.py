"""A quick check that a network endpoint answers, so a run can refuse an unreachable one before any pass."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

__all__ = ["PROBE_TIMEOUT_S", "unreachable_reason"]

PROBE_TIMEOUT_S = 3.0
"""Seconds a probe waits for name resolution plus a TCP connection before calling the endpoint unreachable."""


def _connect(host: str, port: int, timeout: float, outcome: list) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            outcome.append(None)
    except OSError as error:
        outcome.append(error.strerror or type(error).__name__)


def unreachable_reason(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why nothing answers at ``url`` (scheme://host[:port]/...), or None when a TCP connection opens.

    Only a TCP connection is opened (no request is sent). Name resolution runs in a thread, so the
    whole probe takes at most about ``timeout`` seconds even where DNS hangs.
    """
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname
    if not host:
        return "no host in the address"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "the port is not a number"
    outcome: list = []
    worker = threading.Thread(target=_connect, args=(host, port, timeout, outcome), daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    if not outcome:
        return f"no answer within {timeout:g} s"
    if outcome[0] is not None:
        return f"{outcome[0]} ({host}:{port})"
    return None
