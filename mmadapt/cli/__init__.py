"""The ``mmadapt`` command line: a thin click layer over the public API (one module per command group)."""

from mmadapt.cli.main import main

__all__ = ["main"]
