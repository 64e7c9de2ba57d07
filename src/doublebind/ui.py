"""Progress bars and console output (rich).

Long work shows progress within seconds, on a terminal or not: on a terminal a rich bar
with its time left; in a log file or a pipe (where a live bar would show nothing until the
end) a plain line after FIRST_REPORT_S seconds and then every DOUBLEBIND_PROGRESS_EVERY
seconds (default 30). Either way, once the rate is known, a run expected to take longer than
LONG_RUN_S prints one line with its estimate, so a typo in a size is seen at once.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)

FIRST_REPORT_S = 3.0  # the first plain progress line (and the estimate) after this many seconds
LONG_RUN_S = 600.0  # runs expected to take longer get a one-line estimate


def fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400 * 2:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s / 86400:.1f} days"


def progress_every() -> float:
    """DOUBLEBIND_PROGRESS_EVERY in seconds (at least 1; unset or empty: 30); a value that is
    not a positive number is one error, as for the other DOUBLEBIND_ settings (the CLI checks it
    before any command runs)."""
    text = os.environ.get("DOUBLEBIND_PROGRESS_EVERY", "").strip()
    if not text:
        return 30.0
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        from doublebind.errors import DoublebindError

        raise DoublebindError(f"DOUBLEBIND_PROGRESS_EVERY={text!r}: expected a number of seconds > 0")
    return max(1.0, value)



class _Tracker:
    """Counts done units and says, once, when the whole run will be long."""

    def __init__(self, description: str, total: int, unit: str):
        self.description, self.total, self.done, self.unit = description, total, 0, unit
        self.t0 = time.monotonic()
        self.first: tuple[float, int] | None = None  # (when, units done) at the first advance
        self.warned = False

    def advanced(self, n: int) -> None:
        self.done += n
        if self.first is None and self.done > 0:
            self.first = (time.monotonic(), self.done)

    def per_unit(self) -> float | None:
        """Seconds a unit, over the units done since the first advance: what came before it
        (loading, data, warm-up) is not a unit's cost. It counted before, and the estimate of a
        two-minute build once read twelve minutes."""
        if self.first is None or self.done <= self.first[1]:
            return None
        return (time.monotonic() - self.first[0]) / (self.done - self.first[1])

    def left(self) -> float | None:
        per = self.per_unit()
        return None if per is None else per * (self.total - self.done)

    def estimate_line(self) -> str | None:
        """The long-run note, the first time the rate is known and the run is long: after
        FIRST_REPORT_S, and once the units since the first have run at least as long as the
        first did (with parallel workers the first units end together, and their rate alone
        would promise too little)."""
        now = time.monotonic()
        if self.warned or now - self.t0 < FIRST_REPORT_S or self.first is None:
            return None
        per = self.per_unit()
        if per is None or now - self.first[0] < self.first[0] - self.t0:
            return None
        self.warned = True
        left = per * (self.total - self.done)
        if left < LONG_RUN_S:
            return None
        return (f"note: {self.description} will take about {fmt_duration(left)} more "
                f"({self.total:,} {self.unit} at {per:.3g} s each); Ctrl-C stops it")

    def status_line(self) -> str:
        elapsed = time.monotonic() - self.t0
        left = self.left()
        pct = 100 * self.done / self.total if self.total else 100
        tail = f", about {fmt_duration(left)} left" if left is not None else ""
        return (f"{self.description}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
                f"{fmt_duration(elapsed)} elapsed{tail}")


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, unit: str = "steps"):
    """Yields `advance(n, description=None)` for progress on stderr (a no-op when disabled)."""
    if not enabled or total <= 0:
        yield lambda n=1, description=None: None
        return
    tracker = _Tracker(description, total, unit)
    if not console.is_terminal:
        with _plain_progress(tracker) as advance:
            yield advance
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=not sys.stderr.isatty(),
    ) as prog:
        task = prog.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            tracker.advanced(n)
            prog.update(task, advance=n, **({"description": description} if description else {}))
            note = tracker.estimate_line() if n else None
            if note:
                prog.console.print(note, highlight=False, markup=False)

        yield advance


@contextlib.contextmanager
def _plain_progress(tracker: _Tracker):
    """Plain status lines from a background thread: they appear even while one unit of work
    (a long step, one run of a study) is still going."""
    stop = threading.Event()
    every = progress_every()

    def report() -> None:
        wait = FIRST_REPORT_S
        while not stop.wait(wait):
            note = tracker.estimate_line()
            console.print(note or tracker.status_line(), highlight=False, markup=False, soft_wrap=True)
            wait = every

    thread = threading.Thread(target=report, name="doublebind-progress", daemon=True)
    thread.start()

    def advance(n: int = 1, description: str | None = None) -> None:
        tracker.advanced(n)
        if description:
            tracker.description = description

    try:
        yield advance
    finally:
        stop.set()
        thread.join(timeout=1.0)
