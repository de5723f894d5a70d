"""Real ``celery worker`` processes on worker-scoped tokens: each site runs its own
tasks, chords included, answers the centre's remote control, and cannot steer another
site's workers."""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest
from celery import Celery, chord

from tests.helpers import BIN, ROOT, wait_for
from tests.server.helpers import AUDIENCE, ISSUER, OIDCIssuer

pytestmark = pytest.mark.timeout(240)


def task(client, name, *args, **options):
    return client.send_task(f"tests.celery_app.{name}", args=args, **options)


def sig(client, name, *args):
    return client.signature(f"tests.celery_app.{name}", args=args)


def celery_cli(broker_url: str, *args: str) -> subprocess.CompletedProcess:
    """``celery -A tests.celery_app …`` with ``broker_url`` (and its credential)."""
    env = dict(os.environ, EDGE_TEST_BROKER_URL=broker_url, EDGE_TEST_RESULT_URL=broker_url,
               PYTHONPATH=str(ROOT))
    return subprocess.run([str(BIN / "celery"), "-A", "tests.celery_app", *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def sites(api, tokens, worker_factory):
    """Site A (worker site-a-1, queue qa) and site B (site-b-1, qb), each on its own token."""
    urls = {}
    for site in ("a", "b"):
        token = tokens.create(f"site-{site}-*", queues=[f"q{site}"])
        urls[site] = api.url.replace("http://", f"edge+http://:{token}@")
    # Site A sends task events too (-E): a worker token may publish them.
    workers = {site: worker_factory(urls[site], name=f"site-{site}-1", queues=f"q{site}",
                                    events=site == "a")
               for site in ("a", "b")}
    return urls, workers


@contextlib.contextmanager
def central_celery(api, tokens, name: str):
    """A Celery client of ``api`` on a new central token ``name``: yields (app, broker URL)."""
    url = api.url.replace("http://", f"edge+http://:{tokens.create(name, kind='central')}@")
    app = Celery(f"edge_{name}", broker=url, backend=url, set_as_current=False)
    app.conf.update(task_acks_late=True, broker_connection_retry=False)
    try:
        yield app, url
    finally:
        app.close()


@pytest.fixture
def central_client(api, tokens):
    with central_celery(api, tokens, "scheduler") as client:
        yield client


def test_each_site_runs_its_tasks_and_chords(sites, central_client):
    client, _ = central_client
    _, workers = sites
    assert task(client, "add", 2, 3, queue="qa").get(timeout=30) == 5
    assert task(client, "add", 4, 5, queue="qb").get(timeout=30) == 9
    header = [sig(client, "add", i, 1).set(queue="qa") for i in range(5)]
    result = chord(header)(sig(client, "tsum").set(queue="qa"))
    assert result.get(timeout=60) == sum(range(1, 6))
    for worker in workers.values():
        assert "Forbidden" not in worker.log(), worker.log()  # the 403s' exception


def test_remote_control_needs_a_central_credential(sites, central_client):
    urls, workers = sites
    _, central_url = central_client
    refused = celery_cli(urls["a"], "control", "shutdown", "-d", workers["b"].hostname)
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "broadcasting remote-control commands" in refused.stdout + refused.stderr
    assert workers["b"].alive()
    # The centre may: its ping reaches both sites, whose replies come back.
    pinged = celery_cli(central_url, "inspect", "ping", "--timeout", "5")
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    for worker in workers.values():
        assert worker.hostname in pinged.stdout
    # (shutdown sends no reply: Celery's CLI then says "No nodes replied" and exits 69)
    celery_cli(central_url, "control", "shutdown", "-d", workers["b"].hostname, "--timeout", "2")
    wait_for(lambda: not workers["b"].alive(), timeout=30, message="site B's worker to stop")
    assert "Got shutdown from remote" in workers["b"].log()
    assert workers["a"].alive()


def test_a_worker_on_an_oidc_identity_runs_its_tasks(api_factory, tokens, worker_factory,
                                                     tmp_path):
    """No static secret at the site: its worker presents an identity token from a local
    issuer; the server maps its subject to the site's entry (recorded without a token)."""
    issuer = OIDCIssuer(tmp_path)
    api = api_factory(env={"EDGE_KOMBU_OIDC_ISSUER": ISSUER, "EDGE_KOMBU_OIDC_AUDIENCE": AUDIENCE,
                           "EDGE_KOMBU_OIDC_JWKS_FILE": str(issuer.jwks_file)})
    assert tokens.create("site-c-*", queues=["qc"], issue_token=False) is None
    worker = worker_factory(api.url.replace("http://", f"edge+http://:{issuer.mint('site-c-1')}@"),
                            name="site-c-1", queues="qc")
    with central_celery(api, tokens, "centre") as (client, _):
        assert task(client, "add", 20, 22, queue="qc").get(timeout=30) == 42
    assert "Forbidden" not in worker.log()


def test_a_worker_on_a_worker_scoped_shared_secret_runs_its_tasks(api_factory, tokens,
                                                                  worker_factory):
    """With shared_secret_scope = worker, a worker holding the secret gets the scope of the
    entry naming it (its JWTs' sub is its node name): its own queue, not another's."""
    secret = "s" * 32
    api = api_factory(env={"AIRFLOW__CORE__INTERNAL_API_SECRET_KEY": secret,
                           "EDGE_KOMBU_SHARED_SECRET_SCOPE": "worker"})
    tokens.create("site-d-*", queues=["qd"], issue_token=False)
    worker = worker_factory(api.url.replace("http://", "edge+http://"), name="site-d-1",
                            queues="qd", env={"AIRFLOW__CORE__INTERNAL_API_SECRET_KEY": secret})
    with central_celery(api, tokens, "centre") as (client, _):
        assert task(client, "add", 1, 1, queue="qd").get(timeout=30) == 2
    assert "Forbidden" not in worker.log()
    refused = worker_factory(api.url.replace("http://", "edge+http://"), name="site-d-2",
                             queues="qother", wait_ready=False,
                             env={"AIRFLOW__CORE__INTERNAL_API_SECRET_KEY": secret})
    wait_for(lambda: not refused.alive(), timeout=60, message="the worker to stop")
    assert "Unrecoverable error: Forbidden(\"declaring queue 'qother'" in refused.log()
