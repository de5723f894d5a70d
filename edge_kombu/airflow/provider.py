"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point (stdlib only).

The ``[edge]`` options are the ones users of Airflow's edge executor know; Airflow shows
them with their defaults in ``airflow config list`` once the provider is installed.
"""

from __future__ import annotations

from edge_kombu.protocol import VERSION

#: Path under which ``airflow api-server`` serves the edge API when ``[edge] api_enabled``.
API_PREFIX = "/edge"
#: Default size of the thread pool running the edge API inside each api-server process.
DEFAULT_API_THREADS = 64


def _option(description: str, *, type: str = "string", default: str | None = None,
            example: str | None = None, sensitive: bool = False) -> dict:
    option = {
        "description": description,
        "version_added": "1.0.0",
        "type": type,
        "example": example,
        "default": default,
    }
    if sensitive:
        option["sensitive"] = True
    return option


EDGE_OPTIONS = {
    "api_enabled": _option(
        "Serve the edge API from ``airflow api-server`` under ``/edge`` on the Airflow\n"
        "metadata database. Off: run ``edge-kombu api`` as a separate server instead.\n",
        type="boolean", default="False",
    ),
    "api_url": _option(
        "URL of the edge API, used by the EdgeExecutor to publish and read results and by\n"
        "edge workers to consume. With ``api_enabled`` it is the api-server's address plus\n"
        "``/edge``. The credential is ``[core] internal_api_secret_key`` (shared secret) or\n"
        "a per-worker token (``token_file``).\n",
        example="https://airflow.example.com/edge/",
    ),
    "token_file": _option(
        "File holding a per-worker token issued by ``edge-kombu token create --worker NAME``\n"
        "(or an OIDC identity token; read again when it changes).\n"
        "Unset: the shared secret ``[core] internal_api_secret_key`` is used.\n",
        example="/etc/edge-kombu/token",
    ),
    "shared_secret_scope": _option(
        "What a JWT signed with ``[core] internal_api_secret_key`` may do on the edge API:\n"
        "``central`` (everything: everyone holding the secret is central) or ``worker`` (the\n"
        "scope of the worker entry naming its ``sub``, ``edge-kombu token create --worker\n"
        "NAME --queues Q --no-token``).\n",
        default="central",
    ),
    "oidc_issuer": _option(
        "OIDC workload identity: the issuer (``iss``) whose identity tokens the edge API\n"
        "accepts; with ``oidc_audience`` and ``oidc_jwks_url`` or ``oidc_jwks_file``.\n",
        example="https://token.actions.example.com",
    ),
    "oidc_audience": _option("OIDC workload identity: the audience (``aud``) expected.\n"),
    "oidc_jwks_url": _option("OIDC workload identity: URL of the issuer's signing keys.\n"),
    "oidc_jwks_file": _option("OIDC workload identity: file holding the signing keys.\n"),
    "oidc_worker_claim": _option(
        "OIDC workload identity: the claim naming the worker, whose entry gives its scope.\n",
        default="sub",
    ),
    "publish_timeout": _option(
        "Seconds the EdgeExecutor waits for one publish to the edge API before it gives up\n"
        "and publishes again at its next heartbeat (instead of ``[celery] operation_timeout``,\n"
        "1 s, too short for a round trip over a WAN). A publish sent again under the same\n"
        "task id is stored once within the API's ``EDGE_KOMBU_PUBLISH_DEDUP_WINDOW``.\n",
        type="float", default="10.0",
    ),
    "heartbeat_interval": _option(
        "Seconds between two heartbeats of an edge worker.\n",
        type="integer", default="10",
    ),
    "job_poll_interval": _option(
        "Kept so that configurations of Airflow's edge executor still load; not used.\n"
        "edge-kombu workers do not poll: a consume waits on the edge API (long-poll) and a\n"
        "task reaches an idle worker within milliseconds of its publish.\n",
        type="integer", default="5",
    ),
    "worker_concurrency": _option(
        "Slot budget of ``airflow edge worker`` without ``-c``/``--concurrency``: how many\n"
        "task slots (``pool_slots``) it runs at once. ``celery -A edge_kombu worker``\n"
        "without ``-c`` uses it when set (else Celery's default, the CPU count). Changed\n"
        "at runtime with ``airflow edge set-worker-concurrency``.\n",
        type="integer", default="8",
    ),
    "worker_umask": _option(
        "umask of ``airflow edge worker --daemon`` without ``-u``/``--umask``\n"
        "(default: Airflow's daemon umask).\n",
        example="0o077",
    ),
    "ca_bundle": _option(
        "CA bundle to verify the edge API's TLS certificate (default: the system's).\n",
        example="/etc/ssl/certs/central-ca.pem",
    ),
    "client_cert": _option(
        "Client certificate presented to the edge API (mutual TLS).\n",
    ),
    "client_key": _option(
        "Private key of ``client_cert``.\n",
    ),
    "push_logs": _option(
        "Edge workers push each task's log to the edge API while the task runs, so Airflow's\n"
        "UI and REST API show it from the database (with ``[logging] logging_config_class =\n"
        "edge_kombu.airflow.logging_config.LOGGING_CONFIG``). False keeps logs on the\n"
        "workers only.\n",
        type="boolean", default="True",
    ),
    "log_push_interval": _option(
        "Seconds between two reads of a running task's log file by its edge worker; what\n"
        "the file gained is pushed then.\n",
        type="float", default="1.0",
    ),
    "push_log_chunk_size": _option(
        "Largest piece of a task log one push sends, in bytes (1024 to 1048576).\n",
        type="integer", default="524288",
    ),
    "log_retention_days": _option(
        "Days a pushed task log stays in the edge tables after its last chunk; the edge API\n"
        "purges older ones (``EDGE_KOMBU_LOG_RETENTION_DAYS`` overrides it).\n",
        type="float", default="30",
    ),
    "fetch_dag_bundles": _option(
        "Edge workers fetch the DAG bundle (name and version) each task needs from the\n"
        "edge API, over HTTPS with their credential, into a local cache: no DAG files to\n"
        "sync to edge hosts. Set on workers. Per bundle instead: the class\n"
        "``edge_kombu.airflow.worker.dag_bundle.EdgeDagBundle`` in the worker's\n"
        "``[dag_processor] dag_bundle_config_list``.\n",
        type="boolean", default="False",
    ),
    "bundle_cache_dir": _option(
        "Where the edge API (central: built archives) and edge workers (unpacked versions)\n"
        "keep DAG bundles. Default: a temporary folder (API), ``$AIRFLOW_HOME/edge_kombu/\n"
        "bundles`` (workers).\n",
        example="/var/cache/edge-kombu/bundles",
    ),
    "bundle_cache_keep": _option(
        "Edge workers: versions of each DAG bundle kept in the cache (the newest).\n",
        type="integer", default="5",
    ),
    "bundle_cache_max_age_days": _option(
        "Edge workers: a cached DAG bundle version unused for this many days is removed\n"
        "(unless among the newest ``bundle_cache_keep``).\n",
        type="float", default="7",
    ),
    "max_bundle_bytes": _option(
        "Central: largest DAG bundle the edge API serves (bytes of its files before\n"
        "compression); a larger one is refused with HTTP 413 naming the limit.\n",
        type="integer", default="104857600",
    ),
    "bundle_archives_kept": _option(
        "Central: versions of each DAG bundle whose archives the edge API keeps on disk\n"
        "(the newest built); an older one asked for again is built again.\n",
        type="integer", default="20",
    ),
    "bundle_queues": _option(
        "Central: which worker credentials may fetch which DAG bundles, as JSON\n"
        "``{\"bundle name\": [\"queue\", ...]}``: a credential whose queues include one of\n"
        "them. ``\"*\"`` as a bundle name or queue: any. Central credentials fetch any.\n",
        example='{"dags-folder": ["site-a", "site-b"], "*": ["default"]}',
    ),
    "api_threads": _option(
        "Threads running the edge API in each api-server process (``api_enabled``). Every\n"
        "connected edge worker keeps one busy with its long-poll, so allow the number of\n"
        "workers plus some headroom; for large fleets run ``edge-kombu api`` instead.\n",
        type="integer", default=str(DEFAULT_API_THREADS),
    ),
}


def get_cli_commands() -> list:
    """The ``airflow edge`` command group (:mod:`edge_kombu.airflow.cli`), loaded when the
    Airflow CLI asks for it (this module stays stdlib-only at import)."""
    from edge_kombu.airflow.cli import edge_commands

    return edge_commands()


def get_provider_info() -> dict:
    """What ``airflow providers list`` and Airflow's provider discovery read."""
    return {
        "package-name": "edge-kombu",
        "name": "Edge (Celery over HTTPS)",
        "description": "Airflow tasks on Celery workers at remote sites, over HTTP(S) only.",
        "versions": [VERSION],
        "executors": ["edge_kombu.airflow.EdgeExecutor"],
        "db-managers": ["edge_kombu.airflow.db_manager.EdgeDBManager"],
        "cli": ["edge_kombu.airflow.provider.get_cli_commands"],
        "config": {
            "edge": {
                "description": "The edge-kombu executor, its API and its workers.\n",
                "options": EDGE_OPTIONS,
            },
        },
    }
