"""The ``mmadapt`` command line: a thin click layer over the public API.

This module is the table of contents: the click group and the commands it holds. Each command
(or command group) lives in its own module beside this one, with its presentation; the logic is
in the library. At load time the command modules import only click and mmadapt's light helpers
(torch and the library proper are imported inside the command functions), so ``mmadapt --help``
loads fast.

Every user-facing error (bad recipe, dataset, model path ...) is printed as one line
on stderr and exits with code 2.
"""

from __future__ import annotations

import os
import sys

import click

from mmadapt.cli.ab import ab
from mmadapt.cli.advise import advise
from mmadapt.cli.batch import batch
from mmadapt.cli.compare import compare
from mmadapt.cli.data import data
from mmadapt.cli.drift import drift
from mmadapt.cli.eval import eval_suite
from mmadapt.cli.launch import launch
from mmadapt.cli.models import models
from mmadapt.cli.plan import plan
from mmadapt.cli.recipe import recipe
from mmadapt.cli.registry import registry
from mmadapt.cli.report import history_report
from mmadapt.cli.run import ask, export, run
from mmadapt.cli.serve import serve
from mmadapt.errors import MmadaptError
from mmadapt.models.quiet import drop_import_notices


class MmadaptGroup(click.Group):
    """A click group that turns MmadaptError into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MmadaptError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was published (the previous version is intact)", err=True)
            ctx.exit(130)


@click.group(cls=MmadaptGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mmadapt")
def main() -> None:
    """Measure whether a prompt, retrieval, an adapter or a full fine-tune adapts a model to your domain.

    \b
    Examples:
      mmadapt run recipes/text/zentrix-support.yaml
      mmadapt recipe validate recipes/text/zentrix-support.yaml
      mmadapt registry list recipes/text/zentrix-support.yaml
      mmadapt models list
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    drop_import_notices()


# What a user can do, in the order of the README: adapt and use, check inputs, decide and govern, scale out, serve.
for command in (
    run, ask, export, compare,  # run.py, compare.py
    recipe, data, models,  # recipe.py, data.py, models.py
    registry, eval_suite, advise, plan, ab, drift, history_report,  # registry.py, eval.py, advise.py, plan.py, ab.py, drift.py, report.py
    batch, launch,  # batch.py, launch.py
    serve,  # serve.py
):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
