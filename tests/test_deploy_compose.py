"""The compose files of deploy/compose, checked without a container engine: every file
they mount or build from exists (or, when the operator creates it, docs/deploy.md says
how), every variable they use is in .env.example, every setting they pass is one
edge-kombu or its provider reads, every dependency names a service that can satisfy its
condition; their nginx config is the shipped one but for the service names. Where
``docker compose`` works, ``docker compose config`` must accept them too."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from edge_kombu.airflow.provider import get_provider_info
from tests.helpers import ROOT

pytestmark = pytest.mark.sqlite_only

COMPOSE = ROOT / "deploy" / "compose"
FILES = ["central.yaml", "edge-site.yaml"]
#: Created by the operator at installation (keys, certificates, tokens), never shipped.
OPERATOR_MADE = ("certs/", "secrets/")
DOCS = ROOT / "docs" / "deploy.md"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def load(name: str) -> dict:
    return yaml.safe_load((COMPOSE / name).read_text())  # resolves the << merge keys


def env_example() -> dict[str, str]:
    lines = (COMPOSE / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def host_path(spec: str) -> str | None:
    """The host side of a bind mount ``./x:/y[:ro]``; None for a named volume."""
    source = spec.split(":", 1)[0]
    return source if source.startswith((".", "/")) else None


def check_exists(relative: str, where: str) -> None:
    path = (COMPOSE / relative).resolve()
    shown = relative.removeprefix("./")
    if shown.startswith(OPERATOR_MADE):
        assert f"deploy/compose/{shown}" in DOCS.read_text(), \
            f"{where}: {shown} is made by the operator, but docs/deploy.md does not say so"
    else:
        assert path.exists(), f"{where}: {relative} does not exist"


@pytest.mark.parametrize("name", FILES)
def test_every_referenced_file_exists(name):
    compose = load(name)
    for service, spec in compose["services"].items():
        if "build" in spec:
            context = (COMPOSE / spec["build"]["context"]).resolve()
            assert (context / spec["build"]["dockerfile"]).is_file(), service
            assert (context / "setup.cfg").is_file(), f"{service}: context is not the project"
        else:
            # An image of ours is built by a service of the same file.
            if spec["image"].startswith("edge-kombu"):
                assert any(s.get("image") == spec["image"] and "build" in s
                           for s in compose["services"].values()), service
        for volume in spec.get("volumes", []):
            if (source := host_path(volume)) is not None:
                check_exists(source, f"{name} {service}")
            else:
                assert volume.split(":")[0] in compose.get("volumes", {}), (service, volume)
        for secret in spec.get("secrets", []):
            assert secret in compose["secrets"], (service, secret)
    for secret, spec in compose.get("secrets", {}).items():
        check_exists(spec["file"], f"{name} secret {secret}")


@pytest.mark.parametrize("name", FILES)
def test_every_dependency_exists_and_can_be_met(name):
    services = load(name)["services"]
    for service, spec in services.items():
        for target, needs in (spec.get("depends_on") or {}).items():
            assert target in services, f"{service} depends on unknown {target}"
            assert target != service
            condition = needs["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} never completes"
            else:
                assert condition == "service_started", condition


def test_every_variable_is_in_env_example():
    example = env_example()
    used = set()
    for name in FILES:
        for var, op, _default in VARIABLE.findall((COMPOSE / name).read_text()):
            used.add(var)
            if op != ":-":  # no default: .env must set it
                assert var in example, f"{name}: ${{{var}}} is not in .env.example"
    assert set(example) <= used, f"unused in .env.example: {set(example) - used}"


def test_every_setting_is_read_by_edge_kombu():
    """``EDGE_KOMBU_*`` names appear in edge-kombu's code, ``AIRFLOW__EDGE__*`` ones are
    options of the provider: a misspelt setting would be silently ignored."""
    source = "\n".join(p.read_text() for p in (ROOT / "edge_kombu").rglob("*.py"))
    edge_options = set(get_provider_info()["config"]["edge"]["options"])
    for name in FILES:
        for service, spec in load(name)["services"].items():
            for key in spec.get("environment", {}):
                if key.startswith("EDGE_KOMBU_"):
                    assert f'"{key}"' in source, (service, key)
                elif key.startswith("AIRFLOW__EDGE__"):
                    option = key.removeprefix("AIRFLOW__EDGE__").lower()
                    assert option in edge_options, (service, key)


def test_central_runs_what_the_issue_asks():
    services = load("central.yaml")["services"]
    commands = {name: " ".join(spec.get("command", [])) for name, spec in services.items()}
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert any(c == f"airflow {component}" for c in commands.values()), component
    apis = [n for n, c in commands.items() if c.startswith("edge-kombu api ")]
    assert len(apis) == 2, commands
    nginx = services["nginx"]
    assert set(nginx["depends_on"]) == set(apis)
    site = (COMPOSE / "nginx" / "edge-kombu.conf").read_text()
    assert sorted(re.findall(r"server (\S+):8080", site)) == sorted(apis)
    for spec in services.values():
        env = spec.get("environment", {})
        if "AIRFLOW__CORE__EXECUTOR" in env:
            assert env["AIRFLOW__CORE__EXECUTOR"] == "edge_kombu.airflow.EdgeExecutor"
    # The image's Airflow is the one edge-kombu's airflow extra pins.
    pinned = re.search(r"apache-airflow==(\S+)", (ROOT / "setup.cfg").read_text()).group(1)
    assert f"apache/airflow:{pinned}-" in (COMPOSE / "Dockerfile").read_text()


def test_edge_site_worker_has_its_credential_and_no_database():
    [worker] = load("edge-site.yaml")["services"].values()
    assert worker["command"][:4] == ["celery", "-A", "edge_kombu", "worker"]
    env = worker["environment"]
    assert env["EDGE_KOMBU_TOKEN_FILE"] == "/run/secrets/edge-token"
    assert worker["secrets"] == ["edge-token"]
    assert not any("DB_URL" in k or "SQL_ALCHEMY" in k for k in env), env


def directives(conf: str) -> list[str]:
    """The config's directives, without comments and the lines compose changes."""
    kept = []
    for line in conf.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not re.match(r"(server \S+:8080 |server_name |access_log )", line):
            kept.append(line)
    return kept


def test_compose_nginx_config_is_the_shipped_one():
    shipped = (ROOT / "deploy" / "nginx" / "edge-kombu.conf").read_text()
    compose = (COMPOSE / "nginx" / "edge-kombu.conf").read_text()
    assert directives(compose) == directives(shipped)


@pytest.mark.parametrize("name", FILES)
def test_docker_compose_accepts_it(name, tmp_path):
    try:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True,
                               timeout=30)
    except FileNotFoundError:
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("docker compose is not available")
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(COMPOSE / ".env.example"), "-f",
         str(COMPOSE / name), "config", "--quiet", "--no-path-resolution"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
