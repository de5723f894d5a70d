"""Who is calling, and with which scope (:class:`~edge_kombu.server.scopes.Scope`).

``Authorization: Bearer <credential>`` where the credential is one of

* an API token (``ekt_…``) from ``edge-kombu token create``: central (``--central``) or
  scoped to a site's workers (``--worker NAME --queues …``); the server keeps only its
  SHA-256, and each process remembers what it looked up until any credential changes
  (:mod:`~edge_kombu.server.credential_cache`), so a revocation takes effect on the next
  request (and cuts a waiting long-poll within a second);
* a JWT (HS512) minted from the shared secret ``[core] internal_api_secret_key``, bound to
  the one route it was minted for (claim ``route``) and living at most
  ``jwt_max_lifetime`` seconds, as Airflow's edge executor mints them. Everyone holding
  the secret is central, unless ``shared_secret_scope`` is ``worker``: then the JWT has
  the scope of the worker entry naming its ``sub`` (``token create --worker NAME
  --no-token``);
* a JWT from an OIDC issuer (workload identity) when one is configured: signature from
  the issuer's JWKS (URL or file), issuer and audience checked, the worker name from a
  claim, the scope from the worker entry naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from edge_kombu import errors
from edge_kombu.protocol import JWT_ALGORITHM, JWT_AUDIENCE, JWT_ROUTE_CLAIM, jwt_signing_key
from edge_kombu.server.credentials import TOKEN_PREFIX, Credentials, Entry, hash_token
from edge_kombu.server.scopes import ADMIN, Scope

_HOW = (
    "send 'Authorization: Bearer <credential>' with a token from "
    "'edge-kombu token create' or a JWT signed with [core] internal_api_secret_key"
)
#: Asymmetric algorithms accepted from an OIDC issuer.
OIDC_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                   "ES512", "EdDSA"]


@dataclass(frozen=True)
class OIDCSettings:
    issuer: str
    audience: str
    jwks_url: str | None = None
    jwks_file: str | None = None
    worker_claim: str = "sub"


def _scope(entry: Entry, credentials: Credentials, *, token_hash: str | None = None,
           name: str | None = None) -> Scope:
    def still_valid(fresh: bool = False) -> bool:
        return credentials.still_valid(entry.name, token_hash, fresh=fresh)

    if entry.kind == ADMIN:
        return Scope(name or entry.name, False, still_valid=still_valid,
                     valid_until=entry.expires_at, admin=True)
    if entry.central:
        return Scope(name or entry.name, True, still_valid=still_valid,
                     valid_until=entry.expires_at)
    return Scope.for_worker(name or entry.name, entry.name, entry.queues, entry.publish,
                            still_valid, entry.expires_at)


class Authenticator:
    def __init__(self, credentials: Credentials, secret: str | None, *,
                 leeway: float = 10.0, jwt_max_lifetime: float = 300.0,
                 shared_secret_scope: str = "central", oidc: OIDCSettings | None = None) -> None:
        self.credentials = credentials
        self.secret = secret
        self.leeway = leeway
        self.jwt_max_lifetime = jwt_max_lifetime
        self.shared_secret_scope = shared_secret_scope
        self.oidc = oidc
        self._jwks = None

    def authenticate(self, header: str | None, route: str) -> Scope:
        """Return the caller's scope, or raise :class:`AuthenticationFailed`."""
        if not header:
            raise errors.AuthenticationFailed(f"missing credentials: {_HOW}")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise errors.AuthenticationFailed(f"malformed Authorization header: {_HOW}")
        if credential.startswith(TOKEN_PREFIX):
            return self._token(credential)
        if credential.count(".") == 2:
            if self.oidc is not None and not self._is_shared_secret_jwt(credential):
                return self._verify_oidc(credential)
            return self._verify_jwt(credential, route)
        raise errors.AuthenticationFailed(f"unrecognised credential: {_HOW}")

    def _token(self, credential: str) -> Scope:
        entry = self.credentials.lookup(credential)
        if entry is None:
            raise errors.AuthenticationFailed("unknown or revoked worker token")
        if entry.expires_at is not None and entry.expires_at <= self.credentials.sql.clock():
            raise errors.AuthenticationFailed(
                f"the token of {entry.name!r} has expired; issue a new one "
                "('edge-kombu token revoke' and 'token create')"
            )
        return _scope(entry, self.credentials, token_hash=hash_token(credential))

    @staticmethod
    def _is_shared_secret_jwt(credential: str) -> bool:
        try:
            return jwt.get_unverified_header(credential).get("alg", "").startswith("HS")
        except jwt.InvalidTokenError:
            return True  # let the shared-secret path name what is wrong

    def _verify_jwt(self, credential: str, route: str) -> Scope:
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
        self._check_lifetime(claims)
        if claims[JWT_ROUTE_CLAIM] != route:
            raise errors.AuthenticationFailed(
                f"JWT was minted for route {claims[JWT_ROUTE_CLAIM]!r}, not {route!r}"
            )
        sub = str(claims["sub"])
        if self.shared_secret_scope != "worker":
            return Scope(f"shared-secret:{sub}", True)
        return self._worker_scope(sub, "shared-secret JWT", claims["exp"])

    def _check_lifetime(self, claims: dict) -> None:
        try:
            lifetime = float(claims["exp"]) - float(claims["iat"])
        except (TypeError, ValueError):
            raise errors.AuthenticationFailed("JWT rejected: exp and iat must be numbers") from None
        if lifetime > self.jwt_max_lifetime:
            raise errors.AuthenticationFailed(
                f"JWT rejected: it lives {lifetime:.0f}s (exp - iat), more than the "
                f"{self.jwt_max_lifetime:.0f}s this server accepts; mint short-lived JWTs"
            )

    def _worker_scope(self, worker: str, what: str, exp: float) -> Scope:
        entry = self.credentials.for_worker(worker)
        if entry is None or entry.central:
            raise errors.Forbidden(
                f"{what} for worker {worker!r}: no worker entry names it; create one with "
                f"'edge-kombu token create --worker NAME --queues Q,... --no-token'"
            )
        if entry.expires_at is not None and entry.expires_at <= self.credentials.sql.clock():
            raise errors.AuthenticationFailed(f"the worker entry {entry.name!r} has expired")
        clock = self.credentials.sql.clock
        credentials = self.credentials

        def still_valid(fresh: bool = False) -> bool:
            return clock() < float(exp) + self.leeway and credentials.still_valid(
                entry.name, None, fresh=fresh)

        ends = [float(exp) + self.leeway, entry.expires_at]
        return Scope.for_worker(entry.name, entry.name, entry.queues, entry.publish, still_valid,
                                min(end for end in ends if end is not None))

    # -- OIDC workload identity -----------------------------------------------------------

    def _signing_key(self, credential: str):
        oidc = self.oidc
        if oidc.jwks_url:
            if self._jwks is None:
                self._jwks = jwt.PyJWKClient(oidc.jwks_url, cache_keys=True, lifespan=300)
            return self._jwks.get_signing_key_from_jwt(credential).key
        kid = jwt.get_unverified_header(credential).get("kid")
        with open(oidc.jwks_file, encoding="utf-8") as handle:  # re-read: keys rotate
            keys = jwt.PyJWKSet.from_json(handle.read())
        if kid is None and len(keys.keys) == 1:
            return keys.keys[0].key
        return keys[kid].key

    def _verify_oidc(self, credential: str) -> Scope:
        oidc = self.oidc
        try:
            key = self._signing_key(credential)
            claims = jwt.decode(
                credential, key, algorithms=OIDC_ALGORITHMS, audience=oidc.audience,
                issuer=oidc.issuer, leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", oidc.worker_claim]},
            )
        except jwt.ExpiredSignatureError:
            raise errors.AuthenticationFailed("OIDC token expired") from None
        except (jwt.PyJWTError, KeyError, OSError) as exc:  # bad token, keys or JWKS file
            raise errors.AuthenticationFailed(
                f"OIDC token rejected ({type(exc).__name__}): check the issuer, audience and "
                "signing keys configured on the server"
            ) from None
        worker = claims[oidc.worker_claim]
        if not isinstance(worker, str) or not worker:
            raise errors.AuthenticationFailed(
                f"OIDC token rejected: claim {oidc.worker_claim!r} must name the worker"
            )
        return self._worker_scope(worker, "OIDC token", claims["exp"])
