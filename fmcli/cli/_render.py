"""All terminal rendering: the only module that imports rich.

Tables and colour only when the stream written is a terminal (stderr for
training progress, stdout for `fm inspect`); plain, stable lines otherwise
(cron logs, pipes).
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
        # '-': no validation set; 'n/a': a metric the data leave undefined (None)
        va = "  ".join(_metric_cell(s.valid.get(m), 11) if s.valid is not None else f"{'-':>11}"
                       for m in metrics)
        self._echo(f"{s.epoch:5d}  {_metric_cell(s.train_loss, 10)}  {va}  {s.seconds:8.2f}  "
                   f"{s.rows_per_s:10.0f}")

    def _echo(self, line: str, header: bool = False) -> None:
        if _live is not None or stderr_is_tty():
            _console().print(line, style="bold" if header else None)
        else:
            click.echo(line, err=True)


def eval_line(s) -> str:
    """One line for a validation within an epoch (fmcli.train.EvalStats)."""
    train_col, metrics = _COLUMNS[s.task]
    cells = ", ".join(f"va_{m} " + _metric_cell(s.valid.get(m), 0).strip() for m in metrics)
    loss = _metric_cell(s.train_loss, 0).strip()
    return f"epoch {s.epoch}, {s.rows:,} rows: {train_col} {loss}, {cells}"


def _metric_cell(value: float | None, width: int) -> str:
    """A metric right-aligned in `width` columns, 'n/a' when undefined (None or NaN)."""
    if value is None or value != value:
        return f"{'n/a':>{width}}"
    return f"{value:{width}.5f}"


def info(message: str, quiet: bool = False) -> None:
    if quiet:
        return
    if _live is not None:
        _live.console.print(message, markup=False, highlight=False)
    else:
        click.echo(message, err=True)


class _Bar:
    """A transient progress display on stderr, on a terminal only and not
    with --quiet (redirected output gets the plain summary lines instead).
    Lines printed meanwhile (:func:`info`) appear above it; :meth:`close`
    removes it.  Subclasses give the columns (:meth:`_columns`) and the
    callback."""

    def __init__(self, quiet: bool = False, console=None):
        self.enabled = not quiet and (console is not None or stderr_is_tty())
        self._console = console
        self._progress = None
        self._task = None

    def _columns(self) -> list:
        """The rich columns of the display (every subclass gives its own)."""
        raise NotImplementedError

    def _start(self, **kwargs) -> bool:
        """Show the display with one task (`kwargs`: its description, total
        and fields); False when another display is shown (rich allows one)."""
        global _live
        if _live is not None:
            return False
        from rich.console import Console
        from rich.progress import Progress

        console = self._console or Console(stderr=True, highlight=False)
        self._progress = Progress(*self._columns(), console=console, transient=True, refresh_per_second=4)
        fields = {k: v for k, v in kwargs.items() if k not in ("description", "total", "completed")}
        self._task = self._progress.add_task(kwargs.get("description", ""), total=kwargs.get("total"), **fields)
        self._progress.start()
        _live = self._progress
        return True

    def _update(self, **kwargs) -> None:
        if self._progress is None and not self._start(**kwargs):
            return
        self._progress.update(self._task, **kwargs)

    def close(self) -> None:
        global _live
        if self._progress is not None:
            self._progress.stop()
            if _live is self._progress:
                _live = None
            self._progress = None
            self._task = None


class EpochProgress(_Bar):
    """A progress bar for the epoch being trained, on a terminal only.

    Called as ``on_progress(epoch, rows_done, rows_total)`` (a training loss
    so far may follow); shows rows done of the epoch's rows, rows/s, the
    time left and the loss, and for a distributed run the last round
    (:meth:`round`, :func:`round_line`).  Lines printed meanwhile (the epoch table,
    messages) appear above the bar, which disappears when :meth:`close` is
    called.  Does nothing when stderr is not a terminal or with --quiet.
    """

    def __init__(self, quiet: bool = False, console=None):
        super().__init__(quiet, console)
        self._epoch = None
        self._round = ""      # the last round of a distributed run (round_line), shown after the bar

    def _columns(self) -> list:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        return [TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("rows"), _rate_column(), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                TextColumn("{task.fields[round]}")]

    def round(self, record: dict) -> None:
        """A distributed run's round (fmcli.train.train's on_round): its
        summary joins the bar's line."""
        if not self.enabled:
            return
        self._round = round_line(record)
        if self._progress is not None:
            self._progress.update(self._task, round=self._round)

    def __call__(self, epoch: int, rows_done: int, rows_total: int, loss: float | None = None) -> None:
        if not self.enabled:
            return
        fields = {"epoch": epoch, "loss": "" if loss is None else f"loss {loss:.5f}", "round": self._round}
        if self._progress is None:
            if not self._start(description="train", total=rows_total, **fields):
                return
        elif epoch != self._epoch:
            self._progress.reset(self._task, total=rows_total, **fields)
        self._epoch = epoch
        self._progress.update(self._task, completed=rows_done, total=rows_total, **fields)


