"""The `provision` command group: every command, the global options, logging.

Errors become one line and an exit status (`common.Main`): 2 for bad input
(nothing was created), 1 for a failure; Ctrl-C (130) is the console script's
(`entry.run`), because it must hold at any moment, imports and exit included.
"""

from __future__ import annotations

import logging
import os

import click
from rich.logging import RichHandler

from provision.cli import cluster, data, images, limits, nodes
from provision.cli.common import Main, debugging, err
from provision.sim.cli import sim

__all__ = ["Main", "main"]


def _debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["PROVISION_DEBUG"] = "1"


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"],
                                         "max_content_width": 100})
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_debug,
              help="Show tracebacks.")
@click.version_option(package_name="provision")
def main() -> None:
    """Disposable EC2 spot clusters for scikit-learn model selection.

    \b
    A typical session (on the simulated region, no AWS account needed):
      provision sim up                      # EC2 API + real SSH hosts on this machine
      provision up -n 3 --spot-bid 0.10     # master + 2 workers, engines running
      provision put-data provision digits   # memmapped CV splits, once per host
      provision run provision gridsearch --data digits --model sklearn.svm.SVC \\
          --param 'C=logspace(-1,2,4)' --param 'gamma=logspace(-4,0,5)'
      provision down provision --yes        # nothing left billing

    On AWS, set `region:` in the cluster file (`provision init` writes one).
    """
    logger = logging.getLogger("provision")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=err, show_time=False, show_path=False, markup=False))
    logger.setLevel(logging.DEBUG if debugging() else logging.WARNING)


for command in (*cluster.COMMANDS, *limits.COMMANDS, *nodes.COMMANDS, *data.COMMANDS,
                *images.COMMANDS, sim):
    main.add_command(command)
