"""Helpers shared by the server's tests: messages and consumes for the broker's contract
suite, raw requests for the HTTP tests."""

from __future__ import annotations

import json
import time

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from edge_kombu import errors
from edge_kombu.protocol import API_PATH, HEADER_POOL_SLOTS, HEADER_PROTOCOL, PROTOCOL_VERSION
from edge_kombu.server.broker import Broker, Delivery

PRINCIPAL = "test-worker"
#: The local OIDC issuer's name and the audience the test servers expect.
ISSUER = "https://issuer.example.test"
AUDIENCE = "edge-kombu-test"


# -- the broker, directly ----------------------------------------------------------------


def msg(body: str, *, priority=None, slots=None, expiration=None) -> dict:
    headers = {} if slots is None else {HEADER_POOL_SLOTS: slots}
    properties: dict = {}
    if priority is not None:
        properties["priority"] = priority
    if expiration is not None:
        properties["expiration"] = expiration
    return {"body": body, "headers": headers, "properties": properties}


def consume(
    broker: Broker, session: str, *queues: str, no_ack: bool = False, **kwargs
) -> list[Delivery]:
    """What a consume request does without waiting: touch the session for ``queues``, claim."""
    broker.touch_session(session, PRINCIPAL, queues)
    return broker.claim(session, [(q, no_ack) for q in queues], **kwargs)


def bodies(deliveries: list[Delivery]) -> list[str]:
    return [d.message["body"] for d in deliveries]


def tag_of(delivery: Delivery) -> str:
    return delivery.message["properties"]["delivery_tag"]


def redelivered(delivery: Delivery) -> bool:
    return delivery.message["properties"]["delivery_info"]["redelivered"]


def depth(broker: Broker, queue: str) -> int:
    return broker.queue_info(queue).messages


def queue_exists(broker: Broker, queue: str) -> bool:
    try:
        broker.queue_info(queue)
    except errors.NotFound:
        return False
    return True


def drain(broker: Broker, session: str, queue: str) -> list[str]:
    return bodies(consume(broker, session, queue, max_messages=1000))


# -- the API, over HTTP ------------------------------------------------------------------


def post(server, route: str, body=None, *, token: str | None = None, headers: dict | None = None,
         **kwargs) -> requests.Response:
    """POST ``body`` to ``route`` as a raw request; ``headers`` values of None are left out."""
    sent = {HEADER_PROTOCOL: PROTOCOL_VERSION}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    if "data" not in kwargs:
        kwargs["json"] = {} if body is None else body
    return requests.post(f"{server.url}{API_PATH}/{route}", headers=sent, timeout=30, **kwargs)


def error_message(response: requests.Response, status: int) -> str:
    """Assert ``response`` is a clean JSON error with ``status``; return its message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/json", response.headers
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    return body["message"]


# -- a local OIDC issuer ------------------------------------------------------------------


class OIDCIssuer:
    """A local OIDC issuer: an RSA key pair whose public half is in a JWKS file."""

    def __init__(self, path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="test-key", use="sig", alg="RS256")
        self.jwks_file = path / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [jwk]}))

    def mint(self, sub: str, *, audience: str = AUDIENCE, issuer: str = ISSUER,
             lifetime: int = 600, key=None) -> str:
        now = int(time.time())
        return jwt.encode({"sub": sub, "aud": audience, "iss": issuer, "iat": now,
                           "exp": now + lifetime}, key or self.key, algorithm="RS256",
                          headers={"kid": "test-key"})
