"""All terminal rendering: the only module that imports rich.

Tables and colour only when stderr is a terminal; plain, stable lines
otherwise (cron logs, pipes).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..train import EpochStats

# Columns of the per-epoch table: the training loss, then the task's
# validation metrics (fmcli.metrics.evaluate), ECE and NE left to the file.
_COLUMNS = {
    "binary": ("tr_logloss", ("logloss", "auc")),
    "regression": ("tr_sqloss", ("rmse", "mae")),
    "multiclass": ("tr_logloss", ("logloss", "accuracy")),
}


_live = None   # the Progress display while one is shown; prints go through its console


def _console():
    if _live is not None:
        return _live.console
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


class EpochTable:
    """Prints one line per epoch as training proceeds."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.started = False

    def __call__(self, s: "EpochStats") -> None:
        if self.quiet:
            return
        train_col, metrics = _COLUMNS[s.task]
        if not self.started:
            self._echo(f"{'epoch':>5}  {train_col:>10}  "
                       + "  ".join(f"{'va_' + m:>11}" for m in metrics)
                       + f"  {'seconds':>8}  {'rows/s':>10}", header=True)
            self.started = True
        va = "  ".join(f"{s.valid[m]:11.5f}" if s.valid is not None else f"{'-':>11}" for m in metrics)
        self._echo(f"{s.epoch:5d}  {s.train_loss:10.5f}  {va}  {s.seconds:8.2f}  {s.rows_per_s:10.0f}")

    def _echo(self, line: str, header: bool = False) -> None:
        if _live is not None or stderr_is_tty():
            _console().print(line, style="bold" if header else None)
        else:
            click.echo(line, err=True)


def info(message: str, quiet: bool = False) -> None:
    if quiet:
        return
    if _live is not None:
        _live.console.print(message, markup=False, highlight=False)
    else:
        click.echo(message, err=True)


class EpochProgress:
    """A progress bar for the epoch being trained, on a terminal only.

    Called as ``on_progress(epoch, rows_done, rows_total)`` (a training loss
    so far may follow); shows rows done of the epoch's rows, rows/s, the
    time left and the loss.  Lines printed meanwhile (the epoch table,
    messages) appear above the bar, which disappears when :meth:`close` is
    called.  Does nothing when stderr is not a terminal or with --quiet.
    """

    def __init__(self, quiet: bool = False, console=None):
        self.enabled = not quiet and (console is not None or stderr_is_tty())
        self._console = console
        self._progress = None
        self._task = None
        self._epoch = None

    def _start(self) -> None:
        global _live
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = self._console or Console(stderr=True, highlight=False)
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("rows"), _rate_column(), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
            console=console, transient=True, refresh_per_second=4)
        self._progress.start()
        _live = self._progress

    def __call__(self, epoch: int, rows_done: int, rows_total: int, loss: float | None = None) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            self._start()
        fields = {"epoch": epoch, "loss": "" if loss is None else f"loss {loss:.5f}"}
        if self._task is None:
            self._task = self._progress.add_task("train", total=rows_total, **fields)
        elif epoch != self._epoch:
            self._progress.reset(self._task, total=rows_total, **fields)
        self._epoch = epoch
        self._progress.update(self._task, completed=rows_done, total=rows_total, **fields)

    def close(self) -> None:
        global _live
        if self._progress is not None:
            self._progress.stop()
            if _live is self._progress:
                _live = None
            self._progress = None
            self._task = None


def _rate_column():
    """rows/s of the bar's task (rich's own speed column counts bytes)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            speed = task.speed
            return Text("- rows/s" if speed is None else f"{speed:,.0f} rows/s")

    return RateColumn()


def model_summary(summary: dict[str, Any], as_json: bool) -> None:
    """`fm inspect` output: JSON on stdout, or a readable summary."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=False))
        return
    h = summary["header"]
    m = h.get("model", {})
    t = h.get("training", {}) or {}
    hp = h.get("hyperparameters", {}) or {}
    rows: list[tuple[str, str]] = [
        ("file", f"{summary['path']} ({summary['file_bytes']:,} bytes)"),
        ("format", f"{h.get('format', '?')} (written by fmcli {h.get('fmcli_version', '?')})"),
        ("created", str(h.get("created_at", "?"))),
        ("model", f"{m.get('kind', '?')} ({m.get('task', '?')}), k={m.get('k', '?')}"
                  + (f", {m.get('n_classes')} classes: {', '.join(m.get('classes') or [])[:200]}"
                     if m.get("task") == "multiclass" else "")),
        ("features", f"{m.get('n_features', 0):,}"),
        ("fields", f"{m.get('n_fields', 0):,}"),
        ("terms", ", ".join(n for n, on in (("bias", m.get("use_bias")), ("linear", m.get("use_linear"))) if on)
         + (", " if m.get("use_bias") or m.get("use_linear") else "") + "pairwise" * (m.get("kind") != "lr")),
        ("normalization", "instance (1/||x||)" if m.get("normalize") else "none"),
        ("parameters", f"{summary['n_parameters']:,}" + (" + optimizer state" if summary["has_optimizer_state"] else "")),
    ]
    if hp:
        rows.append(("hyperparameters", ", ".join(
            f"{k}={hp[k]}" for k in ("optimizer", "learning_rate", "l2", "l1", "batch_size", "lr_schedule", "epochs",
                      "threads", "seed") if k in hp)))
    if t:
        rows.append(("trained on", f"{t.get('train_file')} ({t.get('train_rows', 0):,} rows)"))
        rows.append(("epochs", f"{t.get('epochs_run')} run, model from epoch {t.get('model_epoch')}"))
        metrics = t.get("valid_metrics")
        if metrics is None and t.get("valid_logloss") is not None:   # format 1.0 files
            metrics = {"logloss": t["valid_logloss"], "auc": t.get("valid_auc")}
        if metrics:
            rows.append(("validation", f"{t.get('valid_file')}: "
                         + ", ".join(f"{k} {v:.5f}" for k, v in metrics.items() if v is not None)))
        parent = h.get("parent")
        if parent:
            rows.append(("warm start from", f"{parent.get('path')} (sha256 {str(parent.get('sha256'))[:16]}...)"))
        if t.get("zero_weights") and hp.get("l1"):
            rows.append(("zero weights", f"{t['zero_weights']:,} linear and factor weights are exactly 0"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:>{width}}  {v}")
    for a in h.get("arrays", []):
        click.echo(f"{'array':>{width}}  {a['name']}: {a['dtype']} {tuple(a['shape'])}")
