"""Commands on data and runs: put-data (here) and run (`provision.cli.run`)."""

from __future__ import annotations

from pathlib import Path

import click

from provision import context, data, partition, progress, splitters, suitability
from provision.cli.common import config_options, err, out, settings
from provision.cli.run import run
from provision.errors import BadInput
from provision.schema import ClusterConfig

CV_HELP = (
    "The scikit-learn splitter: " + ", ".join(splitters.SPLITTERS) + " (`stratified`, the old "
    "name of stratified-shuffle, still works). The k-fold splitters shuffle unless --no-shuffle."
)


@click.command(name="put-data")
@click.argument("name")
@click.argument("dataset")
@click.option("--cv", default="shuffle", show_default=True, metavar="SPLITTER", help=CV_HELP)
@click.option("--n-splits", type=int, help="Splits (folds) [default: 5].")
@click.option("--n-repeats", type=int,
              help="repeated-kfold, repeated-stratified-kfold: rounds [default: 10, sklearn's].")
@click.option("--test-size", type=float,
              help="shuffle splitters: a fraction [default: 0.25] or a number of rows; "
                   "time-series: rows; --partition: the held-out fraction [default: 0.2].")
@click.option("--seed", type=int,
              help="Seeds the splitter's shuffling [default: 42]; with --partition, the "
                   "held-out draw and the shards.")
@click.option("--shuffle/--no-shuffle", default=None,
              help="k-fold splitters: shuffle the rows before cutting folds [default: shuffle].")
@click.option("--groups", metavar="COLUMN",
              help="Group labels for the group-* splitters: a .csv column, an .npz array, "
                   "or a .npy file.")
@click.option("--target", metavar="COLUMN[,COLUMN...]",
              help="Target column(s) of a .csv (default: the last); several make a "
                   "multi-output y.")
@click.option("--label", help="The dataset's name on the cluster, for run --data "
                              "(default: the file's stem or the built-in name).")
@click.option("--partition", is_flag=True,
              help="Instead of CV splits: hold out --test-size of the rows for every host and "
                   "cut the rest into one shard per host, each host holding its own only "
                   "(for `run NAME sgd-average`).")
@config_options
def put_data(
    name: str,
    dataset: str,
    cv: str,
    n_splits: int | None,
    n_repeats: int | None,
    test_size: float | None,
    seed: int | None,
    shuffle: bool | None,
    groups: str | None,
    target: str | None,
    label: str | None,
    partition: bool,
    config_path: Path | None,
    template: str | None,
) -> None:
    """Persist DATASET's CV splits (memmappable) and ship them once to every host.

    DATASET is a scikit-learn dataset (digits, iris, wine, breast_cancer) or a
    file: .npz with X and y, X.npy,y.npy, .csv with a header (numeric columns,
    or one text column for a text pipeline), or a joblib dump of (X, y). y may
    be 2-D (multi-output). A second run moves no bytes.
    """
    cfg = settings(config_path, template, name)
    source = click.get_current_context().get_parameter_source("cv")
    if partition:
        _put_partition(cfg, dataset, cv_given=source != click.core.ParameterSource.DEFAULT,
                       flags={"--n-splits": n_splits, "--n-repeats": n_repeats,
                              "--shuffle/--no-shuffle": shuffle, "--groups": groups},
                       test_size=test_size, seed=seed, target=target, label=label)
        return
    _, warning = splitters.canonical(cv)
    if warning:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    ready = data.plan(  # bad input fails here, before any work
        dataset, cv, n_splits=n_splits, n_repeats=n_repeats, test_size=test_size, seed=seed,
        shuffle=shuffle, groups=groups, target=target, label=label,
    )
    for message in ready.warnings:
        err.print(f"[yellow]warning:[/] --cv {cv}: {message}", highlight=False)
    _warn_nan(ready.dataset)
    with progress.for_console(err) as reporter:
        ctx = context.prepare(cfg, reporter)
        result = data.put_data(ctx, ready)
    out.print(f"{ready.dataset.label}: {len(result.remote_paths)} splits "
              f"({splitters.describe(ready.cv)}) in {result.remote_dir} on "
              f"{len(result.bytes_per_host)} host(s); moved {result.bytes_moved / 1e6:.2f} MB "
              f"(laptop link {result.laptop_bytes / 1e6:.2f} MB, cluster network "
              f"{result.cluster_bytes / 1e6:.2f} MB)", highlight=False)


def _put_partition(cfg: ClusterConfig, dataset: str, *, cv_given: bool, flags: dict[str, object],
                   test_size: float | None, seed: int | None, target: str | None,
                   label: str | None) -> None:
    given = [flag for flag, value in flags.items() if value is not None]
    if cv_given:
        given.insert(0, "--cv")
    if given:
        raise BadInput(f"{given[0]}: does not apply with --partition (it takes --test-size, "
                       "--seed, --target, --label)")
    loaded = data.load_dataset(dataset, target, None, label)  # bad input fails before any work
    _warn_nan(loaded)
    split = splitters.fraction_or_rows(partition.DEFAULT_TEST_SIZE if test_size is None
                                       else test_size)
    with progress.for_console(err) as reporter:
        ctx = context.prepare(cfg, reporter)
        result = partition.put_partition(ctx, loaded, test_size=split,
                                         seed=42 if seed is None else seed)
    shards = ", ".join(f"{node} {shard}" for node, shard in sorted(result.shards.items()))
    out.print(f"{loaded.label}: {len(result.shards)} shards and a held-out part in "
              f"{result.remote_dir}, each host its own shard ({shards}); moved "
              f"{result.bytes_moved / 1e6:.2f} MB", highlight=False)


def _warn_nan(loaded: data.Dataset) -> None:
    """NaN in X is put (some models take it); `run` refuses a model that does not."""
    facts = loaded.nonfinite()
    if facts["x_nan"]:
        columns = ", ".join(facts["x_nan_columns"])
        err.print(f"[yellow]warning:[/] {loaded.label}: X has {facts['x_nan']} NaN value(s) "
                  f"(column(s) {columns}): only a model that takes NaN "
                  f"({suitability.NAN_TAKERS}) can run on it", highlight=False)


COMMANDS = (put_data, run)
