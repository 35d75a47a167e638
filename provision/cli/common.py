"""What every command shares: the consoles, the common options, the settings a
command works from, and errors as one line with an exit status.

Errors: a `ProvisionError` prints its message and exits with its own status
(`BadInput` 2: nothing was created; anything else 1); any other exception gets
its class name and a pointer to ``--debug``. Ctrl-C is not handled here: a
KeyboardInterrupt goes through Click to the console script (`entry.run`), which
exits 130 with the hint whenever the signal comes.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pydantic
from rich.console import Console
from rich.markup import escape

from provision import state
from provision.config import load_config
from provision.errors import BadInput, ProvisionError
from provision.schema import ClusterConfig

# Wide enough for the node table when output goes to a file or a pipe.
PIPE_WIDTH = 160

out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True)

# Besides ProvisionError (which carries its own exit status): failures raised
# by the payload, which cannot import provision, that still deserve one line.
PAYLOAD_FAILURES = (TimeoutError,)


def debugging() -> bool:
    return bool(os.environ.get("PROVISION_DEBUG"))


def _error_line(message: str) -> None:
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class Main(click.Group):
    """Turns known errors into one line; `--debug` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:  # one line, like every other bad input
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            _error_line(f"{e.format_message()}{where}")
            sys.exit(e.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - every error becomes one line
            if debugging():
                traceback.print_exc()
            known = isinstance(e, (ProvisionError, *PAYLOAD_FAILURES))
            hint = "" if known else f" ({type(e).__name__}; --debug shows the traceback)"
            _error_line(f"{e}{hint}")
            sys.exit(e.exit_code if isinstance(e, ProvisionError) else 1)


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config and --template, accepted by every command."""
    fn = click.option(
        "--template", "-t", "template", metavar="NAME",
        help="Cluster template in the file (default: its `default:`).",
    )(fn)
    fn = click.option(
        "--config", "-c", "config_path", type=click.Path(path_type=Path), metavar="PATH",
        help="Cluster file (default: the one `provision init` wrote).",
    )(fn)
    return fn


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        fn
    )


def settings(
    config_path: Path | None, template: str | None, name: str | None = None, **overrides: Any
) -> ClusterConfig:
    """Settings for a command: the cluster's cached record, else the file, then flags."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if name is not None:
        overrides["name"] = name
    record = state.load(name) if name else {}
    if record.get("config") and config_path is None and template is None:
        try:
            return ClusterConfig.model_validate(record["config"] | overrides)
        except pydantic.ValidationError as e:  # the cached record was valid; an override is not
            raise BadInput(str(e).splitlines()[0]) from e
    return load_config(config_path, template, overrides)
