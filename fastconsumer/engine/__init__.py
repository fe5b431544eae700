"""The engine: fetches, schedules under an ordering, runs handlers, commits what is safe, stops cleanly."""

from fastconsumer.engine.consumer import Consumer
from fastconsumer.engine.handler import BatchHandler, Handler, batch
from fastconsumer.engine.settings import Settings
from fastconsumer.engine.stats import Stats, Summary

__all__ = ["BatchHandler", "Consumer", "Handler", "Settings", "Stats", "Summary", "batch"]
