"""Settings from configuration files and the environment.

Every option of ``fm train`` and ``fm predict`` can also be given

- in a TOML file named with ``--config FILE``, in a table per command
  (``[train]``, ``[predict]``), keyed by the option's long name with ``-``
  or ``_`` (``learning-rate = 0.05``, ``learning_rate = 0.05``; a flag pair
  ``--norm/--no-norm`` is ``norm = false``), and
- in an environment variable ``FM_<COMMAND>_<OPTION>``: the long name in
  upper case with ``_`` for ``-`` (``FM_TRAIN_EPOCHS=3``,
  ``FM_PREDICT_THREADS=4``; ``FM_DEBUG`` for ``fm --debug``).  A variable
  with the running command's prefix that names none of its options is an
  error, as an unknown key of the file is (:func:`check_envvars`).

Values in the file have the TOML type of the option, checked the same way
for every key: a number for a number (``epochs = 5``, not ``"5"``), true
or false for a flag, a string for a name, a choice or a path.

The command line wins over the environment, which wins over the file, which
wins over the built-in defaults.  The file's values become click's
``default_map``; click itself applies that precedence and records where
each value came from (:func:`sources`).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import click
from click.core import ParameterSource

from .errors import ConfigError, InputNotFoundError

__all__ = ["ENV_PREFIX", "option_key", "envvar_name", "apply_envvars", "check_envvars", "read_file",
           "file_defaults", "sources", "SOURCE_NAMES"]

ENV_PREFIX = "FM"

SOURCE_NAMES = {
    ParameterSource.COMMANDLINE: "cli",
    ParameterSource.PROMPT: "cli",
    ParameterSource.ENVIRONMENT: "env",
    ParameterSource.DEFAULT_MAP: "config",
    ParameterSource.DEFAULT: "default",
}


def _options(command: click.Command) -> Iterable[click.Option]:
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and param.name and param.name != "help":
            yield param


def option_key(param: click.Parameter) -> str:
    """The name of an option in files, environment names and records: its
    first long name without the dashes (``learning-rate``, ``norm``)."""
    for opt in param.opts:
        if opt.startswith("--"):
            return opt[2:]
    return (param.name or "").replace("_", "-")


def envvar_name(command_name: str | None, param: click.Parameter) -> str:
    parts = [ENV_PREFIX] + ([command_name] if command_name else []) + [option_key(param)]
    return "_".join(parts).upper().replace("-", "_")


def apply_envvars(group: click.Group) -> None:
    """Give every option of `group` and of its commands its FM_* variable."""
    for param in _options(group):
        if param.envvar is None and param.name not in ("version",):
            param.envvar = envvar_name(None, param)
    for name, command in group.commands.items():
        for param in _options(command):
            if param.envvar is None:
                param.envvar = envvar_name(name, param)


def check_envvars(group: click.Group, command_name: str,
                  environ: Mapping[str, str] | None = None) -> None:
    """Refuse an ``FM_<COMMAND>_*`` variable that no option of the command
    reads (a typo such as ``FM_TRAIN_EPOCH`` would otherwise be ignored
    without a word), as an unknown key of a configuration file is refused.
    Only the running command's prefix is checked: ``FM_PREDICT_THREADS``
    exported for later does not stop ``fm train``."""
    command = group.commands.get(command_name)
    if command is None:
        return
    environ = os.environ if environ is None else environ
    prefix = "_".join([ENV_PREFIX, command_name]).upper().replace("-", "_") + "_"
    known: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option):
            known.update([param.envvar] if isinstance(param.envvar, str) else (param.envvar or ()))
    for name in sorted(environ):
        if name.startswith(prefix) and name not in known:
            # compare the option parts: the shared prefix would make anything look close
            options = {n[len(prefix):]: n for n in known if n.startswith(prefix)}
            close = [options[o] for o in difflib.get_close_matches(name[len(prefix):], sorted(options), n=1)]
            raise ConfigError(f"environment variable {name}: no option of fm {command_name} reads it"
                              + (f" (did you mean {close[0]}?)" if close else "")
                              + f"; see fm {command_name} --help")


def read_file(path: str) -> dict[str, Any]:
    """Parse a TOML file; every failure is a one-line error."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise InputNotFoundError(f"{path}: is a directory, not a configuration file") from None
    except OSError as exc:
        raise InputNotFoundError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _aliases(command: click.Command) -> dict[str, tuple[click.Option, bool]]:
    """Accepted keys of a command's table: normalized name -> (option, negated)."""
    out: dict[str, tuple[click.Option, bool]] = {}
    for param in _options(command):
        for opt in param.opts:
            if opt.startswith("--"):
                out.setdefault(opt[2:], (param, False))
        for opt in param.secondary_opts:
            if opt.startswith("--"):
                out.setdefault(opt[2:], (param, True))
        out.setdefault(param.name.replace("_", "-"), (param, False))
    return out


def _normal(key: str) -> str:
    return key.replace("_", "-")


def _type_name(param: click.Option) -> str:
    if param.is_flag or isinstance(param.type, click.types.BoolParamType):
        return "true or false"
    if isinstance(param.type, click.Choice):
        return "one of " + ", ".join(map(str, param.type.choices))
    if isinstance(param.type, click.Path):
        return "a path (a string)"
    return {"integer": "an integer", "integer range": "an integer", "float": "a number",
            "float range": "a number", "text": "a string"}.get(param.type.name, f"a {param.type.name}")


