"""Worker side of edge-kombu: HTTP client, kombu transport, Celery result backend.

Nothing here imports Flask, SQLAlchemy, Airflow or :mod:`edge_kombu.server`.
"""
