"""Running yt-dlp: an argument list (never a shell) in its own process group, killed on timeout, on
stop, or when this process exits first."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time

_LIVE: set = set()  # running yt-dlp processes, killed if this process exits first
_LIVE_LOCK = threading.Lock()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _kill_live() -> None:
    with _LIVE_LOCK:
        for proc in list(_LIVE):
            _kill_group(proc)


class RunTimeout(Exception):
    """The call outlived its timeout (its process group is killed)."""


def run_argv(argv: list[str], timeout: float, stop: threading.Event) -> tuple[int, str]:
    """Run an argument list (no shell) in its own process group; kill the group on timeout or stop."""
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                _, err = proc.communicate(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                return proc.returncode, err.decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline or stop.is_set():
                    _kill_group(proc)
                    proc.communicate()
                    if stop.is_set():
                        return -9, "stopped"
                    raise RunTimeout() from None
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
