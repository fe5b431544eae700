"""Event loop choice: uvloop where the platform has it, the standard loop otherwise or on request."""

from __future__ import annotations

import asyncio

from fastconsumer.errors import ConfigError

LOOPS = ("auto", "uvloop", "asyncio")


def new_event_loop(name: str = "auto") -> asyncio.AbstractEventLoop:
    if name not in LOOPS:
        raise ConfigError(f"loop must be one of {', '.join(LOOPS)}; got {name!r}")
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ConfigError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
