"""edge-kombu: Celery over HTTPS for workers at remote sites.

Importing the package registers the ``edge`` kombu transport, so broker URLs of
the form ``edge+https://:TOKEN@host/prefix`` work in any Celery app.
"""

from __future__ import annotations

from edge_kombu.protocol import VERSION as __version__  # noqa: F401 - the package version


def _register_transport() -> None:
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES.setdefault("edge", "edge_kombu.transport.kombu:Transport")


_register_transport()
