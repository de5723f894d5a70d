"""Child processes of the demos: each in a session of its own, stopped by PID.

Every child gets its own process group, so a Ctrl-C in the terminal reaches only the
demo, which then stops its children in order: SIGTERM to the child itself (a Celery
worker or gunicorn master shuts its own pool down), SIGKILL to its group if it does not
exit in time, and SIGKILL to whatever of the group is left after it did.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path

import click


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_child(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the child, wait up to ``timeout``, then clear its whole process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def start_child(stack: ExitStack, args: list[str], env: dict, log: Path,
                stop_timeout: float = 20.0, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``args`` with output to ``log``; ``stack`` stops it when it closes."""
    out = stack.enter_context(open(log, "wb"))
    proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                            start_new_session=True)
    stack.callback(stop_child, proc, stop_timeout)
    return proc


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               proc: subprocess.Popen | None = None, log: Path | None = None,
               interval: float = 0.2):
    """Return the first true value of ``predicate``; fail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise click.ClickException(f"{what} exited early (code {proc.returncode}); "
                                       f"its log {log}:\n{tail}")
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise click.ClickException(f"{what}: not done after {timeout:.0f}s"
                               + (f"; see {log}" if log else ""))
