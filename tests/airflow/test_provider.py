"""edge-kombu as an Airflow provider: discovery, documented ``[edge]`` options, plugin."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema

from edge_kombu import __version__
from edge_kombu.airflow.provider import EDGE_OPTIONS, get_provider_info


def _json_out(stdout: str):
    """The JSON document of a CLI's output (Airflow may log lines before it)."""
    start = min(i for i in (stdout.find("["), stdout.find("{")) if i >= 0)
    return json.loads(stdout[start:])


def test_provider_info_follows_airflows_runtime_schema():
    spec = importlib.util.find_spec("airflow")
    schema_path = Path(spec.submodule_search_locations[0]) / "provider_info.schema.json"
    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))


def test_airflow_providers_list_shows_edge_kombu(site):
    providers = _json_out(site.airflow("providers", "list", "-o", "json").stdout)
    ours = [p for p in providers if p["package_name"] == "edge-kombu"]
    assert len(ours) == 1, providers
    assert ours[0]["version"] == __version__


def test_edge_options_are_documented_with_defaults(site):
    listing = site.airflow("config", "list", "--section", "edge", "--show-values",
                           "--include-descriptions").stdout
    for name in EDGE_OPTIONS:
        assert f"{name} =" in listing, listing
    assert "Serve the edge API from ``airflow api-server``" in listing
    for line in ("api_enabled = True",  # the site's setting; the others are defaults
                 "heartbeat_interval = 10", "api_threads = 64", "# token_file = "):
        assert f"\n{line}\n" in listing, listing


def test_plugin_is_registered(site):
    plugins = _json_out(site.airflow("plugins", "-o", "json").stdout)
    assert [p["name"] for p in plugins if p["name"] == "edge_kombu"] == ["edge_kombu"], plugins
