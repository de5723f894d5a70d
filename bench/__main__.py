"""``python -m bench <brokers|idle|scale|airflow|dbload|report|all> [--quick]``

Runs the benchmarks against real processes on this machine, writes
``bench/results/<name>[-quick].json`` and (``report``, ``all``) ``docs/benchmarks.md``
with PNG plots. Every command a benchmark starts is printed as it runs. Nothing is
installed: the project's ``test`` and ``bench`` extras must be; the Airflow comparison
runs in the Airflow virtualenvs (see ``python -m bench airflow --help``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import env

BENCHMARKS = ("brokers", "idle", "scale", "airflow")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=(*BENCHMARKS, "dbload", "report", "all"))
    parser.add_argument("--quick", action="store_true",
                        help="seconds, tiny N: checks the harness, not the numbers")
    parser.add_argument("--out", type=Path, default=env.RESULTS, help="results directory")
    parser.add_argument("--brokers", help="comma-separated subset of brokers (brokers)")
    parser.add_argument("--dbs", help="comma-separated subset of sqlite,postgres (dbload)")
    parser.add_argument("--workers", help="comma-separated simulated worker counts (scale)")
    parser.add_argument("--api-workers", type=int, default=1,
                        help="API server processes (scale)")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite",
                        help="the API server's database (scale)")
    parser.add_argument("--rate", type=float, help="tasks per second under load (scale)")
    parser.add_argument("--load-seconds", type=float, help="seconds under load (scale)")
    parser.add_argument("--stress", action=argparse.BooleanOptionalAction, default=None,
                        help="one more run of the largest fleet at 60 tasks/s (scale; "
                             "default: in full runs only)")
    parser.add_argument("--airflow-venv", default=None,
                        help="virtualenv with Airflow + this project (default $BENCH_AIRFLOW_VENV"
                             " or /work/afvenv)")
    parser.add_argument("--edge3-venv", default=None,
                        help="virtualenv with apache-airflow-providers-edge3 (default "
                             "$BENCH_EDGE3_VENV or /work/bench-venvs/edge3); skipped if missing")
    parser.add_argument("--runs", type=int, help="runs per Airflow measurement")
    args = parser.parse_args(argv)
    todo = BENCHMARKS if args.what == "all" else (args.what,)
    if args.what != "report":
        for name in todo:
            env.COMMANDS.clear()
            data = _run(name, args)
            env.save(name, data, quick=args.quick, out=args.out)
    if args.what in ("report", "all") and not args.quick:
        from bench import report

        print(f"wrote {report.write(args.out)}")
    return 0


def _run(name: str, args) -> dict:
    if name == "brokers":
        from bench import brokers

        chosen = tuple(args.brokers.split(",")) if args.brokers else brokers.BROKERS
        return brokers.run(quick=args.quick, brokers=chosen)
    if name == "dbload":
        from bench import dbload

        dbs = tuple(args.dbs.split(",")) if args.dbs else ("sqlite", "postgres")
        return dbload.run(quick=args.quick, dbs=dbs)
    if name == "idle":
        from bench import idle

        return idle.run(quick=args.quick)
    if name == "scale":
        from bench import scale

        counts = [int(n) for n in args.workers.split(",")] if args.workers else None
        return scale.run(quick=args.quick, counts=counts, rate=args.rate, db=args.db,
                         api_workers=args.api_workers, stress=args.stress,
                         load_seconds=args.load_seconds)
    from bench import airflow

    return airflow.run(quick=args.quick, airflow_venv=args.airflow_venv,
                       edge3_venv=args.edge3_venv, runs=args.runs)


if __name__ == "__main__":
    sys.exit(main())
