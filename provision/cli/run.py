"""`provision run NAME KIND`: every payload kind of `payload.registry` as a command.

Nothing here knows a kind by name. A kind's command is built from its registry
entry: the parameters of its entry point that are *inputs* (`INPUTS`: the model,
the data put on the cluster, what to vary, the journal, a progress callback) are
filled from the shared flags (``--model``, ``--set``, ``--data``, ``--param``,
``--out``); every other keyword parameter becomes a flag of its own, typed from
its annotation (`option`), with the kind's help text, and so does every option
of the kind's `present`. ``provision run NAME KIND --help`` lists them. A new
payload module with one decorated function is a new command.
"""

from __future__ import annotations

import difflib
import fcntl
import inspect
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click

import payload
from payload.registry import PayloadKind
from provision import data, lifecycle, partition, progress, state, suitability
from provision.cli.common import config_options, err, out, settings
from provision.cli.running import run_payload
from provision.errors import BadInput, ProvisionError
from provision.params import load_estimator, parse_fixed, parse_params, parse_train_sizes

# Filled from the shared flags, never flags of their own.
INPUTS = frozenset({
    "estimator", "split_paths", "shard_paths", "test_path", "reference_data", "param_grid",
    "param_name", "param_range", "journal", "progress",
})
# Options whose flag or parsing is not the generic one: (flag, click type, help).
SPECIAL: dict[str, tuple[str, Any, str]] = {
    "random_state": ("--seed", int, "Seed of the payload's own randomness."),
    "scoring": ("--scoring", str, "A scikit-learn scorer name (default: the estimator's score)."),
    "train_sizes": ("--train-sizes", str, "Training-set sizes."),
    "timeout": ("--timeout", float, "Seconds before the run gives up."),
    "retries": ("--retries", int, "Re-run a task that raised (a lost engine) on another "
                                  "engine up to this many times."),
    "error_score": ("--error-score", float, "Score recorded for a fit that fails "
                                            "(nan: the fit's row shows nan)."),
}
# The command line's own defaults, where the payload's (None) would not do: every wait
# has a timeout, and a run is reproducible, so a randomized search resumes from its journal.
CLI_DEFAULTS = {"timeout": 3600.0, "random_state": 0}
MAX_CANDIDATES = 100_000  # more is almost always a typo in a range, and hours of fits
REGRESSION_TARGETS = ("continuous", "continuous-multioutput")
MODEL_HELP = (
    "The estimator: a dotted class path (sklearn.svm.SVC), module:factory, or a Python file "
    "(pipeline.py:make_pipeline, or pipeline.py with a module-level `estimator`)."
)


