"""DAG bundles without Airflow: ``edge-kombu api`` serving folders (EDGE_KOMBU_BUNDLE_FOLDERS)
and the worker's bundle cache fetching them over a real HTTP link."""

from __future__ import annotations

import json
import os
import tarfile
import threading
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from edge_kombu import errors
from edge_kombu.airflow.worker.bundles import MARKER, BundleCache, BundleUnavailable
from edge_kombu.protocol import HEADER_PROTOCOL, PROTOCOL_VERSION
from edge_kombu.transport.client import EdgeClient

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def served(tmp_path, api_factory, tokens):
    dags = tmp_path / "dags"
    (dags / "sub").mkdir(parents=True)
    (dags / "one.py").write_text("ONE = 1\n")
    (dags / "sub" / "two.py").write_text("TWO = 2\n")
    (dags / ".git").mkdir()
    (dags / ".git" / "config").write_text("[secret]\n")
    secret = tmp_path / "airflow.cfg"
    secret.write_text("fernet_key = do-not-ship\n")
    (dags / "linked.cfg").symlink_to(secret)
    central = tokens.create("scheduler", kind="central")
    granted = tokens.create("site-a-*", queues=["qa"])
    refused = tokens.create("site-b-*", queues=["qb"])
    api = api_factory(env={
        "EDGE_KOMBU_BUNDLE_FOLDERS": json.dumps({"dags": str(dags)}),
        "EDGE_KOMBU_BUNDLE_CACHE_DIR": str(tmp_path / "central-cache"),
        "EDGE_KOMBU_BUNDLE_QUEUES": json.dumps({"dags": ["qa"]}),
        "EDGE_KOMBU_MAX_BUNDLE_BYTES": "100000",
        "EDGE_KOMBU_METRICS_AUTH": "none",
    })
    return {"api": api, "dags": dags, "central": central, "granted": granted,
            "refused": refused, "central_cache": tmp_path / "central-cache"}


