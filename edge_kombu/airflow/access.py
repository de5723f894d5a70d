"""Who may see and act on the monitoring pages inside ``airflow api-server``: Airflow decides.

The pages under ``/edge/ui/`` (in Airflow's Admin menu) accept the Airflow session the
UI already holds (the ``_token`` cookie, or an Airflow JWT as Bearer), validated by
Airflow's auth manager. Seeing them needs ``is_authorized_view(JOBS)``; acting needs
``is_authorized_configuration(PUT)`` (with the simple auth manager: Op or Admin). Edge
worker tokens and shared-secret JWTs are not Airflow tokens and never open them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from flask import request

from edge_kombu.server.web.access import ADMIN, VIEWER, NotSignedIn, User

#: Airflow's session cookie (``airflow.api_fastapi.auth.managers.base_auth_manager``).
COOKIE = "_token"


class AirflowAccess:
    """Page access decided by Airflow's auth manager."""

    #: Where the audit log says the actions of these users come from.
    via = "airflow"

    def _token(self) -> str | None:
        token = request.cookies.get(COOKIE)
        if token:
            return token
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        return credential.strip() if scheme.lower() == "bearer" and credential else None

    def user(self) -> User:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
        from jwt import InvalidTokenError

        token = self._token()
        manager = get_auth_manager()
        login_url = manager.get_url_login(next_url=request.url)
        if not token:
            raise NotSignedIn(401, "sign in to Airflow first (the pages use its session)",
                              login_url=login_url)
        try:
            user = asyncio.run(manager.get_user_from_token(token))
        except InvalidTokenError:
            raise NotSignedIn(401, "not an Airflow session: sign in to Airflow",
                              login_url=login_url) from None
        if not manager.is_authorized_view(access_view=AccessView.JOBS, user=user):
            raise NotSignedIn(403, f"Airflow user {user.get_name()!r} may not view jobs")
        role = ADMIN if manager.is_authorized_configuration(method="PUT", user=user) else VIEWER
        return User(name=user.get_name(), role=role, csrf=_csrf(user.get_id(), token))


def _csrf(user_id: str, token: str) -> str:
    """Per user, keyed by Airflow's JWT secret (the same in every api-server process)."""
    from airflow.configuration import conf

    secret = conf.get("api_auth", "jwt_secret", fallback=None) or token
    key = hashlib.sha256(b"edge-kombu-csrf\0" + secret.encode()).digest()
    return hmac.new(key, str(user_id).encode(), hashlib.sha256).hexdigest()
