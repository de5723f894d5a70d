"""The README's "Using it" section, followed as a new Celery user follows it, from its own
code blocks: change the section and this test runs the changed commands.

What is changed on the way, and only this: the database is a fresh SQLite file; the API
listens on a free loopback port over plain HTTP (no certificate here), so the app's URL is
``edge+http://:TOKEN@127.0.0.1:PORT`` and its ``broker_use_ssl`` line goes; ``TOKEN`` is
the worker token in the site's copy of the app and the central token in the centre's;
``# …`` comments are left out. Everything else runs as written: ``db migrate``, ``api``,
both ``token create``, the app module, the worker, ``inspect``/``status`` at the centre,
the routing lines, and the ``edge-kombu queues`` warning for a queue nobody serves.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import requests

from tests.helpers import BIN, ROOT, Process, free_port, wait_for

pytestmark = [pytest.mark.sqlite_only, pytest.mark.timeout(240)]

README = ROOT / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


def commands(shell: str) -> list[list[str]]:
    """The commands of a shell block: continuations joined, comments left out."""
    joined = re.sub(r"\\\n\s*", " ", shell)
    return [shlex.split(line, comments=True) for line in joined.splitlines()
            if shlex.split(line, comments=True)]


class Walkthrough:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        for key in [k for k in self.env if k.startswith("EDGE_KOMBU_")]:
            del self.env[key]
        self.processes: list[Process] = []
        self.tokens: dict[str, str] = {}

    def run(self, args: list[str], *, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=120, cwd=cwd or self.tmp, env=env or self.env)
        assert done.returncode == 0, f"{shlex.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def background(self, args: list[str], name: str, *, cwd: Path | None = None,
                   env: dict | None = None) -> Process:
        process = Process([str(BIN / args[0]), *args[1:]], self.tmp / f"{name}.log",
                          env=env or self.env, cwd=cwd or self.tmp)
        self.processes.append(process.start())
        return process

    def central_site(self, block: str) -> None:
        for args in commands(block):
            if args[0] == "export":
                key, _, _value = args[1].partition("=")
                self.env[key] = f"sqlite:///{self.tmp / 'edge.db'}"  # not the README's server
            elif args[:2] == ["edge-kombu", "api"]:
                self.api = self.background(self.serve_here(args), "api")
                wait_for(self.healthy, timeout=30, message="the API answers")
            elif args[:3] == ["edge-kombu", "token", "create"]:
                role = "worker" if "--worker" in args else "central"
                self.tokens[role] = self.run(args).stdout.strip().splitlines()[-1]
            else:
                self.run(args)
        assert set(self.tokens) == {"worker", "central"}, "the section issues both tokens"

    def serve_here(self, args: list[str]) -> list[str]:
        """``edge-kombu api`` on this test's port, without the certificate options."""
        served, skip = [], False
        for arg in args:
            if skip:
                skip = False
            elif arg in ("--certfile", "--keyfile"):
                skip = True
            elif served and served[-1] == "--bind":
                served.append(f"127.0.0.1:{self.port}")
            else:
                served.append(arg)
        return served

    def healthy(self) -> bool:
        assert self.api.alive(), self.api.log()
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/api/v1/health",
                                timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def app_copy(self, block: str, role: str) -> tuple[Path, dict]:
        """The README's app module with ``role``'s token, in a directory of its own."""
        url = f"edge+http://:{self.tokens[role]}@127.0.0.1:{self.port}"
        code = block.replace("edge+https://:TOKEN@central.example.com:8443", url)
        code = "\n".join(line for line in code.splitlines() if "broker_use_ssl" not in line)
        assert url in code and "TOKEN" not in code
        home = self.tmp / role
        home.mkdir()
        (home / "myapp.py").write_text(code + "\n")
        return home, dict(self.env, PYTHONPATH=f"{home}{os.pathsep}{ROOT}")

    def listed(self, node: str) -> bool:
        workers = json.loads(self.run(["edge-kombu", "workers", "--json"]).stdout)
        return any(w["name"] == node and w["state"] == "idle" for w in workers)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.args[1:3] == ["-A", "myapp"] and process.alive():
                os.kill(process.pid, 15)  # the main process: a warm shutdown, as Ctrl-C
                try:
                    process.proc.wait(20)
                except subprocess.TimeoutExpired:
                    pass
            process.stop()


@pytest.fixture
def walkthrough(tmp_path):
    walk = Walkthrough(tmp_path)
    yield walk
    walk.stop()


def test_the_readme_using_it_section_runs_as_written(walkthrough):
    blocks = code_blocks(section("Using it"))
    shells = [code for lang, code in blocks if lang == ""]
    pythons = [code for lang, code in blocks if lang == "python"]
    app_block = next(code for code in pythons if "Celery(" in code)
    routing_block = next(code for code in pythons if "task_routes" in code)
    celery_block = next(code for code in shells if "celery -A myapp worker" in code)

    walkthrough.central_site(shells[0])
    site, site_env = walkthrough.app_copy(app_block, "worker")
    centre, centre_env = walkthrough.app_copy(app_block, "central")

    for args in commands(celery_block):
        if args[3] == "worker":  # at the site
            worker = walkthrough.background(args, "worker", cwd=site, env=site_env)
            node = args[args.index("-n") + 1].replace("%h", os.uname().nodename)
            # At the default log level the worker says nothing once ready: the centre sees it.
            wait_for(lambda w=worker, node=node: w.alive() and walkthrough.listed(node),
                     timeout=90, message="the worker in edge-kombu workers")
        else:  # at the centre
            done = walkthrough.run(args, cwd=centre, env=centre_env)
            assert node in done.stdout, done.stdout
    assert "pong" in walkthrough.run(["celery", "-A", "myapp", "inspect", "ping"], cwd=centre,
                                     env=centre_env).stdout

    # Routing, as the README shows it, from the centre: both ways reach the worker.
    script = centre / "publish.py"
    tree = ast.parse(routing_block)
    script.write_text(
        "from myapp import add, app\n"
        "import ast, json\n"
        f"tree = ast.parse({routing_block!r})\n"
        "last = tree.body.pop()\n"
        "exec(compile(tree, 'README', 'exec'))\n"
        "sent = eval(compile(ast.Expression(last.value), 'README', 'eval'))\n"
        "results = [add.delay(i, i) for i in range(20)]  # routed by task_routes\n"
        "print(json.dumps([sent.get(timeout=60), [r.get(timeout=60) for r in results]]))\n"
        "app.send_task('myapp.add', (1, 1), queue='celery')  # nobody serves celery\n"
    )
    assert isinstance(tree.body[-1], ast.Expr), "the routing block ends with a call"
    done = walkthrough.run(["python", str(script)], cwd=centre, env=centre_env)
    assert json.loads(done.stdout.splitlines()[-1]) == [4, [2 * i for i in range(20)]]

    queues = walkthrough.run(["edge-kombu", "queues"]).stdout
    celery_row = next(row for row in queues.splitlines() if row.split()[0] == "celery")
    assert "no live worker serves this queue" in celery_row, queues

    listed = json.loads(walkthrough.run(["edge-kombu", "workers", "--json"]).stdout)
    assert [(w["name"], w["kind"], w["queues"]) for w in listed] == [
        (node, "celery", ["remote"])]
