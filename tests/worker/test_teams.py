"""Airflow's multi-team mode on the edge link, without Airflow (its executor's part is in
tests/airflow/test_teams.py): real API, real ``celery -A edge_kombu`` workers started
with a team, tokens created with ``edge-kombu token create --team``."""

from __future__ import annotations

import subprocess

import pytest
from kombu import Connection

from edge_kombu import errors
from tests.helpers import BIN, ROOT, wait_for

pytestmark = pytest.mark.timeout(180)


def create_token(db_url: str, *args: str) -> str:
    done = subprocess.run([str(BIN / "edge-kombu"), "token", "create", *args, "--db", db_url],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def consume_once(api, token: str, queue: str) -> None:
    """Take one message from ``queue`` with ``token``, as a worker's consume would."""
    with Connection(api.url.replace("http://", f"edge+http://:{token}@")) as conn:
        conn.default_channel.basic_get(queue)


@pytest.fixture
def team_tokens(api, db_url):
    return {team: create_token(db_url, "--worker", f"{team}-*", "--team", team,
                               "--queues", "remote,extra")
            for team in ("team_a", "team_b")}


def test_each_teams_worker_takes_only_its_teams_tasks(tmp_path, api, env_for, edge_workers,
                                                      send, team_tokens, registry):
    workers = {
        team: edge_workers(f"{team}-1", queues="remote",
                           env=env_for(api, EDGE_KOMBU_TEAM_NAME=team,
                                       EDGE_KOMBU_TOKEN=team_tokens[team]))
        for team in ("team_a", "team_b")
    }
    for team, worker in workers.items():
        assert worker.status()["consuming"] == [f"{team}:remote"]
    results = {team: send("touch", str(tmp_path / team), queue=f"{team}:remote")
               for team in workers}
    for team, result in results.items():
        assert result.get(timeout=30) == team
        assert result.id in workers[team].log()
        other = workers["team_b" if team == "team_a" else "team_a"]
        assert result.id not in other.log()

    # A queue added centrally by its plain name is the team's queue of that name.
    registry.change_queues("team_a-1@localhost", add=["extra"])
    wait_for(lambda: workers["team_a"].status()["consuming"] == ["team_a:remote", "team_a:extra"],
             timeout=30, message="team_a worker consumes team_a:extra")
    assert send("touch", str(tmp_path / "extra"), queue="team_a:extra").get(timeout=30) == "extra"
    for worker in workers.values():
        assert "Forbidden" not in worker.log(), worker.log()


def test_a_teams_credential_reaches_no_other_queue(api, db_url, team_tokens):
    consume_once(api, team_tokens["team_a"], "team_a:remote")  # its own: allowed
    for queue in ("team_b:remote", "remote"):
        with pytest.raises(errors.Forbidden, match="team_a:remote"):
            consume_once(api, team_tokens["team_a"], queue)
    plain = create_token(db_url, "--worker", "site-*", "--queues", "remote")
    with pytest.raises(errors.Forbidden):
        consume_once(api, plain, "team_a:remote")


def test_team_names_are_checked(db_url):
    done = subprocess.run([str(BIN / "edge-kombu"), "token", "create", "--worker", "x-*",
                           "--team", "a:b", "--db", db_url],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1
    assert "a team name has 1 to 50 characters, without ':'" in done.stderr
    assert "Traceback" not in done.stderr
