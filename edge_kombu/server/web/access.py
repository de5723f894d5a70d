"""Who may see the pages and who may act on them.

Standalone (``edge-kombu api``) the server takes its users from the configuration:
``EDGE_KOMBU_UI_ADMIN`` and ``EDGE_KOMBU_UI_VIEWER``, each ``user:password``, checked
with HTTP Basic authentication. There is no default password: with neither set, the
pages answer 403 saying how to enable them. Mounted in ``airflow api-server``,
Airflow's auth manager decides (see :mod:`edge_kombu.airflow.access`).

Worker credentials (tokens, shared-secret JWTs) never open the pages: they are Bearer
credentials, and the pages accept only the users above (or Airflow's session).

Actions are POSTs with an ``X-CSRF-Token`` header: a value derived from the signed-in
user's credential, which the page embeds and a cross-site form cannot know.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import current_app, g, request

from edge_kombu import errors

ADMIN, VIEWER = "admin", "viewer"
CSRF_HEADER = "X-CSRF-Token"
HOW_TO_ENABLE = (
    "the web pages are off: set EDGE_KOMBU_UI_ADMIN=user:password (may act) and/or "
    "EDGE_KOMBU_UI_VIEWER=user:password (may look) in the API server's environment"
)


@dataclass(frozen=True)
class User:
    name: str
    role: str  # ADMIN or VIEWER
    csrf: str


class NotSignedIn(Exception):
    """No acceptable credentials: the answer says how to sign in."""

    def __init__(self, status: int, message: str, headers: dict | None = None,
                 login_url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        #: Where a browser asking for a page is sent to sign in (none: answer ``status``).
        self.login_url = login_url


class BasicAccess:
    """Users and passwords from the server's configuration, over HTTP Basic."""

    realm = "edge-kombu"
    #: Where the audit log says the actions of these users come from.
    via = "page"

    def __init__(self, admin: str | None, viewer: str | None) -> None:
        self.users: dict[str, tuple[str, str]] = {}
        for role, credential in ((VIEWER, viewer), (ADMIN, admin)):
            if credential:
                name, sep, password = credential.partition(":")
                if not sep or not name or not password:
                    raise ValueError(f"EDGE_KOMBU_UI_{role.upper()} must be user:password")
                self.users[name] = (password, role)
        material = "\0".join(f"{n}:{p}:{r}" for n, (p, r) in sorted(self.users.items()))
        self._csrf_key = hashlib.sha256(b"edge-kombu-csrf\0" + material.encode()).digest()

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def user(self) -> User:
        if not self.users:
            raise NotSignedIn(403, HOW_TO_ENABLE)
        challenge = {"WWW-Authenticate": f'Basic realm="{self.realm}", charset="UTF-8"'}
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise NotSignedIn(401, "sign in with the web pages' user and password", challenge)
        try:
            name, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise NotSignedIn(401, "malformed Basic credentials", challenge) from None
        known = self.users.get(name)
        # Compare even for unknown names, so timing does not tell which names exist.
        expected = known[0] if known else "\0" * 32
        if not hmac.compare_digest(password.encode(), expected.encode()) or known is None:
            raise NotSignedIn(401, "wrong user or password", challenge)
        csrf = hmac.new(self._csrf_key, name.encode(), hashlib.sha256).hexdigest()
        return User(name=name, role=known[1], csrf=csrf)


def basic_user_name() -> str | None:
    """The user name of this request's Basic credentials, if any (for rate limits)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(value.strip()).decode("utf-8").partition(":")[0] or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def current_user() -> User:
    """The signed-in user of this request; raises :class:`NotSignedIn` (401/403)."""
    if "edge_user" not in g:
        g.edge_user = current_app.extensions["edge_kombu_access"].user()
    return g.edge_user


def require_admin() -> User:
    """An admin, sending the page's CSRF token from the same origin."""
    user = current_user()
    if user.role != ADMIN:
        raise errors.Forbidden(f"user {user.name!r} may look but not act (viewer)")
    token = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(token.encode(), user.csrf.encode()):
        raise errors.Forbidden(f"missing or wrong {CSRF_HEADER} header: reload the page")
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        raise errors.Forbidden(f"cross-origin request from {origin} refused")
    return user


def require_metrics_access() -> None:
    if current_app.extensions["edge_kombu"].config.metrics_auth == "none":
        return
    current_user()
