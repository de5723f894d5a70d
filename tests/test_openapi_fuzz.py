"""Schemathesis against a real API server's served OpenAPI document: no input makes a 5xx,
every answer is one the document lists for its route, with the body schema it gives.

Runs once (on the default database), not per database: the database-dependent regression
cases are in tests/server/test_bounds.py. Bounded: about 45 s with a central token (every
route's logic), 30 s with a worker token (whose scope refuses much with 403), 15 s without
a credential (those three on the broker routes), 25 s with an admin token (the management
routes only). Schemathesis's CLI does the work (its phases: examples, coverage of the
schema's edges, then fuzzing until the time is spent); its NDJSON report gives the numbers.
"""

from __future__ import annotations

import collections
import json
import subprocess

import pytest
import requests

from edge_kombu.protocol import API_PATH
from tests.helpers import BIN

pytestmark = pytest.mark.timeout(240)

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "negative_data_rejection")
#: A request the schema forbids must be refused; a wrong protocol version (426) refuses it
#: too, before the body is read, as does a body over the limit (413) or a request line over
#: the server's (414: a query parameter far beyond its maxLength).
CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 414, 415, 422, 426, 428, 429]
"""


def statuses(report) -> collections.Counter:
    """Status code of each case schemathesis ran, from its NDJSON report."""
    seen: dict[str, int | None] = {}
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        for case, interaction in (finished or {}).get("recorder", {}).get(
                "interactions", {}).items():
            response = interaction.get("response")
            seen[case] = response["status_code"] if response else None
    return collections.Counter(seen.values())


#: The management routes (/api/v1/manage/...): fuzzed with an admin token only, the rest
#: without them (a central or worker token gets 403 there, and the runs' time is bounded).
MANAGE = f"^{API_PATH}/manage/"


def fuzz(api, tmp_path, label: str, seconds: int, headers: dict, *,
         manage: bool = False, select: tuple[str, ...] = ()) -> collections.Counter:
    document = tmp_path / "openapi.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    reports = tmp_path / f"reports-{label}"
    args = [str(BIN / "schemathesis"), "--config-file", str(config), "--no-color", "run",
            str(document), "--url", api.url, "--checks", ",".join(CHECKS),
            # One worker: with several, hypothesis's strategy descriptions (ast, in threads)
            # hit a CPython 3.11 SystemError inside schemathesis now and then. A consume may
            # wait up to 60 s (protocol.MAX_WAIT_SECONDS).
            "--max-time", str(seconds), "--workers", "1", "--request-timeout", "75",
            "--report", "ndjson", "--report-dir", str(reports)]
    args += ["--include-path-regex" if manage else "--exclude-path-regex", MANAGE]
    if manage:  # the stateful phase feeds listed token names to revoke: the admin's own
        args += ["--phases", "examples,coverage,fuzzing", *select]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120,
                         cwd=tmp_path)
    counts = statuses(next(reports.glob("*.ndjson")))
    print(f"schemathesis {label}: {sum(counts.values())} cases, statuses {dict(counts)}")
    # Its summary names each failure with a curl line reproducing it.
    assert run.returncode == 0, run.stdout[-15000:] + run.stderr[-3000:]
    assert not [code for code in counts if code and code >= 500], counts
    return counts


@pytest.fixture
def api(api_factory):
    """An API server without the rate limit of failed credentials: schemathesis sends many
    missing or wrong credentials on purpose, and would otherwise spend its time on 429s
    (tests/server/test_limits.py tests the limit)."""
    return api_factory(env={"EDGE_KOMBU_AUTH_FAILURE_LIMIT": "off"})


@pytest.fixture
def document(api, token, tmp_path):
    """The document as the server serves it (only credentials may read it)."""
    answer = requests.get(f"{api.url}{API_PATH}/openapi.json",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200
    (tmp_path / "openapi.json").write_text(answer.text)
    return answer.json()


def test_no_input_makes_a_server_error_and_answers_follow_the_document(api, token, tokens,
                                                                       document, tmp_path):
    central = fuzz(api, tmp_path, "central-token", 45, {"Authorization": f"Bearer {token}"})
    # The run reached the routes' logic, not only their validation.
    assert central[200] > 200, central
    worker = tokens.create("fuzz-site-*", queues=["celery", "fuzz"])
    scoped = fuzz(api, tmp_path, "worker-token", 30, {"Authorization": f"Bearer {worker}"})
    # A worker scope allows some of it (its queues, hello) and refuses the rest with 403.
    assert scoped[200] > 20 and scoped[403] > 40, scoped
    without = fuzz(api, tmp_path, "no-credential", 15, {})
    # Only health answers without a credential; the rest is 401 (or 404/405 for paths and
    # methods that are no route).
    assert without[401] > 100 and without[200] < without[401] / 10, without
    # The management routes' logic, with an admin token (the broker routes refuse it: 403).
    admin = tokens.create("fuzz-admin", kind="admin")
    bearer = {"Authorization": f"Bearer {admin}"}
    managing = fuzz(api, tmp_path, "admin-token", 20, bearer, manage=True,
                    select=("--exclude-operation-id", "manage_token_revoke"))
    assert managing[200] > 100 and not managing[401], managing
    # Last, as it may revoke the listed tokens, the admin's own among them.
    fuzz(api, tmp_path, "admin-revoke", 5, bearer, manage=True,
         select=("--include-operation-id", "manage_token_revoke"))


def test_the_document_lists_the_management_routes(document):
    manage = {path: set(ops) for path, ops in document["paths"].items()
              if path.startswith(f"{API_PATH}/manage/")}
    assert manage[f"{API_PATH}/manage/workers"] == {"get"}
    assert manage[f"{API_PATH}/manage/tokens"] == {"get", "post"}
    for action in ("maintenance", "maintenance-comment", "shutdown", "remove", "queues",
                   "concurrency"):
        assert manage[f"{API_PATH}/manage/workers/{{name}}/{action}"] == {"post"}
        assert manage[f"{API_PATH}/manage/bulk/workers/{action}"] == {"post"}
    assert {f"{API_PATH}/manage/{p}" for p in ("queues", "jobs", "workers/{name}",
                                                "tokens/{name}")} <= set(manage)
    shutdown = document["paths"][f"{API_PATH}/manage/workers/{{name}}/shutdown"]["post"]
    assert {"200", "400", "401", "403", "404", "409", "503"} <= set(shutdown["responses"])
