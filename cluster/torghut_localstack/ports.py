"""Free TCP ports on 127.0.0.1 for the local servers.

Ports come from below the kernel's ephemeral range, so an outgoing connection can't grab one
between the pick and the server's bind. A port that is taken is skipped, never an error, and a
port is handed out at most once per process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

HOST = "127.0.0.1"
_LOW, _HIGH = 20000, 32767
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_ATTEMPTS = 500

_lock = threading.Lock()
_handed_out: set[int] = set()


def _candidate_range() -> tuple[int, int]:
    try:
        ephemeral_low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _LOW, _HIGH
    return _LOW, max(_LOW + 1000, min(_HIGH, ephemeral_low - 1))


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    low, high = _candidate_range()
    rng = random.SystemRandom()
    with _lock:
        for _ in range(_ATTEMPTS):
            port = rng.randint(low, high)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free TCP port on {HOST} in {low}-{high} after {_ATTEMPTS} tries")


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports."""
    return [free_port() for _ in range(count)]