def _toml_types(param: click.Option) -> tuple[type, ...] | None:
    """The TOML value types an option accepts, the same rule for every key:
    a number where a number is expected, a string where a string (a name,
    a choice, a path) is; None for the types that take either (a size such
    as 512M or 1073741824, 'auto' or a count)."""
    kind = param.type
    if isinstance(kind, click.types.IntParamType):
        return (int,)
    if isinstance(kind, click.types.FloatParamType):
        return (int, float)
    if isinstance(kind, (click.types.StringParamType, click.Choice, click.Path)):
        return (str,)
    return None


def _convert(ctx: click.Context, param: click.Option, negated: bool, value: Any,
             where: str) -> Any:
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{where}: {reason}")

    if isinstance(value, (dict, list)):
        raise bad(f"expected {_type_name(param)}, found a TOML {'table' if isinstance(value, dict) else 'array'}")
    boolean = param.is_flag or isinstance(param.type, click.types.BoolParamType)
    if boolean:
        if not isinstance(value, bool):
            hint = (f" (a string; write {value.lower()} without quotes)"
                    if isinstance(value, str) and value.lower() in ("true", "false") else "")
            raise bad(f"expected true or false, found {value!r}{hint}")
        return (not value) if negated else value
    if isinstance(value, bool):
        raise bad(f"expected {_type_name(param)}, found {str(value).lower()}")
    if isinstance(param.type, click.types.IntParamType) and isinstance(value, float):
        if not value.is_integer():
            raise bad(f"expected an integer, found {value!r}")
        value = int(value)
    accepted = _toml_types(param)
    if accepted is not None and not isinstance(value, accepted):
        # "5" is not 5: a quoted number is as wrong as a number where a name belongs
        hint = ""
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                float(value)
                hint = f" (a string; write {value.strip()} without quotes)"
        raise bad(f"expected {_type_name(param)}, found {value!r}{hint}")
    if not isinstance(value, (str, int, float)):
        raise bad(f"expected {_type_name(param)}, found {value!r}")
    try:
        return param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise bad(exc.message.rstrip(".")) from None


def file_defaults(ctx: click.Context, path: str, section: str,
                  sections: Iterable[str] = (), keys: dict[str, str] | None = None) -> dict[str, Any]:
    """The values that `path`'s ``[section]`` table sets for ctx's command,
    checked and converted, keyed by parameter name (click's default_map).
    `keys`, when given, receives each parameter's key as the file spells it."""
    data = read_file(path)
    allowed = set(sections) | {section}
    for key, value in data.items():
        if key not in allowed:
            raise ConfigError(f"{path}: unknown table [{key}] (expected "
                              + " or ".join(f"[{s}]" for s in sorted(allowed)) + ")")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} must be a table ([{key}]), found {value!r}")
    table: Mapping[str, Any] = data.get(section, {})
    aliases = _aliases(ctx.command)
    given: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{path}: [{section}] {key}"
        found = aliases.get(_normal(key))
        if found is None or found[0].name == "config_file":
            if found is not None:
                raise ConfigError(f"{where}: a configuration file cannot name another one")
            close = difflib.get_close_matches(_normal(key), list(aliases), n=1)
            raise ConfigError(f"{path}: [{section}] unknown option {key!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; see fm {section} --help")
        param, negated = found
        if param.name in given:
            raise ConfigError(f"{where}: {option_key(param)} is set twice (also as {given[param.name]!r})")
        given[param.name] = key
        out[param.name] = _convert(ctx, param, negated, value, where)
    if keys is not None:
        keys.update(given)
    return out


def blame(message: str, path: str, keys: Mapping[str, str]) -> str:
    """A configuration error's message, with the file's keys it seems to be
    about (or else just the file) added."""
    if path in message:
        return message
    def pattern(key: str) -> str:
        parts = [re.escape(part) for part in _normal(key).lower().split("-")]
        return r"(?<!\w)" + r"[\s_-]".join(parts) + r"(?![\w-])"

    named = [key for key in keys.values() if re.search(pattern(key), message.lower())]
    if named:
        return f"{message} ({', '.join(named)} in {path})"
    return f"{message} (with settings from {path})"


def sources(ctx: click.Context) -> dict[str, str]:
    """Where each option's value came from: cli, env, config or default."""
    out = {}
    for param in _options(ctx.command):
        if param.name == "config_file":
            continue
        source = ctx.get_parameter_source(param.name)
        out[option_key(param)] = SOURCE_NAMES.get(source, "default")
    return out


def env_source(exc: click.BadParameter) -> str | None:
    """The environment variable a bad value came from, if it came from one."""
    ctx, param = exc.ctx, exc.param
    if ctx is None or param is None or not param.name:
        return None
    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
    name = next((n for n in names if os.environ.get(n)), None)
    if name is None:
        return None
    source = ctx.get_parameter_source(param.name)
    if source is not None:
        return name if source == ParameterSource.ENVIRONMENT else None
    # click 8.4.0 records where a value came from only after converting it,
    # so a value that failed has no source yet: blame the variable when its
    # own value fails the same way (the message quotes the value).
    try:
        param.type_cast_value(ctx, param.value_from_envvar(ctx))
    except click.BadParameter as again:
        return name if again.message == exc.message else None
    return None
