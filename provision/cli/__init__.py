"""The `provision` command: parse, call the Python API, print with Rich.

Nothing here decides what happens in the cloud or on a node; each command turns
flags into settings, calls the API (`lifecycle`, `query`, `files`, `data`, the
payload) and prints the result. Commands are grouped by what they act on:
`cluster` (the cluster as a whole), `nodes` (its nodes), `data` (data and
runs); the simulated region's commands live with it (`provision.sim.cli`).
Shared options, output and error handling are in `common`, tables in `tables`.
Errors become one line and an exit status: 2 for bad input (nothing was
created), 1 for a failure, 130 for Ctrl-C.
"""

from __future__ import annotations

import logging
import os

import click
from rich.logging import RichHandler

from provision.cli import cluster, data, nodes
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


for command in (*cluster.COMMANDS, *nodes.COMMANDS, *data.COMMANDS, sim):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
