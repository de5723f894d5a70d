"""Reading deploy/systemd's units as systemd does, for the tests that check and run them."""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path

from tests.helpers import BIN, ROOT

UNITS = ROOT / "deploy" / "systemd"
#: Where the units expect the programs (a venv); the tests use this installation's.
INSTALLED = "/opt/edge-kombu/bin/"


def directives(unit: Path) -> dict[str, list[str]]:
    """``Key`` → its values in order, across sections (systemd allows repeated keys)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def expand(command: str, instance: str | None, env: dict[str, str]) -> list[str]:
    """An Exec line as systemd runs it: without its "-" prefix, specifiers and ``${VAR}``
    (one word each) replaced, the program at this installation's path."""
    command = command.removeprefix("-").replace(INSTALLED, f"{BIN}/")
    if instance is not None:
        command = command.replace("%i", instance)
    command = command.replace("%H", socket.gethostname())
    words = shlex.split(command)
    expanded = []
    for word in words:
        for name in re.findall(r"\$\{(\w+)\}", word):
            assert name in env, f"{command}: ${{{name}}} has no value"
            word = word.replace(f"${{{name}}}", env[name])
        expanded.append(word)
    return expanded


def unit_environment(unit_file: Path, instance: str | None, env_file: dict[str, str],
                     tmp: Path, directories: dict[str, str]) -> dict[str, str]:
    """The unit's Environment= defaults (%i filled in), then the environment file, as
    systemd applies them; ``directories`` (variable -> name): the directories systemd
    would create (StateDirectory=, RuntimeDirectory=) made under ``tmp`` instead."""
    env = {}
    for value in directives(unit_file)["Environment"]:
        key, _, val = value.partition("=")
        env[key] = val if instance is None else val.replace("%i", instance)
    for key, name in directories.items():
        assert env[key].startswith(("/var/lib/edge-kombu", "/run/edge-kombu")), (key, env[key])
        (tmp / name).mkdir(exist_ok=True)
        env[key] = str(tmp / name)
    env.update(env_file)
    return env
