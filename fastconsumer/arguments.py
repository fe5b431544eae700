"""What the command lines share: argument types, and a parser whose errors are one line naming the fix."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

EXIT_USAGE = 2


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def kafka_property(text: str) -> tuple[str, str]:
    """``-X key=value``, as kcat takes librdkafka properties."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, label: str | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.label = label or self.prog

    def error(self, message: str) -> NoReturn:
        """One line, not the whole usage block: the line names the flag to fix."""
        self.exit(EXIT_USAGE, f"{self.label}: error: {message} (see --help)\n")
