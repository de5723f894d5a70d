"""Storing task states through the edge result backend against a real API: one request per
state, and Celery's rule that nothing overwrites a SUCCESS kept by the server."""

from __future__ import annotations

import pytest
from celery import Celery, states

from edge_kombu import errors

pytestmark = pytest.mark.timeout(60)


def backend_recording_verbs(url: str, **conf):
    app = Celery("result_store", broker=url, backend=url, set_as_current=False)
    app.conf.update(**conf)
    backend, verbs = app.backend, []
    send = backend.api.call

    def call(verb, body, **kwargs):  # the real client, its verbs noted
        verbs.append(verb)
        return send(verb, body, **kwargs)

    backend.api.call = call
    return app, backend, verbs


def test_each_state_is_one_request_and_a_success_stays(api, token):
    url = api.url.replace("http://", f"edge+http://:{token}@")
    app, backend, verbs = backend_recording_verbs(url)
    backend.store_result("t1", None, states.STARTED)
    backend.store_result("t1", 4, states.SUCCESS)
    backend.store_result("t1", None, states.STARTED)  # a lost task's late update
    assert verbs == ["results/set"] * 3  # Celery alone reads before each write
    assert app.AsyncResult("t1").get(timeout=10) == 4
    app.close()


def test_other_serializers_keep_celerys_read_before_write(api, token):
    url = api.url.replace("http://", f"edge+http://:{token}@")
    app, backend, verbs = backend_recording_verbs(
        url, result_serializer="pickle", accept_content=["json", "pickle"],
        result_accept_content=["pickle"])
    backend.store_result("t2", 4, states.SUCCESS)
    backend.store_result("t2", None, states.STARTED)
    assert verbs == ["results/get", "results/set", "results/get"]
    assert app.AsyncResult("t2").get(timeout=10) == 4
    app.close()


def test_against_an_older_api_the_backend_keeps_celerys_read(api, token):
    """An API from before ``keep_success`` (it refuses the field) stores the write anyway,
    and the backend goes back to Celery's read before write from then on."""
    url = api.url.replace("http://", f"edge+http://:{token}@")
    app, backend, verbs = backend_recording_verbs(url)
    newer = backend.api.call

    def older(verb, body, **kwargs):  # what an older server answers to the new field
        if "keep_success" in body:
            verbs.append("refused")
            raise errors.InvalidRequest("body: unknown field(s) 'keep_success'; allowed: key")
        answer = newer(verb, body, **kwargs)
        return {} if verb == "results/set" else answer

    backend.api.call = older
    backend.store_result("t3", 4, states.SUCCESS)
    backend.store_result("t3", None, states.STARTED)
    assert verbs == ["refused", "results/set", "results/get"]  # the last: Celery's read
    assert app.AsyncResult("t3").get(timeout=10) == 4
    app.close()
