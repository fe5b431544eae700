"""Where a setting comes from: a flag, over the ``--config`` TOML file, over ``FASTCONSUMER_*`` environment
variables, over the flag's default.

The file's keys are the long flags' names without the dashes (``concurrency = 64``, ``bootstrap-servers =
"..."`` or ``bootstrap_servers``, ``topic = ["a", "b"]``, ``exit-at-end = true``); librdkafka properties go in
a ``[kafka]`` table (``"fetch.min.bytes" = 1``), as ``-X`` takes them. A variable is the flag's name in
capitals (``FASTCONSUMER_CONCURRENCY=8``, ``FASTCONSUMER_TOPIC=a,b``). Both become the parser's defaults, so
that only a flag on the command line overrides them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastconsumer.cli.parser import build_parser

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KAFKA_TABLE = "kafka"
ENV_PREFIX = "FASTCONSUMER_"
NOT_SETTINGS = {"help", "config_file", "process_index"}  # flags that no file or variable may set
TRUE = ("1", "true", "yes", "on")


class FileError(ValueError):
    """The file cannot be used; the message names the file, and the key when one is at fault."""


def parse(argv: list[str], environ: Mapping[str, str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The arguments with every source merged; bad usage exits 2 with one line."""
    parser = build_parser()
    parser.set_defaults(**from_environment(parser, environ))
    args = parser.parse_args(argv)
    if args.config_file:  # read only now: the flag may come from the environment
        try:
            parser.set_defaults(**load(args.config_file, parser))
        except FileError as exc:
            parser.error(str(exc))
        args = parser.parse_args(argv)
    return parser, args


def settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The long flags a file or a variable may set, by ``dest``."""
    return {
        action.dest: action
        for action in parser._actions
        if action.dest not in NOT_SETTINGS and any(o.startswith("--") for o in action.option_strings)
    }


def _convert(action: argparse.Action, text: str) -> Any:
    """``text`` through the flag's type (``ArgumentTypeError`` or ``ValueError`` when invalid)."""
    convert = action.type
    return convert(text) if callable(convert) else text


def from_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for dest, action in settable(parser).items():
        name = ENV_PREFIX + dest.upper()
        raw = environ.get(name)
        if raw is None:
            continue
        try:
            if isinstance(action, argparse._StoreTrueAction):
                defaults[dest] = raw.strip().lower() in TRUE
            elif isinstance(action, argparse._AppendAction):
                defaults[dest] = [part.strip() for part in raw.split(",") if part.strip()]
            else:
                value = _convert(action, raw)
                if action.choices is not None and value not in action.choices:
                    raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, action.choices))}")
                defaults[dest] = value
        except (argparse.ArgumentTypeError, ValueError) as exc:
            parser.error(f"environment variable {name}={raw!r}: {exc}")
    return defaults


def load(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's settings as ``{dest: value}``; its ``[kafka]`` table becomes ``config``, the ``-X`` list of
    ``(key, value)``."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FileError(f"config file {path} is not valid TOML: {exc}") from None
    actions = settable(parser)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == KAFKA_TABLE:
            out["config"] = _kafka_table(path, value)
            continue
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise FileError(f"config file {path}: unknown key {key!r}")
        out[dest] = _file_value(action, value, f"config file {path}: {key!r}")
    return out


def _kafka_table(path: str, table: Any) -> list[tuple[str, str]]:
    if not isinstance(table, dict):
        raise FileError(f"config file {path}: [{KAFKA_TABLE}] must be a table of librdkafka properties")
    props = []
    for name, prop in table.items():
        if isinstance(prop, (dict, list)) or prop is None:
            raise FileError(
                f"config file {path}: [{KAFKA_TABLE}] {name!r} must be a string, number or boolean, "
                f"got {_kind(prop)}"
            )
        props.append((name, ("true" if prop else "false") if isinstance(prop, bool) else str(prop)))
    return props


def _file_value(action: argparse.Action, value: Any, where: str) -> Any:
    """TOML has types where a command line has text: a value of the wrong type is refused, not converted."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise FileError(f"{where} must be true or false, got {_kind(value)}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            raise FileError(f"{where} must be a string or a list of strings, got {_kind(value)}")
        return list(items)
    numeric = action.type is not None and action.type is not str
    if isinstance(value, bool) or not isinstance(value, (int, float) if numeric else str):
        raise FileError(f"{where} must be {'a number' if numeric else 'a string'}, got {_kind(value)}")
    try:
        parsed = _convert(action, str(value)) if numeric else value
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise FileError(f"{where}: {exc}") from None
    if action.choices is not None and parsed not in action.choices:
        raise FileError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {parsed!r}")
    return parsed


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(value), f"a {type(value).__name__}"
    )