def round_line(record: dict) -> str:
    """One line for a round of a distributed run: its number, each worker's
    rows/s (the slowest and fastest beyond four workers), the bytes moved
    and the time spent merging, e.g. ``round 12: 2 workers 81,200 79,900
    rows/s, 1.2 MiB moved, merge 0.031 s``."""
    rates = [float(w.get("rows_per_s") or 0.0) for w in record.get("workers") or []]
    if len(rates) <= 4:
        speed = " ".join(f"{r:,.0f}" for r in rates)
    else:
        speed = f"{min(rates):,.0f}-{max(rates):,.0f}"
    size, unit = float(record.get("bytes_moved") or 0), "B"
    for u in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, u
    moved = f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
    n = len(rates)
    return (f"round {record.get('round')}: {n} worker{'s' if n != 1 else ''} {speed} rows/s, {moved} moved, "
            f"merge {float(record.get('merge_seconds') or 0.0):.3f} s")


def _rate_column():
    """rows/s of the bar's task (rich's own speed column counts bytes)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            speed = task.speed
            return Text("- rows/s" if speed is None else f"{speed:,.0f} rows/s")

    return RateColumn()


class ReadProgress(_Bar):
    """Reading inputs: bytes read of their size (when it is known without
    reading them: not for compressed files or pipes), rows so far, MB/s.
    Called as ``on_read(name, bytes_done, bytes_total, rows)``."""

    def _columns(self) -> list:
        from rich.progress import (BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        return [TextColumn("reading {task.description}"), BarColumn(), DownloadColumn(binary_units=False),
                TextColumn("{task.fields[rows]:,} rows"), TransferSpeedColumn(), TimeRemainingColumn()]

    def __call__(self, name: str, bytes_done: int, bytes_total: int | None, rows: int) -> None:
        if self.enabled:
            self._update(description=name, completed=bytes_done, total=bytes_total, rows=rows)


class ScoreProgress(_Bar):
    """fm predict: rows scored so far and rows/s (the input's size in rows is
    not known before it is read).  Called as ``on_scored(rows)``."""

    def _columns(self) -> list:
        from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

        return [SpinnerColumn(), TextColumn("scoring"), TextColumn("{task.completed:,.0f} rows"),
                _rate_column(), TimeElapsedColumn()]

    def __call__(self, rows: int) -> None:
        if self.enabled:
            self._update(completed=rows)


# --------------------------------------------------------------------------
# fm inspect: on a terminal, tables and colour (rich); otherwise plain,
# stable lines; --json: one object
# --------------------------------------------------------------------------


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars as numbers, NaN and infinities as null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def _print_json(result: dict[str, Any]) -> None:
    click.echo(json.dumps(_jsonable(result), indent=2, allow_nan=False))


class _Table:
    """A table for the terminal (rich) or plain text; `heat` colours cells."""

    def __init__(self, title: str, columns: list[str], rows: list[list[str]], *, text: tuple[int, ...] = (),
                 heat: list[list[float | None]] | None = None):
        self.title = title
        self.columns = columns
        self.rows = rows
        self.text = text            # the columns that hold text (left-aligned); the others hold numbers
        self.heat = heat            # per row, per column after the first: a value in [0, 1] or None


def _show(rows: list[tuple[str, str]], tables: list[_Table], console=None) -> None:
    if console is None and not stdout_is_tty():
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            click.echo(f"{k:>{width}}  {v}")
        for t in tables:
            _plain_table(t)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(highlight=False)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", justify="right", no_wrap=True)
    grid.add_column()
    for k, v in rows:
        grid.add_row(Text(k), Text(v))
    console.print(grid)
    for t in tables:
        console.print()
        if t.heat is not None and _table_width(t) > console.width:
            for part in _heat_map(t, console.width):
                console.print(part)
        else:
            console.print(_rich_table(t))


def _plain_table(t: _Table) -> None:
    click.echo("")
    click.echo(f"{t.title}:")
    widths = [max([len(c)] + [len(r[i]) for r in t.rows]) for i, c in enumerate(t.columns)]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.ljust(w) if i in t.text else c.rjust(w)
                                for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    click.echo(line(t.columns))
    for r in t.rows:
        click.echo(line(r))


def _rich_table(t: _Table):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(t.title, style="bold"), title_justify="left", header_style="bold")
    for i, c in enumerate(t.columns):
        table.add_column(c, justify="left" if i in t.text else "right", no_wrap=True)
    for r, cells in enumerate(t.rows):
        out = []
        for i, cell in enumerate(cells):
            style = None
            if t.heat is not None and i >= 1:
                v = t.heat[r][i - 1]
                style = _heat_style(v)
            out.append(Text(cell, style=style or ""))
        table.add_row(*out)
    return table


def _table_width(t: _Table) -> int:
    """Columns' widths plus rich's borders and padding."""
    widths = [max([len(c)] + [len(r[i]) for r in t.rows]) for i, c in enumerate(t.columns)]
    return sum(widths) + 3 * len(widths) + 1


_SHADES = " ░▒▓█"


def _heat_map(t: _Table, width: int) -> list:
    """A matrix too wide for the terminal: a cell per pair, shaded (and
    coloured) by strength, rows numbered, when even that fits; then the
    strongest pairs."""
    from rich.table import Table
    from rich.text import Text

    n = len(t.rows)
    index_width = len(str(n - 1))
    label_width = min(24, max(len(r[0]) for r in t.rows))
    room = width - label_width - index_width - 2
    cell = 2 if 2 * n <= room else 1
    if n > room:
        return [Text(t.title, style="bold"), Text(f"({n} fields: too many to draw; --json has the matrix)"),
                _strongest(t)]
    grid = Table(box=None, padding=(0, 0), show_header=False, title=Text(t.title, style="bold"),
                 title_justify="left")
    grid.add_column(no_wrap=True)
    for _ in range(n):
        grid.add_column(no_wrap=True, width=cell)
    for r, cells in enumerate(t.rows):
        out = [Text(f"{r:>{index_width}} {cells[0][:label_width]:<{label_width}} ")]
        for v in t.heat[r]:
            shade = "·" if v is None else _SHADES[1 + min(len(_SHADES) - 2, int(v * (len(_SHADES) - 1)))]
            out.append(Text(shade * cell, style=_heat_style(v) or ""))
        grid.add_row(*out)
    legend = Text(f"columns: the rows' fields in the same order; {_SHADES[1:]} weakest to strongest, "
                  "· no pairs")
    return [grid, legend, _strongest(t)]


def _strongest(t: _Table):
    """The ten strongest pairs of a heat table, with their values."""
    from rich.table import Table
    from rich.text import Text

    n = len(t.rows)
    cells = sorted(((t.heat[r][c], r, c) for r in range(n) for c in range(r + 1, n) if t.heat[r][c] is not None),
                   reverse=True)[:10]
    top = Table(title=Text("strongest field pairs", style="bold"), title_justify="left", header_style="bold")
    for name, justify in (("field a", "left"), ("field b", "left"), ("strength", "right")):
        top.add_column(name, justify=justify, no_wrap=True)
    for _, r, c in cells:
        top.add_row(Text(t.rows[r][0]), Text(t.rows[c][0]),
                    Text(t.rows[r][c + 1], style=_heat_style(t.heat[r][c]) or ""))
    return top


def _heat_style(v: float | None) -> str | None:
    """Dark blue (weak) through purple to red and yellow (strong)."""
    if v is None:
        return "dim"
    v = min(1.0, max(0.0, v))
    r = int(30 + 225 * min(1.0, 1.6 * v))
    g = int(30 + 200 * max(0.0, v - 0.55) / 0.45)
    b = int(110 * (1 - v))
    fg = "black" if v > 0.6 else "white"
    return f"{fg} on rgb({r},{g},{b})"


def _num(x: Any, fmt: str | None = None, digits: int = 4) -> str:
    """A number for a table: fixed decimals where that reads well, else exponent."""
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    if fmt is not None:
        return format(float(x), fmt)
    x = float(x)
    return f"{x:.{digits}f}" if x == 0 or 1e-3 <= abs(x) < 1e6 else f"{x:.{digits - 1}e}"


def _bytes(n: int) -> str:
    size, unit = float(n), "bytes"
    for u in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, u
    return f"{n:,} bytes" + ("" if unit == "bytes" else f" ({size:.1f} {unit})")


def inspect_model(result: dict[str, Any], as_json: bool, console=None) -> None:
    """`fm inspect MODEL` output: JSON on stdout, or a readable summary."""
    if as_json:
        _print_json(result)
        return
    _show(_model_rows(result), _model_tables(result), console)


def _ids_row(f: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The feature ids of the model's training data (format 1.3): its id space and the ids used."""
    if not f:
        return []
    used = f"{f['used']:,} used in training, of " if isinstance(f.get("used"), int) else ""
    return [("feature ids", f"{used}an id space of {f.get('id_space', 0):,}"
             + ("; an id map gives each its slot" if f.get("id_map") else ""))]


