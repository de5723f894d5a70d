"""The monitoring pages of the edge API: worker hosts, jobs, queues (Flask + Jinja)."""
