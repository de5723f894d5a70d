"""``SQL.upsert`` and ``SQL.insert_ignore`` build a statement once per shape and bind the
values of every call: a reused statement must never carry an earlier call's values."""

from __future__ import annotations

from sqlalchemy import select

from edge_kombu.server import models as m

GEN = m.generation


def _value(sql, name: str) -> str | None:
    with sql.connect() as conn:
        return conn.execute(select(GEN.c.value).where(GEN.c.name == name)).scalar()


def test_upsert_binds_each_calls_values_into_one_statement(sql, monkeypatch):
    built = []
    build = sql._build_upsert
    monkeypatch.setattr(sql, "_build_upsert", lambda *a: built.append(a) or build(*a))
    with sql.transaction() as tx:
        sql.upsert(tx.conn, GEN, {"name": "t-a", "value": "1"}, ["name"])
        sql.upsert(tx.conn, GEN, {"name": "t-b", "value": "2"}, ["name"])
    assert (_value(sql, "t-a"), _value(sql, "t-b")) == ("1", "2")
    with sql.transaction() as tx:  # existing rows: the changes, each call's own
        sql.upsert(tx.conn, GEN, {"name": "t-a", "value": "x"}, ["name"], {"value": "3"})
        sql.upsert(tx.conn, GEN, {"name": "t-b", "value": "y"}, ["name"], {"value": "4"})
    assert (_value(sql, "t-a"), _value(sql, "t-b")) == ("3", "4")
    with sql.transaction() as tx:  # a change to a column keeps the row as it is
        sql.upsert(tx.conn, GEN, {"name": "t-a", "value": "z"}, ["name"],
                   {"value": GEN.c.value})
        sql.upsert(tx.conn, GEN, {"name": "t-c", "value": "5"}, ["name"],
                   {"value": GEN.c.value})
    assert (_value(sql, "t-a"), _value(sql, "t-c")) == ("3", "5")
    # One statement per shape, however many calls: changes to values (given or the
    # row's own) share one, the change to a column has its own.
    assert len(built) == 2


def test_insert_ignore_reuses_its_statement_and_counts_what_it_inserted(sql):
    with sql.transaction() as tx:
        assert sql.insert_ignore(tx.conn, GEN, [{"name": "i-a", "value": "1"}]) == 1
        assert sql.insert_ignore(tx.conn, GEN, [{"name": "i-a", "value": "2"}]) == 0
        assert sql.insert_ignore(tx.conn, GEN, [{"name": "i-b", "value": "3"}]) == 1
    assert (_value(sql, "i-a"), _value(sql, "i-b")) == ("1", "3")