def _model_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    h = summary["header"]
    m = h.get("model", {})
    t = h.get("training", {}) or {}
    hp = h.get("hyperparameters", {}) or {}
    mem = summary.get("memory") or {}
    rows: list[tuple[str, str]] = [
        ("file", f"{summary['path']} ({summary['file_bytes']:,} bytes)"),
        ("format", f"{h.get('format', '?')} (written by fmcli {h.get('fmcli_version', '?')})"),
        ("created", str(h.get("created_at", "?"))),
        ("model", f"{m.get('kind', '?')} ({m.get('task', '?')}), k={m.get('k', '?')}"
                  + (f", {m.get('n_classes')} classes: {', '.join(m.get('classes') or [])[:200]}"
                     if m.get("task") == "multiclass" else "")),
        ("features", f"{m.get('n_features', 0):,}"
                     + (" slots" if (summary.get("features") or {}).get("id_map") else "")),
        *_ids_row(summary.get("features")),
        ("fields", f"{m.get('n_fields', 0):,}"),
        ("terms", ", ".join(n for n, on in (("bias", m.get("use_bias")), ("linear", m.get("use_linear"))) if on)
         + (", " if m.get("use_bias") or m.get("use_linear") else "") + "pairwise" * (m.get("kind") != "lr")),
        ("normalization", "instance (1/||x||)" if m.get("normalize") else "none"),
        ("parameters", f"{summary['n_parameters']:,}" + (" + optimizer state" if summary["has_optimizer_state"] else "")),
    ]
    if mem:
        state = mem.get("optimizer_state_bytes") or 0
        slots = mem.get("optimizer_state_slots") or []
        rows.append(("memory", f"parameters {_bytes(mem.get('parameter_bytes', 0))}; optimizer state "
                     + (f"{_bytes(state)}" + (", in the file" if mem.get("optimizer_state_in_file")
                                              else ", not in the file") if slots or state else "none")))
    if hp:
        rows.append(("hyperparameters", ", ".join(
            f"{k}={hp[k]}" for k in ("optimizer", "learning_rate", "l2", "l1", "batch_size", "lr_schedule", "epochs",
                      "threads", "seed") if k in hp)))
    opt = summary.get("optimizer")
    if opt and opt.get("name"):
        slots = opt.get("slots") or []
        rows.append(("optimizer", f"{opt['name']}: " + (f"{len(slots)} state slot{'s' * (len(slots) != 1)} "
                                                        f"({', '.join(slots)})" if slots else "no state")
                     + (f", {opt['steps']:,} steps" if isinstance(opt.get("steps"), int) else "")))
    if t:
        rows.append(("trained on", f"{t.get('train_file')} ({t.get('train_rows', 0):,} rows"
                     + (f", on {t['device']}" if t.get("device") else "") + ")"))
        rows.append(("epochs", f"{t.get('epochs_run')} run, model from epoch {t.get('model_epoch')}"))
        metrics = t.get("valid_metrics")
        if metrics is None and t.get("valid_logloss") is not None:   # format 1.0 files
            metrics = {"logloss": t["valid_logloss"], "auc": t.get("valid_auc")}
        if metrics:
            rows.append(("validation", f"{t.get('valid_file')}: "
                         + ", ".join(f"{k} " + ("n/a" if v is None else f"{v:.5f}") for k, v in metrics.items())))
        if t.get("skipped_rows"):
            rows.append(("skipped rows", f"{t['skipped_rows']:,}"))
    parent = h.get("parent")
    if parent:
        rows.append(("warm start from", f"{parent.get('path')} (sha256 {str(parent.get('sha256'))[:16]}...)"))
    rows += _tuning_rows(h.get("tuning"))
    if t.get("zero_weights") and hp.get("l1"):
        rows.append(("zero weights", f"{t['zero_weights']:,} linear and factor weights are exactly 0"))
    inp = summary.get("input")
    if inp:
        rows.append(("input", _input_line(inp)))
    spec = summary.get("spec")
    if spec:
        rows.append(("preprocessing", _spec_line(spec)))
    for a in h.get("arrays", []):
        rows.append(("array", f"{a['name']}: {a['dtype']} {tuple(a['shape'])}"))
    sample = summary.get("sample")
    if sample:
        rows.append(("sample data", f"{', '.join(sample['files'])}: "
                     + ("the first " if sample.get("truncated") else "") + f"{sample['rows']:,} rows, "
                     f"{sample['distinct_features']:,} distinct features"
                     + (f", {sample['entries_ignored']:,} entries with ids beyond the model ignored"
                        if sample.get("entries_ignored") else "")))
    return rows


