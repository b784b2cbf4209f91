"""How the tasks show their work: live progress on stderr, result tables on stdout, and JSON and
JUnit XML report files for CI. Away from a terminal everything degrades to plain lines."""

from __future__ import annotations

import json
import re
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from time import monotonic
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from .redaction import redact
from .runner import StepResult

# One lock for every plain stderr line, so lines from worker threads never interleave.
_LOCK = threading.Lock()
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_STYLE = {"ok": "green", "FAILED": "bold red", "skipped": "yellow", "interrupted": "bold red"}


def _emit(line: str) -> None:
    line = redact(line)
    with _LOCK:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def make_logger(prefix: str) -> Callable[[str], None]:
    """A log callback for library code: `[prefix] message` lines on stderr."""
    return lambda message: _emit(f"[{prefix}] {message}")


class Progress:
    """Named steps of a long wait: a spinner with elapsed time on a terminal, plain lines elsewhere."""

    def __init__(self, title: str, enabled: bool = True) -> None:
        self.title = title
        self._console = Console(stderr=True, highlight=False)
        # Checked on the stream itself because CI sets FORCE_COLOR, which makes rich treat a
        # pipe as a terminal, and spinner frames would flood the job log.
        interactive = enabled and sys.stderr.isatty() and self._console.is_interactive
        self._spinner = Spinner("dots")
        self._lock = threading.Lock()
        # Replaced whole, never mutated: the refresh thread reads it without taking the lock,
        # which would deadlock against rich's own lock while a line is printed.
        self._current: tuple[str, float, str] = ("", 0.0, "")
        self._printed: tuple[str, float] = ("", float("-inf"))
        self._live = (
            Live(
                get_renderable=self._render,
                console=self._console,
                transient=True,
                refresh_per_second=8,
            )
            if interactive
            else None
        )

    def __enter__(self) -> Progress:
        if self._live:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.stop()

    def step(self, name: str) -> None:
        with self._lock:
            self._current = (name, monotonic(), "")
            self._printed = ("", float("-inf"))
        if not self._live:
            _emit(f"[{self.title}] {name} ...")

    def log(self, message: str) -> None:
        self._line(f"[{self.title}] {message}")

    def update(self, text: str) -> None:
        with self._lock:
            name, started, _ = self._current
            self._current = (name, started, text)
            if self._live:
                return
            # Plain logs get a status only when it changed, and at most once a second.
            last, at = self._printed
            now = monotonic()
            if text == last or now - at < 1.0:
                return
            self._printed = (text, now)
            _emit(f"[{self.title}] {name}: {text}")

    def done(self, result: StepResult) -> None:
        with self._lock:
            self._current = ("", 0.0, "")
        detail = f": {result.detail}" if result.detail else ""
        self._line(
            f"[{self.title}] {result.name} ... {result.status} ({result.seconds:.1f}s){detail}",
            _STYLE[result.status],
        )

    def _line(self, text: str, style: str = "") -> None:
        if self._live:
            self._console.print(Text(redact(text), style=style), soft_wrap=True)
        else:
            _emit(text)

    def _render(self) -> Spinner:
        name, started, status = self._current
        text = Text(redact(f"[{self.title}] {name}"), style="bold")
        if name:
            text.append(f"  {monotonic() - started:.0f}s")
        if status:
            text.append(f"  {redact(status)}", style="dim")
        self._spinner.update(text=text)
        return self._spinner


def _table(title: str, columns: list[str]) -> Table:
    grid = Table(title=title, title_justify="left")
    for column in columns:
        grid.add_column(column)
    return grid


def _stdout() -> Console:
    # Logs and pipes get wide tables: rich's 80-column default would wrap digests and paths.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A table on stdout; colours only on a terminal."""
    grid = _table(title, columns)
    for row in rows:
        grid.add_row(*(Text(redact(cell)) for cell in row))  # Text: data, not rich markup
    _stdout().print(grid)


