"""Example DAGs shipped with edge-kombu (``edge-kombu demo`` runs ``edge_demo``)."""