def _tuning_rows(rec: Any) -> list[tuple[str, str]]:
    """What `fm tune` recorded in the header of the model it chose (the
    whole record, leaderboard included, is under "tuning" in --json)."""
    if not isinstance(rec, dict):
        return []

    def params(p: Any) -> str:
        return ", ".join(f"{k}={v}" for k, v in p.items()) if isinstance(p, dict) else "?"

    brackets = rec.get("brackets")
    n_brackets = len(brackets) if isinstance(brackets, list) else brackets
    budget = rec.get("budget_seconds")
    seconds = rec.get("seconds")
    rows = [("tuned by", f"fm tune, {rec.get('trials', '?')} trials in {n_brackets} bracket"
             f"{'s' * (n_brackets != 1)}, {rec.get('metric', '?')} on {rec.get('valid', '?')}, "
             f"seed {rec.get('seed', '?')}"
             + (f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else "")
             + (f" of a {budget:g} s budget" if isinstance(budget, (int, float)) else "")
             + (f" (stopped: {rec['stopped']})" if rec.get("stopped") else ""))]
    if rec.get("space"):
        rows.append(("searched", params(rec["space"])))
    best = rec.get("best")
    if isinstance(best, dict):
        value = best.get("value")
        rows.append(("best trial", f"#{best.get('trial', '?')}: {params(best.get('params'))}; "
                     f"{rec.get('metric', '?')} "
                     + (f"{value:.5f}" if isinstance(value, (int, float)) else "?")
                     + f" at epoch {best.get('epoch', '?')}"))
    refit = rec.get("refit")
    if isinstance(refit, dict):
        rows.append(("refitted", f"on {', '.join(map(str, refit.get('data') or []))} for "
                     f"{refit.get('epochs', '?')} epochs"))
    return rows


