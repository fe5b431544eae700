"""The command line, ``python -m fastconsumer`` (the ``fastconsumer`` script): flags in ``parser``, where
settings come from in ``settings``, from flags to a consumer in ``build``, the run in ``run``, ``--processes``
in ``supervisor``; ``progress``, ``logs`` and the ``demo`` handler are what a person running it sees."""

from fastconsumer.cli.run import main

__all__ = ["main"]
