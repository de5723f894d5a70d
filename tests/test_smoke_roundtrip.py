def test_task_round_trip(broker_url, worker_factory, celery_client):
    worker_factory(broker_url)
    result = celery_client.send_task("tests.celery_app.add", args=(2, 3))
    assert result.get(timeout=20) == 5