def _input_line(inp: dict[str, Any]) -> str:
    """How the training rows were read (fmcli.inputmap): the column of each
    field and the hash settings of wide Parquet, or feature ids."""
    if inp.get("layout") != "wide":
        return "feature ids (libffm, libsvm or sparse Parquet)"
    cols = [f"{c} ({k})" for c, k in zip(inp.get("columns") or [], inp.get("kinds") or [])]
    return (f"wide Parquet, matched by column name: {len(cols)} fields ({', '.join(cols)}); "
            f"label {inp.get('label_column')}, weight {inp.get('weight_column') or 'none'}, "
            f"hash bits {inp.get('hash_bits')}, float columns {inp.get('float_columns')}"
            + ("" if inp.get("all_columns") else ", other columns ignored"))


def _spec_line(spec: dict[str, Any]) -> str:
    """A one-line digest of a preprocessing spec (--json has all of it)."""
    parts = []
    if spec.get("kind") is not None:
        parts.append(str(spec["kind"]))
    cols = spec.get("fields", spec.get("columns"))
    if isinstance(cols, dict):
        cols = list(cols)
    if isinstance(cols, list):
        names = [c if isinstance(c, str) else str(c.get("name", c.get("column", "?"))) if isinstance(c, dict)
                 else str(c) for c in cols]
        parts.append(f"{len(names)} fields ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    for k, v in spec.items():
        if k in ("kind", "fields", "columns") or isinstance(v, (dict, list)):
            continue
        parts.append(f"{k}={v}")
        if len(parts) > 8:
            parts.append("...")
            break
    return ", ".join(parts) or "(empty)"


def _model_tables(result: dict[str, Any]) -> list[_Table]:
    tables = []
    history = result.get("history") or []
    if history:
        keys = ["epoch", "train_loss"]
        for h in history:
            keys += [k for k in h if k not in keys and k not in ("seconds", "rows_per_s")]
        keys += [k for k in ("seconds", "rows_per_s") if any(k in h for h in history)]
        kept = (result["header"].get("training") or {}).get("model_epoch")
        rows = []
        for h in history:
            cells = []
            for k in keys:
                v = h.get(k)
                cells.append(str(v) if k == "epoch" else f"{v:,.0f}" if k == "rows_per_s" and v is not None
                             else f"{v:.2f}" if k == "seconds" and v is not None else _num(v, ".5f"))
            rows.append(cells + (["*" if h.get("epoch") == kept else ""]))
        tables.append(_Table("history (* the epoch the model is from)", keys + ["kept"], rows))
    ti = result.get("top_interactions")
    if ti is not None:
        tables.append(_interactions_table(ti))
    fp = result.get("field_pairs")
    if fp is not None:
        tables.append(_field_pairs_table(fp))
    tf = result.get("top_features")
    if tf is not None:
        tables.append(_features_table(tf))
    return tables


def _interactions_table(ti: dict[str, Any]) -> _Table:
    pairs = ti["pairs"]
    has_class = any(p.get("class") is not None for p in pairs)
    has_r = any("field_weight" in p for p in pairs)
    has_count = any(p["a"].get("count") is not None for p in pairs)
    columns = ["rank", "feature a", "feature b"] + (["class"] if has_class else []) + \
        ["strength", "value"] + (["r_ab"] if has_r else []) + (["count a", "count b"] if has_count else [])
    rows = []
    for p in pairs:
        rows.append([str(p["rank"]), p["a"]["name"], p["b"]["name"]] + ([str(p.get("class"))] if has_class else [])
                    + [_num(p["strength"]), _num(p["value"])] + ([_num(p.get("field_weight"))] if has_r else [])
                    + ([_num(p["a"].get("count")), _num(p["b"].get("count"))] if has_count else []))
    title = (f"top interactions: strength {ti['definition']}"
             + (f", class {ti['class']}" if ti.get("class") is not None else "")
             + f"; {ti['candidates']:,} candidates ({ti['candidates_are']})")
    return _Table(title, columns, rows, text=(1, 2, 3) if has_class else (1, 2))


def _field_pairs_table(fp: dict[str, Any]) -> _Table:
    names = [str(n) for n in fp["field_names"]]
    values = [v for row in fp["matrix"] for v in row if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    rows, heat = [], []
    for name, row in zip(names, fp["matrix"]):      # colours from the weakest pair to the strongest
        rows.append([name] + [_num(v, digits=3) for v in row])
        heat.append([None if v is None else (v - lo) / (hi - lo) if hi > lo else 1.0 for v in row])
    return _Table(f"field pairs: {fp['statistic']}; from {fp['source']}", ["field"] + names, rows, text=(0,),
                  heat=heat)


def _features_table(tf: dict[str, Any]) -> _Table:
    feats = tf["features"]
    has_count = any(f.get("count") is not None for f in feats)
    columns = ["rank", "feature", "linear", "factor norm", "score"] + (["count"] if has_count else [])
    rows = [[str(f["rank"]), f["name"], _num(f["linear"]), _num(f["factor_norm"]), _num(f["score"])]
            + ([_num(f.get("count"))] if has_count else []) for f in feats]
    title = (f"top features: score = {tf['score']}" + (f", class {tf['class']}" if tf.get("class") is not None else "")
             + f"; {tf['candidates']:,} candidates ({tf['candidates_are']})")
    return _Table(title, columns, rows, text=(1,))


def inspect_data(stats: dict[str, Any], as_json: bool, console=None) -> None:
    """`fm inspect DATA...` output."""
    if as_json:
        _print_json(stats)
        return
    rows: list[tuple[str, str]] = []
    for f in stats["files"]:
        what = [f["format"]] + ([f["compression"]] if f.get("compression") else []) + [f"{f['rows']:,} rows"]
        if f.get("bytes_on_disk") is not None:
            what.append(_bytes(f["bytes_on_disk"]) + " on disk")
        rows.append(("file", f"{f['path']}: {', '.join(what)}"))
    per = stats["entries_per_row"]
    rows += [
        ("format", stats["format"]),
        ("rows", f"{stats['rows']:,}" + (" (stopped at --rows)" if stats.get("truncated") else "")),
        ("entries", f"{stats['entries']:,}; per row min {per['min']:,}, mean {per['mean']:.2f}, max {per['max']:,}"
         + (f"; {stats['rows_without_features']:,} rows without features" if stats["rows_without_features"] else "")),
        ("fields", _distinct(stats["fields"])),
        ("features", _distinct(stats["features"])),
        ("labels", _labels(stats["labels"], stats["rows"])),
        ("values", "all 1" if not stats["values_other_than_1"]
         else f"{stats['values_other_than_1']:,} entries with a value other than 1"),
    ]
    w = stats.get("weights")
    rows.append(("weights", "none (every row weighs 1)" if not w else
                 f"{w['rows']:,} weighted rows: min {w['min']:.4g}, mean {w['mean']:.4g}, max {w['max']:.4g}"))
    bad = stats["bad_rows"]
    rows.append(("bad rows", f"{bad['count']:,}" + (f" (first: {bad['first'][0]})" if bad["first"] else "")))
    rows.append(("seconds", f"{stats['seconds']:.2f}"))
    _show(rows, [], console)


def _distinct(d: dict[str, Any]) -> str:
    count = (f"{d['distinct']:,} distinct" if d["exact"]
             else f"~{d['distinct']:,} distinct (HyperLogLog estimate, about 1% error)")
    return count + (f", largest id {d['max_id']:,}" if d["max_id"] >= 0 else "")


def _labels(lab: dict[str, Any], rows: int) -> str:
    if "classes" in lab:
        items = list(lab["classes"].items())
        shown = ", ".join(f"{k} {v:,}" for k, v in items[:10]) + (", ..." if len(items) > 10 else "")
        return f"{'multiclass' if lab['task'] else 'one class'}, {lab['n_classes']:,} classes: {shown}"
    if lab.get("task") == "binary":
        rate = lab["positive_rate"]
        return f"binary: {lab['positives']:,} positive ({100 * rate:.2f}%), {lab['negatives']:,} negative"
    if lab.get("min") is None:
        return "none (no rows)"
    spread = ", ".join(f"{k} {_num(lab[k], '.6g')}" for k in ("min", "max", "mean", "std"))
    if lab.get("task") == "regression":
        return f"numbers (regression): {spread}"
    values = lab.get("values") or {}
    shown = ", ".join(f"{k}: {v:,}" for k, v in list(values.items())[:12])
    if len(values) == 1:
        return f"one value for every row: {shown}"
    return f"integers (multiclass or regression): {shown}; {spread}"


# --------------------------------------------------------------------------
# fm tune: a line per finished (trial, rung), the leaderboard, JSON
# --------------------------------------------------------------------------


def params_text(params: dict[str, Any]) -> str:
    """A trial's parameters as name=value, comma-separated."""
    return ", ".join(f"{k}={_num(v, digits=4) if isinstance(v, float) else v}" for k, v in sorted(params.items()))


def tune_result_line(row: dict[str, Any], search) -> str:
    """One line for a (trial, rung) result of fmcli.tune."""
    head = f"trial {row['trial']} rung {row['rung']}"
    if row.get("status") != "ok":
        return f"{head}: failed: {row.get('error')}"
    params = params_text(search.trials[row["trial"]])
    return (f"{head} ({row['epochs']} epoch(s)): va_{search.metric} {_metric_cell(row['value'], 0).strip()} "
            f"at epoch {row['best_epoch']}  [{params}]")


def tune_leaderboard(rows: list[dict[str, Any]], names: list[str], metric: str, quiet: bool = False,
                     limit: int = 20) -> None:
    """The leaderboard of fm tune, best first, on stderr: a rich table on a
    terminal, plain lines otherwise (the first `limit` rows)."""
    if quiet or not rows:
        return
    columns = ["trial", *names, "rung", "epochs", "best epoch", f"va_{metric}", "seconds", "status"]
    cells = [[str(r["trial"]), *(_num(v) if isinstance(v := r["params"].get(n), float) else str(v) for n in names),
              "-" if r["rung"] is None else str(r["rung"]), str(r["epochs"]),
              "-" if r["best_epoch"] is None else str(r["best_epoch"]),
              _metric_cell(r["value"], 0).strip() if r["value"] is not None else "-",
              f"{r['seconds']:.2f}", r["status"]] for r in rows[:limit]]
    more = len(rows) - limit
    title = "leaderboard" + (f" (best {limit} of {len(rows)} trials)" if more > 0 else "")
    table = _Table(title, columns, cells, text=(len(columns) - 1,))
    if not stderr_is_tty():
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        for line in [columns] + cells:
            click.echo("  ".join(c.ljust(w) if i == len(columns) - 1 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(line, widths))).rstrip(), err=True)
        return
    _console().print(_rich_table(table))


def tune_jsonl(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as JSON lines."""
    return "".join(json.dumps(_jsonable(r), sort_keys=True, allow_nan=False) + "\n" for r in rows)


def tune_summary(summary: dict[str, Any]) -> None:
    """fm tune --json: one JSON object on stdout."""
    _print_json(summary)
