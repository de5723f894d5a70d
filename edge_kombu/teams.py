"""Airflow's multi-team mode (AIP-67) on the edge link: each team's work in its own queues.

One edge API serves every team, so a team's workloads are kept apart by queue name: the
EdgeExecutor of team ``T`` (``[core] executor = ...;T=edge_kombu.airflow.EdgeExecutor``)
publishes a task for queue ``q`` to ``T:q``; a worker started with ``--team-name T``
(``EDGE_KOMBU_TEAM_NAME``) consumes ``T:q`` for every queue ``q`` it is given; a worker
credential created with ``--team T`` may consume and publish only ``T:`` queues. A worker
without a team never sees a team's queue unless one is named to it in full, and a team's
site credential cannot reach another team's queue or the global ones.

Stdlib only: the executor, the worker and the server share it.
"""

from __future__ import annotations

#: Between the team and the queue name in a team's queue (``team_a:default``).
SEPARATOR = ":"
#: Longest team name (Airflow's ``team.name`` column).
MAX_TEAM_NAME = 50


def check_team_name(team: str) -> str:
    """``team`` if it can name a team here, else ValueError saying what is allowed."""
    if not team or len(team) > MAX_TEAM_NAME or SEPARATOR in team or "\x00" in team:
        raise ValueError(f"a team name has 1 to {MAX_TEAM_NAME} characters, without "
                         f"{SEPARATOR!r} or NUL: {team[:80]!r}")
    return team


def team_queue(team: str | None, queue: str) -> str:
    """The queue that holds team ``team``'s work for ``queue`` (``queue`` itself without a
    team, or when it already is that team's)."""
    if not team or queue.startswith(f"{team}{SEPARATOR}"):
        return queue
    return f"{team}{SEPARATOR}{queue}"


def team_of(queue: str) -> str | None:
    """The team whose queue ``queue`` is, else None."""
    team, separator, rest = queue.partition(SEPARATOR)
    return team if separator and team and rest else None
