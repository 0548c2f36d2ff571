"""`fm cache`: list the binary caches of parsed training data, clear them,
or print where they live."""

from __future__ import annotations

import json
import os
import re
import time

import click

from ..errors import CacheError, InputNotFoundError

ACTIONS = ("list", "clear", "dir")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# the actions each option applies to (given for another on the command line: a usage error)
_APPLIES = {"older_than": ("clear",), "dry_run": ("clear",), "as_json": ("list", "clear")}


class Age(click.ParamType):
    """A duration: a number with a unit, 90s, 30m, 12h, 7d or 2w; in seconds."""

    name = "age"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(value), re.IGNORECASE)
        if not m:
            self.fail(f"{value!r} is not an age such as 30m, 12h, 7d or 2w", param, ctx)
        return float(m.group(1)) * _AGE_UNITS[m.group(2).lower()]


@click.command(context_settings={"show_default": True})
@click.argument("action", type=click.Choice(ACTIONS), default="list", required=False)
@click.option("--cache-dir", type=click.Path(), default=None, show_default=False,
              help="The cache directory.  [default: as for fm train: $FMCLI_CACHE_DIR, else "
                   "$XDG_CACHE_HOME/fmcli or ~/.cache/fmcli]")
@click.option("--older-than", type=Age(), default=None, metavar="AGE", show_default=False,
              help="clear: only the caches last used longer ago than AGE (30m, 12h, 7d, 2w).  "
                   "[default: every cache not in use]")
@click.option("--dry-run", is_flag=True, help="clear: say what would be removed, remove nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="list, clear: print one JSON object on stdout (see the manual page).")
def cache(action, cache_dir, older_than, dry_run, as_json):
    """See and clear the binary caches of parsed training data.

    \b
      fm cache                         list the caches, their sizes and inputs
      fm cache clear                   remove every cache no run is reading
      fm cache clear --older-than 7d   only those unused for a week
      fm cache dir                     print the cache directory

    fm train keeps the rows it parsed in a cache (one file per set of
    inputs and parse options), so that later epochs and runs skip parsing.
    All caches of a directory are kept under a cap (fm train
    --cache-max-size, $FMCLI_CACHE_MAX_SIZE): writing a cache removes the
    least recently used others.  A cache that a run is reading is never
    removed, by either.  The list shows each cache's last use, size, rows,
    inputs and whether a run is reading it, then the total and the cap.

    Exit status: 0; 2 for a bad action or option; 66 when the directory is
    not one; 74 when clear cannot remove a cache (it removes the others);
    78 for a bad $FMCLI_CACHE_MAX_SIZE.
    """
    from ..data.cache import default_cache_dir

    ctx = click.get_current_context()
    for name, actions in _APPLIES.items():
        if action not in actions and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            option = "--json" if name == "as_json" else "--" + name.replace("_", "-")
            raise click.UsageError(f"{option} applies to fm cache {' and '.join(actions)}, not {action}")
    directory = os.path.abspath(cache_dir or default_cache_dir())
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise InputNotFoundError(f"{directory} is not a directory (the cache directory)")
    if action == "dir":
        click.echo(directory)
    elif action == "list":
        _list(directory, as_json)
    else:
        _clear(directory, older_than, dry_run, as_json)


def _describe(entry, now: float) -> dict:
    """One cache for the listing: what its table says (without reading its
    chunks) and whether a run is reading it."""
    from ..data.cache import CacheFile, CacheInvalid, in_use

    busy = in_use(entry.path)      # before opening it here, which takes a shared lock
    used = entry.last_used_ns / 1e9
    out = {"file": entry.name, "path": entry.path, "bytes": entry.bytes,
           "last_used": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(used)), "last_used_unix": round(used, 3),
           "last_used_seconds_ago": max(0.0, round(now - used, 3)),
           "in_use": busy, "valid": True, "problem": None, "inputs": [], "rows": None}
    try:
        cf = CacheFile(entry.path)
    except CacheInvalid as exc:
        out.update(valid=False, problem=str(exc))
        return out
    try:
        meta = cf.meta
        out["inputs"] = list(meta.get("paths") or meta.get("names") or [])
        out["rows"] = meta.get("n_rows")
    finally:
        cf.close()
    return out


def _list(directory: str, as_json: bool) -> None:
    from ..data.cache import DEFAULT_MAX_BYTES, cache_entries, human_size, resolve_max_size

    entries = cache_entries(directory)
    cap, source = resolve_max_size(directory, None, entries)
    now = time.time()
    caches = [_describe(e, now) for e in reversed(entries)]      # most recently used first
    total = sum(c["bytes"] for c in caches)
    if as_json:
        click.echo(json.dumps({"schema": "fmcli.cache/1", "directory": directory, "total_bytes": total,
                               "max_bytes": cap, "max_bytes_from": source, "caches": caches}, indent=2))
        return
    whence = {"environment": "from FMCLI_CACHE_MAX_SIZE",
              "default": f"the default: the smaller of {human_size(DEFAULT_MAX_BYTES)} and a tenth of "
                         "the free space"}[source]
    if not caches:
        click.echo(f"{directory}: no caches (cap {human_size(cap)}, {whence})")
        return
    n = len(caches)
    click.echo(f"{directory}: {n} cache{'s' if n > 1 else ''}, {human_size(total)} of a "
               f"{human_size(cap)} cap ({whence})")
    rows = [("LAST USED", "SIZE", "ROWS", "IN USE", "INPUTS")]
    for c in caches:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["last_used_unix"]))
        inputs = ", ".join(c["inputs"]) if c["valid"] else f"(not usable: {c['problem']})"
        rows.append((when, human_size(c["bytes"]), "-" if c["rows"] is None else f"{c['rows']:,}",
                     "yes" if c["in_use"] else "no", inputs))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]),
                              r[3].ljust(widths[3]), r[4]]).rstrip())


def _clear(directory: str, older_than: float | None, dry_run: bool, as_json: bool) -> None:
    from ..data.cache import cache_entries, human_size, in_use, remove_cache, sweep_temporaries

    now_ns = time.time_ns()
    removed, busy, failed = [], [], []
    for entry in cache_entries(directory):
        if older_than is not None and now_ns - entry.last_used_ns <= older_than * 1e9:
            continue
        if dry_run:
            (busy if in_use(entry.path) else removed).append(entry)
            continue
        try:
            (removed if remove_cache(entry.path) else busy).append(entry)
        except OSError as exc:
            failed.append((entry, exc.strerror or str(exc)))
    if not dry_run:
        sweep_temporaries(directory)        # what writers killed mid-write left behind
    freed = sum(e.bytes for e in removed)
    if as_json:
        click.echo(json.dumps({
            "schema": "fmcli.cache.clear/1", "directory": directory, "dry_run": dry_run,
            "removed": [{"file": e.name, "bytes": e.bytes} for e in removed], "freed_bytes": freed,
            "in_use": [{"file": e.name, "bytes": e.bytes} for e in busy],
            "failed": [{"file": e.name, "bytes": e.bytes, "error": why} for e, why in failed]}, indent=2))
    else:
        verb = "would remove" if dry_run else "removed"
        line = f"{verb} {len(removed)} cache{'' if len(removed) == 1 else 's'} ({human_size(freed)}) from {directory}"
        if busy:
            line += f"; kept {len(busy)} in use by a run"
        click.echo(line)
    if failed:
        entry, why = failed[0]
        raise CacheError(f"could not remove {len(failed)} cache{'' if len(failed) == 1 else 's'} of {directory} "
                         f"({entry.name}: {why})")