def _metrics(url: str) -> dict[str, float]:
    answer = requests.get(f"{url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    return {sample.name: sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples if sample.name.startswith("edge_kombu_bundle")}


def _cache(root: Path, url: str, token: str, **kwargs) -> BundleCache:
    return BundleCache(root, lambda: EdgeClient(url, token=token), **kwargs)


def test_fetch_verify_cache_and_scope(served, tmp_path):
    api, dags = served["api"], served["dags"]
    cache = _cache(tmp_path / "w", api.url, served["granted"])

    first = cache.get("dags", None)
    assert first.downloaded and first.version.startswith("content-")
    files = sorted(p.relative_to(first.path).as_posix() for p in first.path.rglob("*")
                   if p.is_file())
    assert files == [MARKER, "one.py", "sub/two.py"]  # no .git, no symlinked secrets

    again = cache.get("dags", None)
    assert not again.downloaded and again.path == first.path

    metrics = _metrics(api.url)
    assert metrics["edge_kombu_bundle_resolves_total"] == 2  # a download, then a cache hit
    assert metrics["edge_kombu_bundle_downloads_total"] == 1
    assert metrics["edge_kombu_bundle_download_bytes_total"] > 0

    # Concurrent tasks wanting a new version: one download.
    (dags / "one.py").write_text("ONE = 'changed'\n")
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("dags", None)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({f.version for f in got}) == 1 and got[0].version != first.version
    assert sum(f.downloaded for f in got) == 1
    assert (got[0].path / "one.py").read_text() == "ONE = 'changed'\n"

    # Scope: not granted to qb; central credentials fetch everything.
    other = EdgeClient(api.url, token=served["refused"])
    with pytest.raises(errors.Forbidden, match="granted to queues \\['qa'\\]"):
        other.call("bundles/resolve", {"name": "dags"})
    with pytest.raises(BundleUnavailable, match="cannot get DAG bundle 'dags' version "
                                                "\\(current\\): fetching DAG bundle 'dags'"):
        _cache(tmp_path / "w2", api.url, served["refused"]).get("dags", None)
    central = EdgeClient(api.url, token=served["central"])
    answer = central.call("bundles/resolve", {"name": "dags"})
    assert answer["version"] == got[0].version

    # Hostile input: a malformed hash, an unknown bundle, an unknown version.
    headers = {"Authorization": f"Bearer {served['central']}", HEADER_PROTOCOL: PROTOCOL_VERSION}
    bad = requests.get(f"{api.url}/api/v1/bundles/archive",
                       params={"name": "dags", "sha256": "../../etc/passwd"}, headers=headers,
                       timeout=10)
    assert bad.status_code == 400 and "sha256" in bad.json()["message"]
    with pytest.raises(errors.NotFound, match="no DAG bundle 'nope'"):
        central.call("bundles/resolve", {"name": "nope"})
    with pytest.raises(errors.NotFound, match="no longer available"):
        central.call("bundles/resolve", {"name": "dags", "version": "content-000"})

    # The same content gives the same archive when built again.
    archive = next(served["central_cache"].glob(f"*/{answer['sha256']}.tar.gz"))
    for path in served["central_cache"].glob("*/*"):
        path.unlink()
    assert central.call("bundles/resolve", {"name": "dags"})["sha256"] == answer["sha256"]
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["one.py", "sub/two.py"]


def test_tampered_oversize_offline_and_prune(served, tmp_path):
    api, dags = served["api"], served["dags"]
    cache = _cache(tmp_path / "w", api.url, served["granted"], keep=2)
    central = EdgeClient(api.url, token=served["central"])

    # A tampered archive is refused; nothing is unpacked.
    answer = central.call("bundles/resolve", {"name": "dags"})
    archive = next(served["central_cache"].glob(f"*/{answer['sha256']}.tar.gz"))
    good = archive.read_bytes()
    archive.write_bytes(good[:-10] + b"0123456789")
    with pytest.raises(BundleUnavailable, match=f"version {answer['version']}: hash mismatch"):
        cache.get("dags", None)
    assert list((tmp_path / "w").glob(f"*/*/{MARKER}")) == []
    archive.write_bytes(good)
    versions = [cache.get("dags", None).version]

    # Over the limit: 413 naming it.
    (dags / "big.bin").write_bytes(os.urandom(100_001))
    with pytest.raises(errors.PayloadTooLarge, match="over the limit of 100000 bytes"):
        central.call("bundles/resolve", {"name": "dags"})
    with pytest.raises(BundleUnavailable, match="over the limit of 100000 bytes"):
        cache.get("dags", None)
    (dags / "big.bin").unlink()

    # Pruning keeps the newest two, never one a task holds.
    with cache.hold("dags", versions[0]):
        for n in range(2):
            (dags / "one.py").write_text(f"ONE = {n + 10}\n")
            versions.append(cache.get("dags", None).version)
        held = {p.parent.name for p in (tmp_path / "w").glob(f"*/*/{MARKER}")}
        assert len(held) == 3  # the held one stays
    (dags / "one.py").write_text("ONE = 99\n")
    versions.append(cache.get("dags", None).version)
    kept = sorted(json.loads(p.read_text())["version"]
                  for p in (tmp_path / "w").glob(f"*/*/{MARKER}"))
    assert kept == sorted(versions[-2:])

    # Offline: versions held here still work; the current one falls back to the newest.
    api.stop()
    assert cache.get("dags", versions[-1]).path.is_dir()
    assert cache.get("dags", None).version == versions[-1]
    with pytest.raises(BundleUnavailable, match="unreachable and the version is not cached"):
        cache.get("dags", versions[0])


def test_the_central_archive_cache_keeps_the_newest_versions(tmp_path):
    """Each content change of an unversioned bundle is a version with its own archive;
    the central cache keeps the newest ``archives_kept`` and builds an old one again."""
    from edge_kombu.server.bundles import BundleStore, FolderBundles

    dags = tmp_path / "dags"
    dags.mkdir()
    store = BundleStore(FolderBundles({"dags": str(dags)}), tmp_path / "cache", archives_kept=2)
    built = []
    for n in range(4):
        (dags / "dag.py").write_text(f"N = {n}\n")
        os.utime(dags / "dag.py", ns=(n * 10**9, n * 10**9))  # a change the cache notices
        built.append(store.resolve("dags", None))
    folder = built[-1].path.parent
    assert sorted(p.name for p in folder.glob("*.tar.gz")) == sorted(
        f"{a.sha256}.tar.gz" for a in built[-2:])
    assert len(list(folder.glob("*.json"))) == 2
    with pytest.raises(errors.NotFound, match="resolve the bundle first"):
        store.archive("dags", built[0].sha256)
    again = store.resolve("dags", built[-1].version)  # still cached: the same archive
    assert again.sha256 == built[-1].sha256 and again.path.is_file()
