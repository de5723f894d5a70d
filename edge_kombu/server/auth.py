"""Who is calling: per-worker tokens, or JWTs signed with the shared secret.

``Authorization: Bearer <credential>`` where the credential is either

* a per-worker token (``ekt_…``) issued by ``edge-kombu token create``; the server
  keeps only its SHA-256 and looks it up on every request, so a revocation takes
  effect on the next request; or
* a JWT (HS512) minted by the client from ``[core] internal_api_secret_key``, valid
  for a minute and bound to the one route it was minted for (claim ``route``), as
  Airflow's edge executor does.
"""

from __future__ import annotations

import jwt

from edge_kombu import errors
from edge_kombu.protocol import JWT_ALGORITHM, JWT_AUDIENCE, JWT_ROUTE_CLAIM, jwt_signing_key
from edge_kombu.server.credentials import TOKEN_PREFIX, Credentials

_HOW = (
    "send 'Authorization: Bearer <credential>' with a worker token from "
    "'edge-kombu token create' or a JWT signed with [core] internal_api_secret_key"
)


class Authenticator:
    def __init__(self, credentials: Credentials, secret: str | None, *,
                 leeway: float = 10.0) -> None:
        self.credentials = credentials
        self.secret = secret
        self.leeway = leeway

    def authenticate(self, header: str | None, route: str) -> str:
        """Return the caller's name, or raise :class:`AuthenticationFailed`."""
        if not header:
            raise errors.AuthenticationFailed(f"missing credentials: {_HOW}")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise errors.AuthenticationFailed(f"malformed Authorization header: {_HOW}")
        if credential.startswith(TOKEN_PREFIX):
            name = self.credentials.principal_for(credential)
            if name is None:
                raise errors.AuthenticationFailed("unknown or revoked worker token")
            return name
        if credential.count(".") == 2:
            return self._verify_jwt(credential, route)
        raise errors.AuthenticationFailed(f"unrecognised credential: {_HOW}")

    def _verify_jwt(self, credential: str, route: str) -> str:
        if not self.secret:
            raise errors.AuthenticationFailed(
                "a JWT was sent but this server has no shared secret "
                "([core] internal_api_secret_key); use a worker token"
            )
        try:
            claims = jwt.decode(
                credential,
                jwt_signing_key(self.secret),
                algorithms=[JWT_ALGORITHM],
                audience=JWT_AUDIENCE,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", JWT_ROUTE_CLAIM]},
            )
        except jwt.ExpiredSignatureError:
            raise errors.AuthenticationFailed(
                "JWT expired: check that the clocks of worker and server agree"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise errors.AuthenticationFailed(
                f"JWT rejected ({type(exc).__name__}): is the shared secret the same on both sides?"
            ) from None
        if claims[JWT_ROUTE_CLAIM] != route:
            raise errors.AuthenticationFailed(
                f"JWT was minted for route {claims[JWT_ROUTE_CLAIM]!r}, not {route!r}"
            )
        return f"shared-secret:{claims['sub']}"
