"""``--config fastconsumer.toml``: the flags' settings in a TOML file.

Keys are the long flags' names without the dashes (``concurrency = 64``, ``bootstrap-servers = "..."`` or
``bootstrap_servers``, ``topic = ["a", "b"]``, ``exit-at-end = true``); librdkafka properties go in a
``[kafka]`` table (``"fetch.min.bytes" = 1``), as ``-X`` takes them. A flag on the command line wins over the
file, and the file over ``FASTCONSUMER_*`` variables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KAFKA_TABLE = "kafka"
NOT_IN_FILE = {"help", "config", "config_file", "process_index"}


class FileError(ValueError):
    """The file cannot be used; the message names the file, and the key when one is at fault."""


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    out = {}
    for action in parser._actions:
        if action.dest in NOT_IN_FILE or not any(o.startswith("--") for o in action.option_strings):
            continue
        out[action.dest] = action
    return out


def _value(action: argparse.Action, value: Any, where: str) -> Any:
    """The value as the flag would have parsed it; FileError on a wrong type or an invalid value."""
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
        parsed = action.type(str(value)) if numeric else value
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise FileError(f"{where}: {exc}") from None
    if action.choices is not None and parsed not in action.choices:
        raise FileError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {parsed!r}")
    return parsed


def _property(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's settings as ``{dest: value}`` for ``parser.set_defaults``; its ``[kafka]`` table becomes
    ``config`` (the ``-X`` list of ``(key, value)``)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FileError(f"config file {path} is not valid TOML: {exc}") from None
    actions = _actions(parser)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == KAFKA_TABLE:
            if not isinstance(value, dict):
                raise FileError(
                    f"config file {path}: [{KAFKA_TABLE}] must be a table of librdkafka properties"
                )
            props = []
            for name, prop in value.items():
                if isinstance(prop, (dict, list)) or prop is None:
                    raise FileError(
                        f"config file {path}: [{KAFKA_TABLE}] {name!r} must be a string, number or boolean, "
                        f"got {_kind(prop)}"
                    )
                props.append((name, _property(prop)))
            out["config"] = props
            continue
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise FileError(f"config file {path}: unknown key {key!r}")
        out[dest] = _value(action, value, f"config file {path}: {key!r}")
    return out