def print_results(title: str, results: list[StepResult], secrets: Iterable[str] = ()) -> None:
    """The final table of a run, then the name and output tail of each failed step."""
    secrets = tuple(secrets)
    console = _stdout()
    grid = _table(title, ["step", "result", "seconds", "detail"])
    grid.caption = f"total {sum(r.seconds for r in results):.1f}s"
    for r in results:
        grid.add_row(
            Text(redact(r.name, secrets)),
            Text(r.status, style=_STYLE[r.status]),
            Text(f"{r.seconds:.1f}"),
            Text(redact(r.detail, secrets)),
        )
    console.print(grid)
    for r in (r for r in results if r.failed):
        console.print(
            Text(
                f"\n{redact(r.name, secrets)} FAILED: {redact(r.detail, secrets)}", style="bold red"
            ),
            soft_wrap=True,
        )
        if r.output_tail:
            console.print(Text.from_ansi(redact(r.output_tail, secrets)), soft_wrap=True)


def _scrub(value: Any, clean: Callable[[str], str]) -> Any:
    if isinstance(value, dict):
        return {clean(str(k)): _scrub(v, clean) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_scrub(v, clean) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return clean(str(value))  # Paths, dates and the like go through redaction as text too


def _cleaner(secrets: Iterable[str]) -> Callable[[str], str]:
    secrets = tuple(secrets)
    return lambda text: redact(_ANSI.sub("", text), secrets)


def report_doc(
    suite: str, results: list[StepResult], meta: dict, secrets: Iterable[str] = ()
) -> dict:
    """The JSON report of a run (`<suite>.json`, and what `--json` prints), secrets redacted."""
    clean = _cleaner(secrets)
    return {
        "suite": suite,
        "ok": not any(r.failed for r in results),
        "seconds": round(sum(r.seconds for r in results), 3),
        "meta": _scrub(meta, clean),
        "steps": [
            {
                "name": clean(r.name),
                "status": r.status,
                "ok": r.ok,
                "skipped": r.skipped,
                "seconds": round(r.seconds, 3),
                "started": r.started,
                "detail": clean(r.detail),
                "output_tail": clean(r.output_tail),
            }
            for r in results
        ],
    }


def write_reports(
    directory: Path, suite: str, results: list[StepResult], meta: dict, secrets: Iterable[str] = ()
) -> tuple[Path, Path]:
    """Write `<suite>.json` and `<suite>.junit.xml` into `directory`; return both paths."""
    secrets = tuple(secrets)
    clean = _cleaner(secrets)

    def xml(text: str) -> str:
        return _XML_ILLEGAL.sub(
            "", clean(text)
        )  # control characters make the whole file unparsable

    directory.mkdir(parents=True, exist_ok=True)
    doc = report_doc(suite, results, meta, secrets)
    total, meta = doc["seconds"], doc["meta"]
    json_path = directory / f"{suite}.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    counts = {
        "tests": str(len(results)),
        "failures": str(sum(r.failed for r in results)),
        "errors": "0",
        "skipped": str(sum(r.skipped for r in results)),
        "time": f"{total:.3f}",
    }
    root = ET.Element("testsuites", {"name": suite, **counts})
    testsuite = ET.SubElement(root, "testsuite", {"name": suite, **counts})
    properties = ET.SubElement(testsuite, "properties")
    for key, value in meta.items():
        ET.SubElement(
            properties,
            "property",
            name=xml(key),
            value=xml(value if isinstance(value, str) else json.dumps(value)),
        )
    for r in results:
        case = ET.SubElement(
            testsuite, "testcase", name=xml(r.name), classname=suite, time=f"{r.seconds:.3f}"
        )
        if r.skipped:
            ET.SubElement(case, "skipped", message=xml(r.detail))
        elif r.failed:
            ET.SubElement(
                case, "failure", message=xml(r.detail) or "failed", type="failure"
            ).text = xml(r.output_tail)
    ET.indent(root)
    xml_path = directory / f"{suite}.junit.xml"
    ET.ElementTree(root).write(xml_path, encoding="utf-8", xml_declaration=True)
    return json_path, xml_path
