"""The release page: one self-contained HTML file (inline CSS, no script, no link to anything)
from the JSON reports and the records on the clusters: the last deliveries and deployments, a
timeline of each run's steps, each replica's tasks over time, the versions and digests running
on prod-like and production, and the failures with their reasons.

`gather` reads both clusters (`cluster`: a cluster that does not answer is said on the page) and
the reports on disk into a snapshot (`snapshot`: plain data, credentials in URLs removed);
`render` turns a snapshot into HTML, escaping every text it shows; `write` puts it in a file.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import deployment, records, release, services, stack, stackfile, watch
from .budget import Budget, brief
from .cluster import Cluster

# Settings whole: each environment's Cluster (Cluster.of) is read
from .config import Settings
from .gateway import Task
from .outcome import Outcome

FILE_NAME = "releases.html"  # in REPORTS_DIR
SUITES = ("deliver", "deploy", "rollback")  # the report files `inv report` reads besides the runs
LAST = 20  # rows per table
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_FRACTION = re.compile(r"(\.[0-9]+)")  # Python reads at most microseconds


def _when(text: str | None) -> float | None:
    """Docker's and the records' timestamps (nanoseconds, Z or an offset) -> epoch seconds."""
    if not text or text.startswith("0001-"):
        return None
    text = _FRACTION.sub(lambda m: m.group(1)[:7], text.strip().replace("Z", "+00:00"))
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _stamp(epoch: float | None) -> str:
    return "-" if epoch is None else time_text(epoch)


def time_text(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime(_TIME_FORMAT) + "Z"


# -- data ---------------------------------------------------------------------------------------
def replicas(tasks: Sequence[Task], nodes: Mapping[str, str]) -> list[dict]:
    """Swarm tasks of a service as rows: slot, node, version, digest, state, from, to (epoch)."""
    out = []
    for t in tasks:
        state = t.state
        name, _, digest = t.image.partition("@")
        ended = state not in (
            "new",
            "pending",
            "assigned",
            "accepted",
            "preparing",
            "ready",
            "starting",
            "running",
        )
        out.append(
            {
                "slot": str(t.slot or nodes.get(t.node_id, "?")),
                "node": nodes.get(t.node_id, t.node_id[:12]),
                "version": name.rsplit(":", 1)[-1] if ":" in name.rsplit("/", 1)[-1] else name,
                "digest": digest,
                "state": state,
                "desired": t.desired_state,
                "error": t.error,
                "from": _when(t.created_at),
                "to": _when(t.timestamp) if ended else None,
            }
        )
    return sorted(out, key=lambda r: (r["slot"], r["from"] or 0))


def cluster(
    label: str,
    service: str,
    connect: Callable[[], Any],
    kinds: Iterable[str],
    members: Sequence[str] = (),
) -> dict:
    """What one cluster says about a release (`service`: its records' key, the service or the
    stack), its records of `kinds`, and the image and replicas of each Swarm service of the
    latest release the records name (a stack's release has several); before any, `members`
    (default: `service` itself). Or why it said nothing."""
    view: dict[str, Any] = {
        "label": label,
        "service": service,
        "members": [],
        "records": {k: [] for k in kinds},
        "error": "",
    }
    try:
        manager = connect()
        for kind in view["records"]:
            view["records"][kind] = records.load(manager, kind, service)
        if "history" in view["records"]:  # one row per deployment, not its "started" entry too
            view["records"]["history"] = deployment.merge_runs(
                view["records"]["history"], deployment.live_lock(manager, service)
            )
        released = [
            e
            for found in view["records"].values()
            for e in found
            if e.get("service") and e.get("image")
        ]
        latest = max(released, key=lambda e: str(e.get("time", "")), default=None)
        names = list(release.images_of(latest)) if latest else list(members or (service,))
        nodes = services.hostnames(manager)
        view["members"] = [
            {
                "service": name,
                "image": services.current_image(manager, name),
                "replicas": replicas(manager.tasks(name), nodes),
            }
            for name in names
        ]
    except Exception as exc:  # the page still tells what the other sources know
        view["error"] = (
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else '-'}"
        )
    return view


def reports_on_disk(directories: Iterable[Path]) -> list[dict]:
    """The last report of each suite in the given directories."""
    out = []
    for directory in dict.fromkeys(Path(d) for d in directories):
        for suite in SUITES:
            path = directory / f"{suite}.json"
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            doc.setdefault("written", path.stat().st_mtime)
            out.append(doc)
    return out


def snapshot(
    clusters: Sequence[dict], runs: Sequence[dict], reports: Sequence[dict], now: float
) -> dict:
    """Everything the page shows, credentials in URLs removed. `runs`: the watcher's saved runs
    (each with its reports); `reports`: reports written outside it (or the last ones)."""
    seen, docs = set(), []
    ran = [{**r, "written": _when(run.get("time"))} for run in runs for r in run.get("reports", [])]
    for doc in [*ran, *reports]:
        key = json.dumps({k: v for k, v in doc.items() if k != "written"}, sort_keys=True)
        if key not in seen:  # the watcher's last run also left its report on disk
            seen.add(key)
            docs.append(doc)
    docs.sort(key=lambda d: d.get("written") or 0.0)  # oldest first, as every list here
    rows: dict[str, list[dict]] = {kind: [] for kind in ("watch", "delivered", "history")}
    for view in clusters:
        for kind, found in view["records"].items():
            rows.setdefault(kind, []).extend(found)
    return watch.scrub(
        {
            "generated": now,
            "clusters": list(clusters),
            "watched": watch.pairs(rows["watch"]),
            "delivered": rows["delivered"],
            "history": rows["history"],
            "runs": docs,
        }
    )


def gather(test: Settings, prod: Settings) -> dict:
    """The snapshot of a test cluster (prod-like, deliveries, watched commits), a production
    cluster (deployments) and the reports under both environments' REPORTS_DIR."""

    def manager_of(s: Settings) -> Callable[[], object]:
        return lambda: Cluster.of(s).discover().gateway()

    views = [
        cluster(
            f"prod-like ({test.env})",
            release.key(test),
            manager_of(test),
            (watch.KIND, "delivered"),
            _members(test),
        ),
        cluster(
            f"production ({prod.env})",
            release.key(prod),
            manager_of(prod),
            ("history",),
            _members(prod),
        ),
    ]
    return snapshot(
        views,
        watch.saved_runs(test.delivery.reports_dir / watch.RUNS_DIR),
        reports_on_disk([test.delivery.reports_dir, prod.delivery.reports_dir]),
        time.time(),
    )


def _members(s: Settings) -> list[str]:
    """The Swarm services shown before a release names its own: the stack's (not its jobs)."""
    try:
        st = stack.read_file(s)
    except stackfile.StackFileError:  # said by `inv services`; the page shows the records
        return []
    return [st.scoped(x.name) for x in st.services if not x.is_job]


def timeline(steps: Sequence[Mapping]) -> tuple[list[dict], bool]:
    """Each step's start and length in seconds since the run began. Uses the steps' `started`
    offsets when every step has one (steps run beside each other show so); else steps are laid
    end to end (False: the offsets are estimated)."""
    measured = bool(steps) and all(isinstance(s.get("started"), (int, float)) for s in steps)
    out, at = [], 0.0
    for s in steps:
        seconds = float(s.get("seconds") or 0.0)
        start = float(s["started"]) if measured else at
        at = max(at, start + seconds) if measured else at + seconds
        out.append({**s, "start": start, "seconds": seconds})
    return out, measured


# -- HTML -----------------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(columns: Sequence[str], rows: Sequence[Sequence], empty: str) -> str:
    if not rows:
        return f'<p class="none">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _short(digest: str | None) -> str:
    return (digest or "-")[:19]


def _status_class(status: str) -> str:
    return {"ok": "ok", "FAILED": "failed", "skipped": "skipped"}.get(status, "other")


def _bar(start: float, length: float, total: float, cls: str, label: str, title: str) -> str:
    left = 100.0 * start / total if total else 0.0
    width = max(100.0 * length / total if total else 0.0, 0.4)
    return (
        f'<div class="bar {cls}" style="left:{left:.2f}%;width:{min(width, 100 - left):.2f}%" '
        f'title="{_e(title)}">{_e(label)}</div>'
    )


def _versions(clusters: Sequence[dict]) -> str:
    rows = []
    for v in clusters:
        if v["error"]:
            rows.append([v["label"], v["service"], "-", "-", "-", f"did not answer: {v['error']}"])
        for m in v["members"]:
            name, _, digest = m["image"].partition("@")
            running = [r for r in m["replicas"] if r["state"] == "running"]
            rows.append(
                [
                    v["label"],
                    m["service"],
                    name or "-",
                    _short(digest),
                    f"{len(running)} running",
                    "",
                ]
            )
    return _table(
        ["cluster", "service", "image", "digest", "replicas", "note"], rows, "no cluster was asked"
    )


def _digests(entry: Mapping) -> str:
    """A record's digest; for a release of several services, each service's."""
    if entry.get("services"):
        return ", ".join(
            f"{p['service']} {_short(p['image'].partition('@')[2])}" for p in entry["services"]
        )
    return _short(entry.get("digest"))


def _run(doc: Mapping) -> str:
    meta = doc.get("meta") or {}
    steps, measured = timeline(doc.get("steps") or [])
    total = max([s["start"] + s["seconds"] for s in steps] or [0.0]) or 1.0
    title = (
        f"{doc.get('suite', '?')} {meta.get('version', '')} — "
        f"{'ok' if doc.get('ok') else 'FAILED'}, {float(doc.get('seconds') or 0):.1f}s"
        + (f", written {time_text(doc['written'])}" if doc.get("written") else "")
    )
    note = (
        ""
        if measured
        else (
            '<p class="note">steps laid end to end: this report has no start '
            "times, so steps that ran beside each other are not shown so</p>"
        )
    )
    rows = []
    for s in steps:
        cls = _status_class(s.get("status", ""))
        rows.append(
            f'<tr class="step {cls}"><td>{_e(s.get("name"))}</td><td>{_e(s.get("status"))}'
            f'</td><td class="num">{s["seconds"]:.1f}</td><td class="lane">'
            + _bar(
                s["start"],
                s["seconds"],
                total,
                cls,
                "",
                f"{s.get('name')}: {s['start']:.1f}s + {s['seconds']:.1f}s",
            )
            + f"</td><td>{_e(s.get('detail'))}</td></tr>"
        )
    context = ", ".join(
        f"{k} {meta[k]}" for k in ("env", "repo", "ref", "state", "result") if meta.get(k)
    )
    return (
        f'<section class="run"><h3>{_e(title)}</h3><p class="meta">{_e(context)}</p>{note}'
        f'<table class="timeline"><thead><tr><th>step</th><th>result</th><th>s</th>'
        f"<th>0 … {total:.1f}s</th><th>detail</th></tr></thead><tbody>{''.join(rows)}"
        f"</tbody></table>{budget_chart(meta.get('budget'))}</section>"
    )


def budget_chart(record: Mapping | None) -> str:
    """A rollout's error budget: its figures in a line, and requests (grey) and errors (red) per
    second as an inline SVG bar chart on one scale; nothing for a run without a budget."""
    if not record:
        return ""
    b = Budget.of(record)
    line = f'<p class="meta">proxy during the rollout: {_e(b.summary())}</p>'
    if not b.measured or not b.series:
        return line
    width, height = 600, 60
    span = max(int(b.seconds), b.series[-1][0]) + 1
    top = max(max(r, e) for _, r, e in b.series) or 1
    step = width / span
    bars = []
    for second, requests, errors in b.series:
        x = second * step
        for value, cls, shift in ((requests, "req", 0.0), (errors, "err", step / 2)):
            if value:  # at least 1.5 px: one error among many requests stays visible
                h = max(height * value / top, 1.5)
                bars.append(
                    f'<rect class="{cls}" x="{x + shift:.1f}" y="{height - h:.1f}" '
                    f'width="{max(step / 2 - 0.5, 0.5):.1f}" height="{h:.1f}">'
                    f"<title>{second}s: {requests} requests, {errors} errors</title></rect>"
                )
    return (
        f"{line}"
        f'<svg class="budget" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="requests and errors per second over {span}s, up to {top}">'
        f'<rect class="frame" x="0" y="0" width="{width}" height="{height}"/>{"".join(bars)}'
        f'</svg><p class="note">per second over {span}s, scale 0 … {top}: '
        f'<span class="req">requests</span>, <span class="err">errors</span></p>'
    )


def _rollout(view: Mapping, member: Mapping, now: float) -> str:
    reps = member["replicas"]
    if not reps:
        return ""
    start = min((r["from"] for r in reps if r["from"] is not None), default=now)
    span = max(now - start, 1.0)
    lanes: dict[str, list[dict]] = {}
    for r in reps:
        lanes.setdefault(r["slot"], []).append(r)
    rows = []
    for slot, tasks in lanes.items():
        bars = "".join(
            _bar(
                (t["from"] or start) - start,
                (t["to"] or now) - (t["from"] or start),
                span,
                "running"
                if t["state"] == "running"
                else "failed"
                if t["state"] in ("failed", "rejected")
                else "ended",
                t["version"],
                f"{t['version']} {_short(t['digest'])} on {t['node']}: {t['state']} "
                f"{_stamp(t['from'])} .. {_stamp(t['to'])} {t['error']}",
            )
            for t in tasks
        )
        rows.append(f'<tr class="replica"><td>{_e(slot)}</td><td class="lane">{bars}</td></tr>')
    return (
        f"<h3>{_e(view['label'])}: {_e(member['service'])} from {_e(time_text(start))} to now</h3>"
        f'<table class="timeline"><thead><tr><th>replica</th><th>tasks over time</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _failures(snap: Mapping) -> list[list]:
    rows = []
    for doc in snap["runs"]:
        for s in doc.get("steps") or []:
            if s.get("status") == "FAILED":
                rows.append(
                    [
                        doc.get("suite"),
                        (doc.get("meta") or {}).get("version", ""),
                        s.get("name"),
                        s.get("detail"),
                        s.get("output_tail", "")[-400:],
                    ]
                )
    for h in snap["history"]:
        if Outcome.of(str(h.get("result", ""))).failed:
            rows.append(
                [
                    h.get("kind"),
                    h.get("version"),
                    ", ".join(k for k, v in (h.get("steps") or {}).items() if v == "FAILED"),
                    h.get("result"),
                    "",
                ]
            )
    for w in snap["watched"]:
        if w.get("code") != 0:
            rows.append(["watch", w.get("commit", "")[:12], w.get("branch"), w.get("result"), ""])
    return rows


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;width:100%;margin:.3em 0}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right}
td.lane{position:relative;width:40%;height:1.3em;padding:0;background:#fafafa}
.bar{position:absolute;top:2px;bottom:2px;border-radius:2px;font-size:11px;overflow:hidden;
white-space:nowrap;color:#fff;padding-left:2px;box-sizing:border-box}
.bar.ok,.bar.running{background:#2e7d32}.bar.failed{background:#c62828}
.bar.skipped,.bar.other,.bar.ended{background:#9e9e9e}
tr.failed td{color:#b71c1c}.note,.meta,.none{color:#666;margin:.2em 0}
pre{white-space:pre-wrap;margin:0}
svg.budget{display:block;max-width:100%;height:auto}svg.budget .frame{fill:#fafafa;stroke:#ddd}
svg.budget .req{fill:#9e9e9e}svg.budget .err{fill:#c62828}span.req{color:#757575}
span.err{color:#c62828}
"""


def render(snap: Mapping) -> str:
    """The page for a snapshot: a complete HTML document that needs no network."""
    now = snap["generated"]
    services_named = sorted({v["service"] for v in snap["clusters"]})
    watched = [
        [
            w.get("taken_at"),
            w.get("branch"),
            w.get("commit", "")[:12],
            w.get("subject", ""),
            w.get("result"),
            "-" if w.get("code") is None else w.get("code"),
            w.get("seconds", "-"),
        ]
        for w in reversed(snap["watched"][-LAST:])
    ]
    delivered = [
        [
            d.get("time"),
            d.get("version"),
            _digests(d),
            (d.get("commit") or "")[:12],
            d.get("repo") or "-",
            d.get("user"),
        ]
        for d in reversed(snap["delivered"][-LAST:])
    ]
    history = [
        [
            h.get("time"),
            h.get("env"),
            h.get("kind"),
            h.get("version"),
            _digests(h),
            h.get("result"),
            "yes" if h.get("rolled_back") else "no",
            brief(h.get("budget")),
            h.get("seconds"),
            h.get("user"),
        ]
        for h in reversed(snap["history"][-LAST:])
    ]
    runs = (
        "".join(_run(d) for d in reversed(snap["runs"][-LAST:]))
        or '<p class="none">no report yet</p>'
    )
    rollouts = (
        "".join(_rollout(v, m, now) for v in snap["clusters"] for m in v["members"])
        or '<p class="none">no replica known</p>'
    )
    failures = _failures(snap)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Releases of {_e(", ".join(services_named) or "the service")}</title>
<style>{CSS}</style></head><body>
<h1>Releases of {_e(", ".join(services_named) or "the service")}</h1>
<p class="meta">written {_e(time_text(now))} by cdtasks</p>
<h2 id="versions">Versions running</h2>{_versions(snap["clusters"])}
<h2 id="watched">Watched commits</h2>{
        _table(
            ["taken", "branch", "commit", "subject", "result", "exit", "seconds"],
            watched,
            "no commit watched yet",
        )
    }
<h2 id="deliveries">Deliveries (passed prod-like)</h2>{
        _table(
            ["time", "version", "digest", "commit", "repository", "user"],
            delivered,
            "no delivery recorded",
        )
    }
<h2 id="deployments">Deployments</h2>{
        _table(
            [
                "time",
                "env",
                "kind",
                "version",
                "digest",
                "result",
                "rolled back",
                "errors",
                "seconds",
                "user",
            ],
            history,
            "no deployment recorded",
        )
    }
<h2 id="failures">Failures</h2>{
        _table(["run", "version", "where", "reason", "output"], failures, "no failure")
    }
<h2 id="runs">Runs, step by step</h2>{runs}
<h2 id="rollout">Rollout of each replica</h2>{rollouts}
</body></html>
"""


def write(path: Path, snap: Mapping) -> Path:
    """Write the page atomically (a browser reloading it never sees half a file), through a
    temporary file of its own: `inv report` and the watcher may write the page at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(snap))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the page from a web server
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
