"""Benchmarks of edge-kombu against other Celery brokers (``python -m bench``)."""
