"""``docs/benchmarks.md`` and its PNG plots from the JSON results of the full runs.

Tables and verdicts against the targets are computed from the results; the analysis
(what the numbers mean, where things break) is kept by hand in ``bench/analysis.md`` and
included as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import ROOT

DOCS = ROOT / "docs"
PLOTS = DOCS / "benchmarks"
ANALYSIS = ROOT / "bench" / "analysis.md"
SUFFIX = ""  # "-quick": the report of quick runs (the test suite's)


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}{SUFFIX}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("–" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _bars(path: Path, title: str, ylabel: str, labels: list[str], series: dict[str, list]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(xs, [v or 0 for v in values], width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![{title}](benchmarks/{path.name})"


def _lines(path: Path, title: str, xlabel: str, ylabel: str, xs: list, series: dict[str, list]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, values in series.items():
        ax.plot(xs, values, marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![{title}](benchmarks/{path.name})"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def brokers_section(data: dict, targets: list) -> list[str]:
    rows, brokers = [], data["brokers"]
    for name, row in brokers.items():
        ratio = row.get("vs_redis", {})
        rows.append([name, row["latency"]["p50_ms"], row["latency"]["p99_ms"], ratio.get("p50"),
                     row["throughput_1"]["tasks_per_s"], row["throughput_4"]["tasks_per_s"],
                     ratio.get("throughput_1"), ratio.get("throughput_4")])
    names = list(brokers)
    out = ["## 1. Broker micro-benchmarks", "",
           f"No-op Celery task, one worker `{' '.join(data['settings']['worker'])}`, acks_late, "
           f"prefetch multiplier 1. Latency: {data['settings']['latency_tasks']} tasks sent one "
           f"at a time, publish→task start. Throughput: {data['settings']['throughput_tasks']} "
           "tasks queued, then all workers start on them at once (broadcast `add_consumer`); "
           "tasks/s over the middle 90 % of start times. Ratios are to Redis in the same run.", "",
           _table(["broker", "p50 ms", "p99 ms", "p50 ÷ Redis", "tasks/s 1 worker",
                   "tasks/s 4 workers", "÷ Redis (1)", "÷ Redis (4)"], rows), "",
           _bars(PLOTS / "broker-latency.png", "publish→start latency", "ms", names,
                 {"p50": [brokers[n]["latency"]["p50_ms"] for n in names],
                  "p99": [brokers[n]["latency"]["p99_ms"] for n in names]}), "",
           _bars(PLOTS / "broker-throughput.png", "sustained throughput", "tasks/s", names,
                 {"1 worker": [brokers[n]["throughput_1"]["tasks_per_s"] for n in names],
                  "4 workers": [brokers[n]["throughput_4"]["tasks_per_s"] for n in names]}), ""]
    publishing = [[n, brokers[n]["publishing"]["publishes_per_s"],
                   brokers[n].get("vs_redis", {}).get("publishes_per_s"),
                   brokers[n]["publishing"]["end_to_end_tasks_per_s"],
                   brokers[n].get("vs_redis", {}).get("end_to_end_tasks_per_s")]
                  for n in names if "publishing" in brokers[n]]
    if publishing:
        out += [f"Publishing: one producer sends {data['settings']['publishing_tasks']} tasks "
                "back to back (one `send_task` each) while one worker consumes them.", "",
                _table(["broker", "publishes/s", "÷ Redis", "end-to-end tasks/s", "÷ Redis"],
                       publishing), ""]
    # Issue 13's targets: (name, p50, p99, throughput 1 worker, 4 workers) as ratios to Redis.
    goals = {"edge-sqlite": (2.0, 3.0, 0.8, 1.0), "edge-postgres": (2.5, 3.0, 0.6, 0.7)}
    for name, (p50, p99, one, four) in goals.items():
        ratio = brokers.get(name, {}).get("vs_redis")
        targets.append((f"p50 / p99 latency ≤ {p50}× / {p99}× Redis ({name})",
                        ratio and f"{ratio['p50']} / {ratio['p99']}",
                        None if not ratio else ratio["p50"] <= p50 and ratio["p99"] <= p99))
        targets.append((f"throughput ≥ {one}× / {four}× Redis ({name}, 1 / 4 workers)",
                        ratio and f"{ratio['throughput_1']} / {ratio['throughput_4']}",
                        None if not ratio else ratio["throughput_1"] >= one
                        and ratio["throughput_4"] >= four))
    ratio = brokers.get("edge-sqlite", {}).get("vs_redis") or {}
    if "publishes_per_s" in ratio:
        targets.append(("one producer ≥ 0.5× Redis; end to end ≥ 0.8× Redis (edge-sqlite)",
                        f"{ratio['publishes_per_s']} / {ratio['end_to_end_tasks_per_s']}",
                        ratio["publishes_per_s"] >= 0.5
                        and ratio["end_to_end_tasks_per_s"] >= 0.8))
    return out


def airflow_section(data: dict, targets: list) -> list[str]:
    execs = data["executors"]
    rows = [[name, row["one_task_s"], row["wide_s"],
             (row.get("vs_celery_redis") or {}).get("one_task_s"),
             " ".join(map(str, row["one_task_runs"])), " ".join(map(str, row["wide_runs"]))]
            for name, row in execs.items()]
    out = ["## 2. Airflow end to end", "",
           f"Airflow 3.3.2 on a scratch PostgreSQL database; one worker with "
           f"{data['concurrency']} slots per executor; trigger (REST) → the run's end_date; "
           f"medians of {data['runs']} runs (one-task DAG) and of the runs listed "
           f"({data['wide_tasks']} independent tasks), after one warm-up run.", "",
           _table(["executor", "1 task s", f"{data['wide_tasks']} tasks s",
                   "1 task ÷ Celery+Redis", "1-task runs", "wide runs"], rows), ""]
    for name, why in data.get("skipped", {}).items():
        out += [f"*{name} skipped: {why}*", ""]
    names = list(execs)
    if names:
        out += [_bars(PLOTS / "airflow.png", "Airflow trigger→success (median)", "s", names,
                      {"1 task": [execs[n]["one_task_s"] for n in names],
                       f"{data['wide_tasks']} tasks": [execs[n]["wide_s"] for n in names]}), ""]
    ours, celery, edge3 = execs.get("edge-kombu"), execs.get("celery-redis"), execs.get("edge3")
    targets.append(("Airflow 1 task: ≤ CeleryExecutor+Redis + 10 %",
                    ours and celery and f"{ours['one_task_s']} s vs {celery['one_task_s']} s",
                    None if not (ours and celery) else
                    ours["one_task_s"] <= 1.1 * celery["one_task_s"]))
    targets.append(("Airflow: faster than edge3 (1 task / 20 tasks)",
                    ours and edge3 and f"{ours['one_task_s']} / {ours['wide_s']} s vs "
                    f"{edge3['one_task_s']} / {edge3['wide_s']} s",
                    None if not (ours and edge3) else
                    ours["one_task_s"] < edge3["one_task_s"] and ours["wide_s"] < edge3["wide_s"]))
    return out


def scale_section(data: dict, targets: list) -> list[str]:
    runs = [r for r in data["runs"] if r["rate"] == data["rate_per_s"]]
    processes = data.get("api_workers", 1)
    db = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[data.get("db", "sqlite")]
    rows = [[r["workers"], r["rate"], r["polling"], r["idle"]["requests_per_s"],
             r["idle"]["server_cpu_percent"], _per_process(r["idle"]),
             _ms_per_request(r["idle"]), _per_process(r["idle"], "cpu_wait_percent_per_process"),
             r["idle"]["server_rss_mb"], r["load"]["sent"],
             r["load"]["received"], r["load"]["p50_ms"], r["load"]["p99_ms"],
             r["load"]["server_cpu_percent"], _per_process(r["load"]), r["load"]["server_rss_mb"],
             r["load"]["loadgen_cpu_percent"], r["errors"]] for r in data["runs"]]
    served_by = ("one `bench.server` process" if processes == 1 else
                 f"`bench.server` with {processes} processes (`--workers {processes}`)")
    out = [f"## 3. Scale: simulated workers on one API server ({db}, {processes} "
           f"process{'es' if processes > 1 else ''})", "",
           f"{served_by[0].upper()}{served_by[1:]} (the `edge-kombu api` gunicorn/gevent "
           f"server plus request counters) on {db}; N simulated workers in one gevent "
           "load-generator process (`bench.loadgen`), each with its own connection: a "
           "heartbeat every 10 s and one 10 s long-poll after another on one shared queue, "
           f"acking what it gets. Then {data['rate_per_s']} tasks/s for 30 s: dispatch latency "
           "= when the task was due (an open-loop publisher on 4 connections) → the consume "
           "answer carrying it. CPU: 100 % = one core; \"per process\": each gunicorn worker; "
           "\"CPU wait\": the time each was runnable but waiting for a CPU (schedstat), high "
           "when the machine is shared.", "",
           _table(["N", "tasks/s", "polling", "idle req/s", "idle CPU %", "per process",
                   "idle CPU ms/req", "idle CPU wait %", "idle RSS MB", "sent", "received",
                   "p50 ms", "p99 ms", "load CPU %", "per process", "load RSS MB",
                   "loadgen CPU %", "errors"],
                  rows), "",
           _lines(PLOTS / "scale-latency.png", "dispatch latency vs simulated workers", "workers",
                  "ms", [r["workers"] for r in runs],
                  {"p50": [r["load"]["p50_ms"] or 0 for r in runs],
                   "p99": [r["load"]["p99_ms"] or 0 for r in runs]}), "",
           _lines(PLOTS / "scale-cpu.png", "API server CPU vs simulated workers", "workers",
                  "% of one core", [r["workers"] for r in runs],
                  {"idle": [r["idle"]["server_cpu_percent"] for r in runs],
                   "under load": [r["load"]["server_cpu_percent"] for r in runs]}), ""]
    big = next((r for r in runs if r["workers"] >= 1000), None)
    targets.append((f"1,000 workers on the API server ({db}, {processes} process"
                    f"{'es' if processes > 1 else ''}), p99 dispatch < 1 s",
                    big and f"p99 {big['load']['p99_ms']} ms, {big['load']['received']}/"
                    f"{big['load']['sent']} received",
                    None if not big else bool(big["load"]["p99_ms"] and big["load"]["p99_ms"]
                                              < 1000 and big["load"]["received"]
                                              == big["load"]["sent"])))
    return out


def _per_process(phase: dict, key: str = "cpu_percent_per_process") -> str | None:
    each = phase.get(key)
    return " / ".join(map(str, each)) if each else None


def _ms_per_request(phase: dict) -> float | None:
    """Server CPU per request served (all processes)."""
    rate = phase.get("requests_per_s")
    return round(10 * phase["server_cpu_percent"] / rate, 2) if rate else None


def idle_section(data: dict) -> list[str]:
    rows = [[route, r["requests_per_s"], r["bytes_per_s"]] for route, r in data["routes"].items()]
    rows.append(["**total**", data["total"]["requests_per_s"], data["total"]["bytes_per_s"]])
    return ["## 4. Cost of one idle worker", "",
            f"`celery -A edge_kombu worker -c 1` idle for {data['seconds']:.0f} s, counted by the "
            "server (request line, headers and body, both ways). Server CPU over that time: "
            f"{data['total']['server_cpu_percent']} % of one core.", "",
            _table(["route", "requests/s", "bytes/s"], rows), ""]


def write(results: Path, docs: Path = DOCS) -> Path:
    global PLOTS
    PLOTS = docs / "benchmarks"
    PLOTS.mkdir(parents=True, exist_ok=True)
    targets: list = []
    parts = ["# Benchmarks", "",
             "Generated by `python -m bench report` from `bench/results/*.json` (full runs, "
             "`python -m bench all`), copied to `docs/benchmarks/*.json` with the exact "
             "commands each benchmark ran. "
             "The machine has 2 cores shared with other jobs: absolute numbers are noisy and "
             "only indicative, ratios come from the same run.", ""]
    body: list[str] = []
    sections = (("brokers", brokers_section), ("airflow", airflow_section),
                ("scale", scale_section))
    for name, section in sections:
        data = _load(results, name)
        if data is not None:
            (PLOTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
            body += section(data, targets)
            body += [f"*Run finished {data['finished']}, load average at the end "
                     f"{data['machine']['load_average']}.*", ""]
    idle = _load(results, "idle")
    if idle is not None:
        (PLOTS / "idle.json").write_text(json.dumps(idle, indent=2) + "\n")
        body += idle_section(idle)
    parts += ["## Where we stand", "",
              _table(["target", "measured", "verdict"],
                     [[t, v, _verdict(ok)] for t, v, ok in targets]), ""]
    parts += body
    if ANALYSIS.exists():
        parts += [ANALYSIS.read_text()]
    path = docs / "benchmarks.md"
    path.write_text("\n".join(parts).rstrip() + "\n")
    return path
