"""DAG bundles served to edge workers: content-addressed archives, built once per version.

A *source* names the folder holding a bundle's files at a version
(:class:`BundleSource`); the server package never imports Airflow, so the source is
handed in: :class:`FolderBundles` (``EDGE_KOMBU_BUNDLE_FOLDERS``, for ``edge-kombu api``)
or Airflow's bundle manager (:mod:`edge_kombu.airflow.bundles`, inside ``airflow
api-server``). The :class:`BundleStore` turns a folder into a gzipped tar whose sha256
names it, once per version, and keeps it on disk:

``<cache_dir>/<bundle>/<version>.json``   what that version's archive is (sha256, size)
``<cache_dir>/<bundle>/<sha256>.tar.gz``  the archive

A bundle without versions (a plain DAG folder) is versioned by its content hash, so a
changed file is a new version. Only regular files travel: symbolic links (which could
point at the central site's secrets), ``.git``, ``__pycache__`` and ``*.pyc`` stay out.
Bundles above ``max_bytes`` (uncompressed) are refused with 413.

Who may fetch what: central credentials, any bundle; a worker credential, the bundles
granted to one of its queues by ``bundle_queues`` (``{"bundle": ["queue", ...]}``, ``"*"``
for any bundle or any queue). Nothing is granted to worker credentials by default.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_kombu import errors
from edge_kombu.server.config import env_or_edge
from edge_kombu.server.scopes import Scope

log = logging.getLogger(__name__)

#: Largest bundle served (bytes of its files, before compression), by default.
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
#: Versions of one bundle whose archives the central cache keeps, by default (newest built).
DEFAULT_ARCHIVES_KEPT = 20
#: What a content hash version starts with (a bundle without versions of its own).
CONTENT_VERSION_PREFIX = "content-"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".hg", ".svn"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class BundleContent:
    """A bundle's files at ``version`` (None: the source has no versions)."""

    path: Path
    version: str | None


class BundleSource(Protocol):
    def locate(self, name: str, version: str | None) -> BundleContent:
        """The folder of bundle ``name`` at ``version``; LookupError if there is none."""


class FolderBundles:
    """Bundles that are plain folders: ``{"name": "/path"}`` (no versions of their own)."""

    def __init__(self, folders: dict[str, str]) -> None:
        self.folders = {name: Path(path).expanduser() for name, path in folders.items()}

    @classmethod
    def from_environment(cls) -> FolderBundles:
        raw = os.environ.get("EDGE_KOMBU_BUNDLE_FOLDERS")
        folders = json.loads(raw) if raw else {}
        if not isinstance(folders, dict):
            raise ValueError('EDGE_KOMBU_BUNDLE_FOLDERS must be a JSON object {"name": "/path"}')
        return cls(folders)

    def locate(self, name: str, version: str | None) -> BundleContent:
        if name not in self.folders:
            raise LookupError(f"no DAG bundle {name!r} is served here (EDGE_KOMBU_BUNDLE_FOLDERS "
                              f"names {sorted(self.folders)})")
        return BundleContent(self.folders[name], None)


@dataclass(frozen=True)
class Archive:
    name: str
    version: str
    sha256: str
    size: int
    path: Path

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256,
                "size": self.size}


def _safe(text: str) -> str:
    """A file name for any bundle name or version (readable part + hash of the whole)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64].lstrip(".")
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def bundle_files(root: Path) -> list[tuple[str, Path]]:
    """The regular files of a bundle folder, sorted by their path inside it."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS
                         and not os.path.islink(os.path.join(folder, d)))
        for filename in files:
            full = Path(folder, filename)
            if filename.endswith(SKIPPED_SUFFIXES) or full.is_symlink() or not full.is_file():
                continue
            found.append((full.relative_to(root).as_posix(), full))
    return sorted(found)