def _scalar(annotation: Any) -> Any | None:
    """The click type of a plain annotation (``int | None``, ``bool``, ...), or None."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    parts = {p.strip() for p in text.split("|")} - {"None"}
    if parts in ({"int", "str"}, {"float", "str"}):
        return "number-or-word"
    return {frozenset({"int"}): int, frozenset({"float"}): float, frozenset({"str"}): str,
            frozenset({"bool"}): bool}.get(frozenset(parts))


def option(name: str, param: inspect.Parameter, kind: PayloadKind) -> click.Option | None:
    """The flag for option `name` of `kind`, or None if it cannot be typed on a command line."""
    flag, ptype, help_text = SPECIAL.get(name, (f"--{name.replace('_', '-')}", None, ""))
    ptype = ptype or _scalar(param.annotation)
    if ptype is None:
        return None
    help_text = kind.option_help.get(name, help_text or f"Payload option {name}.")
    has_default = param.default is not inspect.Parameter.empty
    if name in CLI_DEFAULTS:
        return click.Option([flag, name], type=ptype, default=CLI_DEFAULTS[name],
                            show_default=True, help=help_text)
    if has_default and param.default is not None:  # shown, not passed: the payload's applies
        shown = param.default.tolist() if hasattr(param.default, "tolist") else param.default
        help_text += f"  [default: {shown}]"
    if ptype is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text,
                            required=not has_default)
    ctype = str if ptype == "number-or-word" else ptype
    return click.Option([flag, name], type=ctype, default=None, help=help_text,
                        required=not has_default)


def build_command(kind: PayloadKind) -> click.Command:
    """The `run NAME KIND` command of one payload kind."""
    params: list[click.Parameter] = [
        click.Option(["--data", "label"], required=True, metavar="LABEL",
                     help="A dataset put on the cluster with put-data."),
        click.Option(["--model"], metavar="SPEC", help=MODEL_HELP + _model_default(kind)),
        click.Option(["--set", "fixed"], multiple=True, metavar="NAME=VALUE",
                     help="Fixed estimator parameter, nested ones too (clf__max_iter=500). "
                          "Repeatable."),
    ]
    if {"param_grid", "param_name"} & set(kind.options):
        one = "param_name" in kind.options
        params.append(click.Option(
            ["--param", "params"], multiple=True, metavar="NAME=VALUES",
            required=one,  # a grid's absence gets parse_params' own message
            help=("The parameter to vary and its values, e.g. 'C=logspace(-2,2,5)'." if one else
                  "e.g. 'C=logspace(-1,2,4)', 'clf__kernel=[\"rbf\",\"linear\"]', "
                  "'C=loguniform(1e-2,1e2)' (with --n-iter). Nested names for pipelines. "
                  "Repeatable."),
        ))
    if "param_grid" in kind.options:
        params.append(click.Option(
            ["--max-candidates"], type=click.IntRange(min=1), default=MAX_CANDIDATES,
            show_default=True, help="Refuse a grid (or --n-iter) of more candidates than this.",
        ))
    for name, param in {**kind.options, **kind.present_options}.items():
        if name in INPUTS:
            continue
        made = option(name, param, kind)
        if made is None:
            if param.default is inspect.Parameter.empty:
                raise TypeError(f"payload {kind.name!r}: option {name!r} has no command-line form")
            continue
        params.append(made)
    what = "file" if kind.output == "file" else "directory"
    params.append(click.Option(
        ["--out", "out_path"], type=click.Path(path_type=Path), metavar="PATH",
        help=f"Where the results go (a {what}; default under ./provision-results/)."
             + (" Re-running with the same one resumes from its journal." if
                "journal" in kind.options else ""),
    ))
    command = click.Command(
        kind.name, params=params, callback=partial(_run, kind),
        help=f"{kind.description[0].upper()}{kind.description[1:]}.\n\n"
             f"{(inspect.getdoc(kind.run) or '').split(chr(10) * 2)[0]}",
        short_help=kind.description,
    )
    return config_options(command)


def _model_default(kind: PayloadKind) -> str:
    if kind.models is None:
        return ""
    return f" Default: {kind.models[0]}, or {kind.models[1]} for a continuous target."


class KindGroup(click.Group):
    """One subcommand per registered payload kind, built when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(payload.kinds())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = payload.kinds().get(cmd_name)
        return build_command(found) if found is not None else None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and not args[0].startswith("-") and args[0] not in payload.kinds():
            close = difflib.get_close_matches(args[0], list(payload.kinds()), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise click.UsageError(
                f"unknown payload kind {args[0]!r} (known: {', '.join(payload.kinds())}){hint}",
                ctx,
            )
        return super().resolve_command(ctx, args)


@click.group(cls=KindGroup, subcommand_metavar="KIND [OPTIONS]")
@click.argument("name")
@click.pass_context
def run(ctx: click.Context, name: str) -> None:
    """Run a payload KIND on cluster NAME's engines, over data put there with put-data.

    Hands a connected ipyparallel Client to the payload, shows progress, prints
    the result and writes it under --out. `provision run NAME KIND --help`
    lists KIND's options.
    """
    ctx.obj = name


def _run(kind: PayloadKind, label: str, model: str | None, fixed: tuple[str, ...],
         out_path: Path | None, config_path: Path | None, template: str | None,
         params: Any = (), **flags: Any) -> None:
    name = click.get_current_context().obj
    limit = flags.pop("max_candidates", MAX_CANDIDATES)
    settings(config_path, template, name)
    entry = state.load(name).get("datasets", {}).get(label, {})
    spec = model or _default_model(kind, entry.get("target_type"))
    estimator = load_estimator(spec, parse_fixed(fixed))
    options = {k: v for k, v in flags.items() if v is not None}
    present_opts = {k: options.pop(k) for k in list(options) if k in kind.present_options}
    _convert(options)
    options["estimator"] = estimator
    options.update(_variations(kind, params, estimator, options, limit))
    options.update(_data_inputs(kind, name, label))
    suitability.check_data(estimator, entry, label, spec)  # before the journal's directory
    target = out_path or _default_out(kind, name, label, spec)
    (target if kind.output == "directory" else target.parent).mkdir(parents=True, exist_ok=True)
    if "journal" in kind.options:
        options["journal"] = target / "journal.jsonl"
    try:
        kind.check(options)
    except ValueError as e:
        raise BadInput(str(e)) from e
    if "journal" in options:
        _refuse_if_running(options["journal"])
    rc = lifecycle.connect(name)
    try:
        started = time.perf_counter()
        with progress.for_console(err) as reporter:
            result = run_payload(kind, rc, options, reporter, type(estimator).__name__)
        wall = time.perf_counter() - started
    finally:
        rc.close()
    present = kind.present or _show
    for line in present(result, target, **present_opts):
        if line:
            out.print(line, highlight=False)
    out.print(f"{kind.name}: {wall:.1f} s on {len(rc.ids)} engines", highlight=False)


def _refuse_if_running(journal: Path) -> None:
    """A second `run` of the same search (same --out) while the first still appends
    to its journal: one line now, before connecting. The journal's own lock (the
    payload's `flock`) is what keeps it safe; this says so plainly. Runs with
    different --out share the engines and each finish (the hub schedules both)."""
    if not journal.exists():
        return
    with open(journal, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProvisionError(
                f"--out {journal.parent}: another `provision run` is writing this search's "
                "journal; wait for it to finish (then run this again to resume), or give "
                "another --out"
            ) from None


def _show(result: Any, target: Path) -> list[str]:
    return [repr(result)]


def _default_model(kind: PayloadKind, target_type: str | None) -> str:
    if kind.models is None:
        raise BadInput(f"--model: {kind.name} has no default model; give one")
    return kind.models[1] if target_type in REGRESSION_TARGETS else kind.models[0]


def _convert(options: dict[str, Any]) -> None:
    """Flags whose text needs parsing or checking beyond their click type."""
    if "scoring" in options:
        from sklearn.metrics import get_scorer_names

        if options["scoring"] not in get_scorer_names():
            close = difflib.get_close_matches(options["scoring"], get_scorer_names(), n=4)
            hint = (f"; close ones: {', '.join(close)}" if close else
                    "; sklearn.metrics.get_scorer_names() lists them all")
            raise BadInput(f"--scoring: unknown scorer {options['scoring']!r}{hint}")
    if "train_sizes" in options:
        options["train_sizes"] = parse_train_sizes(options["train_sizes"])
    for key, value in options.items():
        if key in ("n_iter", "n_estimators", "n_tasks") and value < 1:
            raise BadInput(f"--{key.replace('_', '-')}: must be at least 1 (got {value})")
        if isinstance(value, str) and key not in ("scoring",):
            options[key] = _number_or_word(value)


def _number_or_word(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _variations(
    kind: PayloadKind, params: Any, estimator: Any, options: dict[str, Any],
    limit: int = MAX_CANDIDATES,
) -> dict[str, Any]:
    """``param_grid``, or ``param_name`` and ``param_range``, from ``--param``."""
    if "param_name" in kind.options:
        if len(params) != 1:
            raise BadInput(f"--param: {kind.name} varies one parameter (got {len(params)})")
        ((name, values),) = parse_params(list(params), estimator).items()
        if not isinstance(values, list):
            raise BadInput(f"--param {params[0]}: {kind.name} takes a list of values")
        return {"param_name": name, "param_range": values}
    if "param_grid" not in kind.options:
        return {}
    grid = parse_params(list(params), estimator)
    sampled = any(not isinstance(v, list) for v in grid.values())
    if sampled and options.get("n_iter") is None:
        raise BadInput("--param: distributions need --n-iter (randomized search)")
    from sklearn.model_selection import ParameterGrid

    n = options["n_iter"] if options.get("n_iter") is not None else len(ParameterGrid(grid))
    if n > limit:  # nothing is submitted: a typo in a range is not hours of fits
        what = "--n-iter asks for" if options.get("n_iter") is not None else "--param: the grid has"
        raise BadInput(f"{what} {n} candidates, more than --max-candidates {limit}; narrow it, "
                       "or raise --max-candidates")
    return {"param_grid": grid}


def _data_inputs(kind: PayloadKind, name: str, label: str) -> dict[str, Any]:
    """The data inputs the kind takes, from what put-data left on the cluster."""
    wanted = set(kind.options)
    if "split_paths" in wanted:
        return {"split_paths": data.split_paths(name, label)}
    if wanted & {"shard_paths", "test_path", "reference_data"}:
        found = partition.partition_inputs(name, label)
        return {k: v for k, v in found.items() if k in wanted}
    return {}


def _default_out(kind: PayloadKind, name: str, label: str, spec: str) -> Path:
    short = spec.replace(":", ".").rsplit(".", 1)[-1] or "model"
    base = Path("provision-results") / f"{name}-{kind.name}-{label}-{short}"
    return base.with_name(base.name + ".pkl") if kind.output == "file" else base


COMMANDS: tuple[Callable[..., Any], ...] = (run,)
