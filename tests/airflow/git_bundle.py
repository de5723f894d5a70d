"""A versioned DAG bundle for tests: a local git repository, each version a commit, checked
out with ``git archive`` (Airflow's ``GitDagBundle`` is in a provider the test environment
does not install). Used by the central site only; edge workers never see the repository."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from airflow.dag_processing.bundles.base import BaseDagBundle


class GitArchiveBundle(BaseDagBundle):
    supports_versioning = True

    def __init__(self, *, repo: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.repo = repo
        self._commit: str | None = None
        self._path: Path | None = None

    def _git(self, *args: str) -> bytes:
        return subprocess.run(["git", "-C", self.repo, *args], check=True,
                              capture_output=True).stdout

    def _head(self) -> str:
        return self._git("rev-parse", "HEAD").decode().strip()

    def _checkout(self, commit: str) -> None:
        target = self.versions_dir / commit
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
            with tarfile.open(fileobj=io.BytesIO(self._git("archive", commit))) as tar:
                tar.extractall(tmp, filter="data")
            try:
                os.rename(tmp, target)
            except OSError:  # another process was first
                pass
        self._commit, self._path = commit, target

    def initialize(self) -> None:
        self._checkout(self.version or self._head())
        super().initialize()

    def refresh(self) -> None:
        if self.version is None:
            self._checkout(self._head())

    def get_current_version(self) -> str:
        return self._commit or self.version or self._head()

    @property
    def path(self) -> Path:
        return self._path or self.versions_dir / "not-initialized"