class BundleStore:
    """Resolves bundle versions to archives, building each once, and checks who asks."""

    def __init__(self, source: BundleSource | None, cache_dir: Path, *,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 queues: dict[str, list[str]] | None = None,
                 archives_kept: int = DEFAULT_ARCHIVES_KEPT) -> None:
        self.source = source
        self.cache_dir = Path(cache_dir)
        self.max_bytes = max_bytes
        self.archives_kept = max(1, archives_kept)
        self.queues = queues or {}
        self._lock = threading.Lock()
        self._content_versions: dict[tuple, str] = {}

    @classmethod
    def from_environment(cls, source: BundleSource | None) -> BundleStore:
        """``bundle_cache_dir``, ``max_bundle_bytes``, ``bundle_queues``,
        ``bundle_archives_kept`` from ``EDGE_KOMBU_<NAME>`` or Airflow's ``[edge] <name>``."""
        cache = env_or_edge("bundle_cache_dir") or os.path.join(
            tempfile.gettempdir(), f"edge-kombu-bundles-{os.getuid()}")
        raw_max = env_or_edge("max_bundle_bytes")
        queues = json.loads(env_or_edge("bundle_queues") or "{}")
        if not isinstance(queues, dict) or not all(
                isinstance(v, list) and all(isinstance(q, str) for q in v)
                for v in queues.values()):
            raise ValueError('bundle_queues must be a JSON object {"bundle": ["queue", ...]}')
        raw_kept = env_or_edge("bundle_archives_kept")
        return cls(source, Path(cache).expanduser(),
                   max_bytes=int(raw_max) if raw_max else DEFAULT_MAX_BYTES, queues=queues,
                   archives_kept=int(raw_kept) if raw_kept else DEFAULT_ARCHIVES_KEPT)

    # -- who may fetch -------------------------------------------------------------------

    def granted_queues(self, name: str) -> list[str]:
        return sorted(set(self.queues.get(name, [])) | set(self.queues.get("*", [])))

    def check_access(self, scope: Scope, name: str) -> None:
        if scope.central:
            return
        granted = self.granted_queues(name)
        if "*" in granted or scope.queues & set(granted):
            return
        raise scope.forbid(
            f"fetching DAG bundle {name!r} (granted to queues {granted}; grant it with "
            "[edge] bundle_queues or EDGE_KOMBU_BUNDLE_QUEUES)")

    # -- archives ------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None) -> Archive:
        """The archive of ``name`` at ``version`` (None: its current version)."""
        if self.source is None:
            raise errors.NotFound("this edge API serves no DAG bundles (run it inside "
                                  "airflow api-server, or set EDGE_KOMBU_BUNDLE_FOLDERS)")
        if version is not None:
            # A version's content never changes: an archive built once serves it (without
            # asking the source, which may have to check a commit out).
            cached = self._cached(name, version)
            if cached is not None:
                return cached
        content = self._locate(
            name, None if version and version.startswith(CONTENT_VERSION_PREFIX) else version)
        files = bundle_files(content.path)
        self._check_size(name, version, files)
        resolved = content.version or self._content_version(files)
        if version is not None and version != resolved:
            raise errors.NotFound(f"DAG bundle {name!r} version {version!r} is no longer "
                                  f"available (current: {resolved!r})")
        cached = self._cached(name, resolved)
        if cached is not None:
            return cached
        return self._build(name, resolved, files)

    def archive(self, name: str, sha256: str) -> Path:
        if not SHA256_PATTERN.match(sha256):
            raise errors.InvalidRequest("sha256: 64 lowercase hexadecimal characters")
        path = self.cache_dir / _safe(name) / f"{sha256}.tar.gz"
        if not path.is_file():
            raise errors.NotFound(f"no archive {sha256} of DAG bundle {name!r}: resolve the "
                                  "bundle first (bundles/resolve)")
        return path

    def _locate(self, name: str, version: str | None) -> BundleContent:
        try:
            return self.source.locate(name, version)
        except LookupError as exc:
            raise errors.NotFound(str(exc).strip("'\"")) from None

    def _check_size(self, name: str, version: str | None, files) -> None:
        total = sum(path.stat().st_size for _, path in files)
        if total > self.max_bytes:
            raise errors.PayloadTooLarge(
                f"DAG bundle {name!r} version {version or 'current'} is {total} bytes, over the "
                f"limit of {self.max_bytes} bytes ([edge] max_bundle_bytes / "
                "EDGE_KOMBU_MAX_BUNDLE_BYTES)")

    def _content_version(self, files) -> str:
        stats = tuple((rel, st.st_size, st.st_mtime_ns, st.st_ino)
                      for rel, path in files for st in [path.stat()])
        known = self._content_versions.get(stats)
        if known is not None:
            return known
        digest = hashlib.sha256()
        for rel, path in files:
            digest.update(rel.encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        version = CONTENT_VERSION_PREFIX + digest.hexdigest()[:24]
        with self._lock:
            if len(self._content_versions) > 1000:
                self._content_versions.clear()
            self._content_versions[stats] = version
        return version

    def _meta_path(self, name: str, version: str) -> Path:
        return self.cache_dir / _safe(name) / f"{_safe(version)}.json"

    def _cached(self, name: str, version: str) -> Archive | None:
        try:
            meta = json.loads(self._meta_path(name, version).read_text())
        except (OSError, ValueError):
            return None
        path = self.cache_dir / _safe(name) / f"{meta['sha256']}.tar.gz"
        if not path.is_file():
            return None
        return Archive(name, version, meta["sha256"], meta["size"], path)

    def _build(self, name: str, version: str, files) -> Archive:
        folder = self.cache_dir / _safe(name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:  # one builder across api-server processes
            fcntl.flock(lock, fcntl.LOCK_EX)
            cached = self._cached(name, version)
            if cached is not None:
                return cached
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            try:
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as raw:
                    hashing = _Hashing(raw, digest)
                    with gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0) as gz, \
                            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                        for rel, path in files:
                            _add_file(tar, rel, path)
                sha = digest.hexdigest()
                size = os.path.getsize(tmp)
                os.replace(tmp, folder / f"{sha}.tar.gz")
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            meta = self._meta_path(name, version)
            meta_tmp = meta.with_suffix(".json.tmp")
            meta_tmp.write_text(json.dumps({"name": name, "version": version, "sha256": sha,
                                            "size": size}))
            os.replace(meta_tmp, meta)
            self._prune(folder)
        log.info("built DAG bundle %s version %s: %d files, %d bytes, sha256 %s",
                 name, version, len(files), size, sha)
        return Archive(name, version, sha, size, folder / f"{sha}.tar.gz")


    def _prune(self, folder: Path) -> None:
        """Keep the archives of the newest ``archives_kept`` versions built (under the
        bundle's build lock). Workers keep the versions they run in their own cache; one
        asking for a pruned version gets it built again."""
        metas = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns,
                       reverse=True)
        kept_shas = set()
        for meta in metas[:self.archives_kept]:
            with contextlib.suppress(OSError, ValueError, KeyError):
                kept_shas.add(json.loads(meta.read_text())["sha256"])
        for meta in metas[self.archives_kept:]:
            meta.unlink(missing_ok=True)
        for archive in folder.glob("*.tar.gz"):
            if archive.name.removesuffix(".tar.gz") not in kept_shas:
                archive.unlink(missing_ok=True)
                log.info("pruned DAG bundle archive %s", archive)


def _add_file(tar: tarfile.TarFile, rel: str, path: Path) -> None:
    """Files only, with fixed owner and time: the same content gives the same archive."""
    info = tarfile.TarInfo(rel)
    stat = path.stat()
    info.size = stat.st_size
    info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
    info.mtime = 0
    with open(path, "rb") as handle:
        tar.addfile(info, handle)


class _Hashing:
    """A write-only file that hashes what goes through it."""

    def __init__(self, raw, digest) -> None:
        self.raw, self.digest = raw, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()
