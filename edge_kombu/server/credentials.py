"""Per-worker API tokens: issued, listed and revoked centrally, stored only as SHA-256.

A token (``ekt_…``) names its holder, the principal; :mod:`edge_kombu.server.auth`
looks the principal up on every request, so a revocation takes effect on the next one.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import delete, select

from edge_kombu import errors
from edge_kombu.server import models as m
from edge_kombu.server.sql import SQL

#: Prefix of per-worker API tokens (makes leaked tokens easy to recognise).
TOKEN_PREFIX = "ekt_"


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Credentials:
    """The tokens in the database; each method is one transaction of ``sql``."""

    def __init__(self, sql: SQL) -> None:
        self.sql = sql

    def create(self, name: str) -> str:
        """Issue a token for ``name``; only its hash is stored. Returns the token."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.sql.transaction() as tx:
            if not self.sql.insert_ignore(
                tx.conn,
                m.token,
                [{"name": name, "token_hash": _hash_token(token), "created_at": self.sql.clock()}],
            ):
                raise errors.Conflict(f"a token for {name!r} exists already; revoke it first")
        return token

    def list(self) -> list[dict]:
        """Who holds a token and since when (never the tokens), by name."""
        with self.sql.connect() as conn:
            rows = conn.execute(
                select(m.token.c.name, m.token.c.created_at).order_by(m.token.c.name)
            ).all()
        return [{"name": name, "created_at": created} for name, created in rows]

    def revoke(self, name: str) -> None:
        with self.sql.transaction() as tx:
            if not tx.conn.execute(delete(m.token).where(m.token.c.name == name)).rowcount:
                raise errors.NotFound(f"no token for {name!r}")

    def principal_for(self, token: str) -> str | None:
        """The name a token was issued for, or None if unknown or revoked."""
        with self.sql.connect() as conn:
            return conn.execute(
                select(m.token.c.name).where(m.token.c.token_hash == _hash_token(token))
            ).scalar()
