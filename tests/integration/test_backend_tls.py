"""The result backend over a real server, and the transport over TLS with client certificates."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from celery import Celery
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_kombu.transport.backend import EdgeBackend

pytestmark = pytest.mark.timeout(180)


def backend_for(url: str, **conf) -> EdgeBackend:
    app = Celery("backend_test", set_as_current=False)
    app.conf.update(result_backend=url, result_expires=3600, **conf)
    return app.backend


def test_kv_backend_operations(api, token):
    backend = backend_for(api.url.replace("http://", f"edge+http://:{token}@"))
    assert isinstance(backend, EdgeBackend)
    backend.set("k1", '{"status": "SUCCESS"}')
    backend.set("k2", b"\x00\xffbinary")
    assert backend.get("k1") == '{"status": "SUCCESS"}'
    assert backend.get("k2") == b"\x00\xffbinary"
    expected = [b"\x00\xffbinary", None, '{"status": "SUCCESS"}']
    assert backend.mget(["k2", "missing", "k1"]) == expected
    assert [backend.incr("counter") for _ in range(3)] == [1, 2, 3]
    backend.delete("k1")
    assert backend.get("k1") is None
    assert "**" in backend.as_uri() and token not in backend.as_uri()


def test_mget_is_one_request(api_factory, token, worker_factory, celery_client):
    api = api_factory(extra=["--access-log"])
    url = api.url.replace("http://", f"edge+http://:{token}@")
    worker_factory(url)
    client = Celery("mget_client", broker=url, backend=url, set_as_current=False)
    results = [client.send_task("tests.celery_app.add", args=(i, i)) for i in range(25)]
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(25)]
    before = api.log().count("/api/v1/results/mget")
    states = client.backend.get_many({r.id for r in results}, timeout=5)
    assert len(dict(states)) == 25
    assert api.log().count("/api/v1/results/mget") == before + 1


# -- TLS ---------------------------------------------------------------------------------------


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_cert=None, issuer_key=None, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path, cert=None, key=None) -> str:
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def pki(tmp_path):
    ca_key = _key()
    ca = _cert("edge-kombu test CA", ca_key, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("127.0.0.1", server_key, ca, ca_key, server=True)
    client = _cert("wisconsin-01", client_key, ca, ca_key)
    return {
        "ca": _write(tmp_path / "ca.pem", ca),
        "server_cert": _write(tmp_path / "server.pem", server),
        "server_key": _write(tmp_path / "server.key", key=server_key),
        "client_cert": _write(tmp_path / "client.pem", client),
        "client_key": _write(tmp_path / "client.key", key=client_key),
    }


def test_tls_with_client_certificate(api_factory, token, worker_factory, pki):
    api = api_factory(extra=["--certfile", pki["server_cert"], "--keyfile", pki["server_key"],
                             "--ca-certs", pki["ca"], "--require-client-cert"])
    https = api.url
    url = https.replace("https://", f"edge+https://:{token}@")
    tls = {"ca_certs": pki["ca"], "certfile": pki["client_cert"], "keyfile": pki["client_key"]}

    client = Celery("tls_client", broker=url, backend=url, set_as_current=False)
    client.conf.broker_use_ssl = tls
    worker_factory(url, env={"EDGE_TEST_USE_SSL": "|".join([pki["ca"], pki["client_cert"],
                                                             pki["client_key"]])})
    assert client.send_task("tests.celery_app.add", args=(40, 2)).get(timeout=30) == 42

    # Without a client certificate the TLS handshake is refused; without the CA the
    # server certificate is not trusted. Both surface as connection errors.
    from edge_kombu.errors import EdgeConnectionError
    from edge_kombu.transport.client import EdgeClient

    with pytest.raises(EdgeConnectionError):
        EdgeClient(https, token=token, verify=pki["ca"], connect_retries=0).call("hello")
    with pytest.raises(EdgeConnectionError):
        EdgeClient(https, token=token, cert=(pki["client_cert"], pki["client_key"]),
                   connect_retries=0).call("hello")
    assert EdgeClient(https, token=token, verify=pki["ca"],
                      cert=(pki["client_cert"], pki["client_key"])).call("hello")["principal"]
