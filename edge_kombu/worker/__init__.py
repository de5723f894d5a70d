"""Celery worker integration: SlotPool, the edge bootstep, local control, ``celery edge``."""
