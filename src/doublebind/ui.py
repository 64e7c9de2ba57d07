"""Progress bars and console output (rich)."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True):
    """Yields `advance(n)` for a progress bar on stderr (a no-op when disabled)."""
    if not enabled or total <= 0:
        yield lambda n=1, description=None: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=not sys.stderr.isatty(),
    ) as prog:
        task = prog.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            prog.update(task, advance=n, **({"description": description} if description else {}))

        yield advance
