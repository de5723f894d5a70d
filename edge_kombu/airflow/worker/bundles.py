"""DAG bundles fetched from the central site into a local cache (worker side, no Airflow).

:meth:`BundleCache.get` gives the folder of bundle *name* at *version*:

1. a version already unpacked here is used as it is, without asking the API (a worker
   cut off from the centre keeps running the versions it holds);
2. otherwise ``bundles/resolve`` names the version's archive (its sha256 and size; for a
   bundle without versions, its current content version), which is downloaded, checked
   against the sha256, and unpacked into a temporary folder renamed into place, so a
   version's folder is complete or absent. A file lock per version makes concurrent
   tasks download it once.

Layout under the cache root: ``<bundle>/<version>/`` (the files, plus ``.edge-bundle.json``
saying where they came from) and ``<bundle>/.<version>.lock``. A task holds a shared lock
on its version's lock file while it runs (:meth:`BundleCache.hold`); pruning removes the
versions beyond the newest ``keep`` and those unused for ``max_age`` seconds, skipping any
version a task holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edge_kombu import errors
from edge_kombu.protocol import BUNDLE_ARCHIVE_ROUTE

log = logging.getLogger(__name__)

MARKER = ".edge-bundle.json"
DEFAULT_KEEP = 5
DEFAULT_MAX_AGE = 7 * 86400.0
#: Largest archive a worker accepts, by default (the centre has its own limit).
DEFAULT_MAX_BYTES = 200 * 1024 * 1024


class BundleUnavailable(RuntimeError):
    """A bundle version cannot be had; the message names the bundle, version and reason."""


def _safe(text: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64].lstrip(".")
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass
class Fetched:
    name: str
    version: str
    path: Path
    downloaded: bool
    size: int = 0
    seconds: float = 0.0


class BundleCache:
    def __init__(self, root: Path, client_factory, *, keep: int = DEFAULT_KEEP,
                 max_age: float = DEFAULT_MAX_AGE, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self._client_factory = client_factory
        self._client = None
        self.keep = max(1, keep)
        self.max_age = max_age
        self.max_bytes = max_bytes

    def client(self):
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def folder(self, name: str, version: str) -> Path:
        return self.root / _safe(name) / _safe(version)

    def _lock_path(self, name: str, version: str) -> Path:
        return self.root / _safe(name) / f".{_safe(version)}.lock"

    def cached(self, name: str, version: str) -> Path | None:
        folder = self.folder(name, version)
        return folder if (folder / MARKER).is_file() else None

    def newest_cached(self, name: str) -> tuple[str, Path] | None:
        best = None
        base = self.root / _safe(name)
        for marker in base.glob(f"*/{MARKER}") if base.is_dir() else ():
            try:
                meta = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue
            stamp = marker.stat().st_mtime
            if best is None or stamp > best[0]:
                best = (stamp, meta["version"], marker.parent)
        return None if best is None else (best[1], best[2])

    def get(self, name: str, version: str | None) -> Fetched:
        """The folder of ``name`` at ``version`` (None: the centre's current version)."""
        if version is not None:
            folder = self.cached(name, version)
            if folder is not None:
                _touch(folder / MARKER)
                return Fetched(name, version, folder, downloaded=False)
        try:
            answer = self.client().call("bundles/resolve", {"name": name, "version": version})
        except errors.EdgeConnectionError as exc:
            if version is None:
                newest = self.newest_cached(name)
                if newest is not None:
                    log.warning("edge API unreachable (%s): using DAG bundle %s version %s, "
                                "the newest held here", exc, name, newest[0])
                    return Fetched(name, newest[0], newest[1], downloaded=False)
            raise BundleUnavailable(_why(name, version, f"the edge API is unreachable and the "
                                                        f"version is not cached here: {exc}"))
        except errors.EdgeError as exc:
            raise BundleUnavailable(_why(name, version, str(exc))) from None
        resolved = answer["version"]
        folder = self.cached(name, resolved)
        if folder is not None:
            _touch(folder / MARKER)
            return Fetched(name, resolved, folder, downloaded=False)
        return self._download(name, resolved, answer["sha256"], answer["size"])

    def _download(self, name: str, version: str, sha256: str, size: int) -> Fetched:
        if size > self.max_bytes:
            raise BundleUnavailable(_why(name, version, f"its archive is {size} bytes, over "
                                                        f"this worker's limit of {self.max_bytes}"))
        base = self.root / _safe(name)
        base.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self._lock_path(name, version), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent tasks: one downloads, others wait
            folder = self.cached(name, version)
            if folder is not None:
                return Fetched(name, version, folder, downloaded=False)
            with tempfile.TemporaryDirectory(dir=base, prefix=".incoming-") as tmp:
                archive = Path(tmp, "bundle.tar.gz")
                try:
                    with open(archive, "wb") as out:
                        got = self.client().download(
                            BUNDLE_ARCHIVE_ROUTE, {"name": name, "sha256": sha256}, out,
                            max_bytes=self.max_bytes, timeout=300)
                except errors.EdgeError as exc:
                    raise BundleUnavailable(_why(name, version, f"download failed: {exc}")
                                            ) from None
                actual = _sha256(archive)
                if actual != sha256:
                    raise BundleUnavailable(_why(
                        name, version, f"hash mismatch: the archive ({got} bytes) has sha256 "
                                       f"{actual}, the edge API announced {sha256}; refused"))
                unpacked = Path(tmp, "files")
                try:
                    with tarfile.open(archive, "r:gz") as tar:
                        tar.extractall(unpacked, filter="data")
                except (tarfile.TarError, OSError, EOFError) as exc:
                    raise BundleUnavailable(_why(name, version, f"bad archive: {exc}")) from None
                (unpacked / MARKER).write_text(json.dumps(
                    {"name": name, "version": version, "sha256": sha256, "size": got,
                     "fetched_at": time.time()}))
                final = self.folder(name, version)
                if final.exists():  # a leftover without its marker
                    shutil.rmtree(final)
                os.rename(unpacked, final)
        seconds = time.monotonic() - started
        log.info("fetched DAG bundle %s version %s: %d bytes in %.2fs", name, version, got,
                 seconds)
        self.prune(name, keep_version=version)
        return Fetched(name, version, final, downloaded=True, size=got, seconds=seconds)

    @contextlib.contextmanager
    def hold(self, name: str, version: str):
        """Keep ``version`` from being pruned while the block runs."""
        with open(self._lock_path(name, version), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            yield

    def hold_forever(self, name: str, version: str) -> None:
        """Hold ``version`` until this process ends (a task process)."""
        lock = open(self._lock_path(name, version), "a")  # noqa: SIM115 - closed at exit
        fcntl.flock(lock, fcntl.LOCK_SH)
        self._held = lock

    def prune(self, name: str, *, keep_version: str | None = None) -> list[str]:
        """Remove versions beyond the newest ``keep`` or unused for ``max_age``."""
        base = self.root / _safe(name)
        versions = []
        for marker in base.glob(f"*/{MARKER}"):
            try:
                meta = json.loads(marker.read_text())
                versions.append((marker.stat().st_mtime, meta["version"], marker.parent))
            except (OSError, ValueError, KeyError):
                continue
        versions.sort(reverse=True)
        now = time.time()
        removed = []
        for rank, (stamp, version, folder) in enumerate(versions):
            if version == keep_version or (rank < self.keep and now - stamp < self.max_age):
                continue
            with open(self._lock_path(name, version), "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a task runs on it
                (folder / MARKER).unlink(missing_ok=True)
                shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path(name, version))
            removed.append(version)
        if removed:
            log.info("pruned DAG bundle %s versions %s", name, removed)
        return removed


def held_versions(root: Path, limit: int = 8) -> dict[str, str]:
    """For the heartbeat: ``{"bundle NAME": "newest version (+n older)"}`` of the cache."""
    found: dict[str, list[tuple[float, str]]] = {}
    for marker in Path(root).glob(f"*/*/{MARKER}"):
        try:
            meta = json.loads(marker.read_text())
            found.setdefault(meta["name"], []).append((marker.stat().st_mtime, meta["version"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    held = {}
    for name in sorted(found)[:limit]:
        versions = sorted(found[name], reverse=True)
        more = f" (+{len(versions) - 1} older)" if len(versions) > 1 else ""
        held[f"bundle {name}"[:64]] = (versions[0][1][:64 - len(more)] + more)
    return held


def _why(name: str, version: str | None, reason: str) -> str:
    return f"cannot get DAG bundle {name!r} version {version or '(current)'}: {reason}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def worker_bundle_cache(settings=None) -> BundleCache:
    """The cache of this edge worker, with its client, from its Airflow settings."""
    from edge_kombu.transport.client import client_for
    from edge_kombu.transport.settings import ClientSettings
    from edge_kombu.worker.settings import AirflowOptions, current

    settings = settings or current()
    option = AirflowOptions(os.environ, settings.config_path)
    root = option("edge", "bundle_cache_dir") or settings.airflow_home / "edge_kombu" / "bundles"

    def client():
        if not settings.api_url:
            raise BundleUnavailable("cannot fetch DAG bundles: [edge] api_url is not set")
        return client_for(ClientSettings.from_kombu(
            settings.api_url, settings.credential.transport_options(),
            dict(settings.ssl) if settings.ssl else None))

    return BundleCache(
        Path(root).expanduser(), client,
        keep=int(option("edge", "bundle_cache_keep") or DEFAULT_KEEP),
        max_age=float(option("edge", "bundle_cache_max_age_days") or 7) * 86400,
    )
