"""How the CLI talks to people: rich error panels, warnings and a progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mergehub.common.errors import MergehubError, RecipeError


class _Console(Console):
    """rich's console, except that a closed pipe ends the command as every other closed pipe does.

    rich's own handling exits with status 1, which would read as a recipe error; raising lets
    ``mergehub.cli.main`` give the one status (141) for "the reader went away".
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


err = _Console(stderr=True, highlight=False)
out = _Console(highlight=False)


def error_panel(exc: MergehubError) -> None:
    """what / where / how to fix, never a traceback."""
    if isinstance(exc, RecipeError):
        lines = [f"[bold]{escape(exc.message)}[/bold]", ""]
        for problem in exc.problems:
            lines.append(f"[cyan]{escape(problem.where(exc.file))}[/cyan]")
            lines.append(f"  {escape(problem.message)}")
            if problem.hint:
                lines.append("  [green]fix:[/green] " + escape(problem.hint).replace("\n", "\n       "))
        body = "\n".join(lines)
    else:
        body = f"[bold]{escape(exc.message)}[/bold]"
        if exc.location:
            body += f"\n[cyan]where:[/cyan] {escape(exc.location)}"
        if exc.hint:
            body += "\n[green]fix:[/green] " + escape(exc.hint)
    err.print(Panel(body, title="[red]mergehub: error[/red]", title_align="left", border_style="red", expand=False))


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")


@contextmanager
def progress_bar(total_bytes: int, tensors: int) -> Iterator[object]:
    """A progress callback: a rich bar on a terminal, nothing otherwise."""
    if not err.is_terminal:
        yield None
        return
    columns = [TextColumn("[bold]merging"), BarColumn(), TextColumn("{task.fields[done]}/{task.fields[count]} tensors"),
               DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("merge", total=total_bytes, done=0, count=tensors)
        state = {"done": 0}

        def advance(spec: object) -> None:
            state["done"] += 1
            bar.update(task, advance=spec.nbytes, done=state["done"])  # type: ignore[attr-defined]

        yield advance


