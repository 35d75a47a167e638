"""`provision run NAME KIND` as commands built from the payload registry, and the
bad input of `run` and `put-data` (exit 2, one line, nothing created), against
moto's EC2 with a cluster that does not exist: input is checked first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from test_bad_input import Case, case, ec2_client, keys

import payload
from payload import registry
from provision import lifecycle, state
from provision.cli import main
from provision.errors import BadInput
from provision.params import load_estimator

SHARED_FIXTURES = (case, keys)  # a cluster file and moto's EC2, as test_bad_input's cases use
PIPELINE = '''
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

def make_pipeline():
    return Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression())])

def broken():
    raise RuntimeError("no network here")
'''


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_exit_2(result: Any, *fragments: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    client = ec2_client()
    assert [i for r in client.describe_instances()["Reservations"] for i in r["Instances"]] == []


@pytest.mark.parametrize("kind", list(payload.kinds()))
def test_each_kind_is_a_command_listing_the_options_of_its_entry_point(kind):
    result = invoke("run", "any", kind, "--help")
    assert result.exit_code == 0, result.output
    entry = payload.kind(kind)
    for name in [*entry.options, *entry.present_options]:
        if name in ("estimator", "split_paths", "shard_paths", "test_path", "reference_data",
                    "param_grid", "param_name", "param_range", "journal", "progress"):
            continue
        flag = {"random_state": "--seed"}.get(name, f"--{name.replace('_', '-')}")
        assert flag in result.output, f"{flag} missing from `run NAME {kind} --help`"
    assert "--data LABEL" in result.output and "--model SPEC" in result.output


def test_seed_help_says_what_it_seeds_and_what_it_does_not():
    text = " ".join(invoke("run", "any", "gridsearch", "--help").output.split())
    assert "Seeds the sampling of candidates (--n-iter) and the shuffled order" in text
    assert "not the CV splits (put-data's --seed)" in text


@pytest.fixture
def toy_kind(monkeypatch):
    """A payload kind registered by the test alone: the CLI must run it unchanged."""
    calls: list[dict] = []

    def present(result: dict, out: Path, *, shout: bool = False) -> list[str]:
        line = f"toy ran with depth={result['depth']}"
        return [line.upper() if shout else line]

    def toy(client: Any, estimator: Any, split_paths: list[str], *, depth: int = 3,
            ratio: float | None = None, random_state: int | None = None,
            timeout: float | None = None) -> dict:
        calls.append({"estimator": estimator, "split_paths": split_paths, "depth": depth,
                      "ratio": ratio, "random_state": random_state, "timeout": timeout})
        return {"depth": depth}

    monkeypatch.setitem(registry._KINDS, "toy", registry.PayloadKind(
        "toy", toy, "a kind only this test knows", registry._keyword_options(toy, 1), present,
        "directory", {"depth": "How deep."}, ("sklearn.svm.SVC", "sklearn.svm.SVR"),
    ))
    return calls


class FakeClient:
    ids = [0, 1]

    def close(self) -> None:
        pass


def test_a_new_payload_kind_runs_from_the_cli_with_its_own_flags(case, toy_kind, monkeypatch,
                                                                 tmp_path):
    help_text = invoke("run", "unit", "toy", "--help").output
    assert "--depth INTEGER" in help_text and "How deep.  [default: 3]" in help_text
    assert "--shout / --no-shout" in help_text and "--ratio FLOAT" in help_text
    state.update("unit", datasets={"digits": {
        "layout": "splits", "remote_dir": "/srv/provision/data/abc", "files": ["s0", "s1"],
        "target_type": "continuous",
    }})
    monkeypatch.setattr(lifecycle, "connect", lambda name: FakeClient())
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "unit", "toy", "--data", "digits", "--depth", "5", "--shout",
                    "--set", "C=2.0", "--config", str(case.cfg))
    assert result.exit_code == 0, result.output
    assert "TOY RAN WITH DEPTH=5" in result.output and "toy: " in result.output
    (call,) = toy_kind
    assert call["split_paths"] == ["/srv/provision/data/abc/s0", "/srv/provision/data/abc/s1"]
    assert type(call["estimator"]).__name__ == "SVR"  # the default for a continuous target
    assert call["estimator"].C == 2.0 and call["ratio"] is None and call["timeout"] == 3600
    assert call["random_state"] == 0  # reproducible (and a randomized search resumable)
    assert (tmp_path / "provision-results" / "unit-toy-digits-SVR").is_dir()


def test_a_kind_with_an_option_the_command_line_cannot_type_is_refused(monkeypatch):
    from provision.cli.run import build_command

    def needs_callable(client: Any, estimator: Any, *, hook: Any) -> None:
        return None

    kind = registry.PayloadKind("hooked", needs_callable, "d",
                                registry._keyword_options(needs_callable, 1))
    with pytest.raises(TypeError, match="option 'hook' has no command-line form"):
        build_command(kind)


def test_models_come_from_a_file_a_factory_or_a_dotted_path(tmp_path, monkeypatch):
    (tmp_path / "pipeline.py").write_text(PIPELINE + "\nestimator = make_pipeline()\n")
    monkeypatch.chdir(tmp_path)
    made = load_estimator(f"{tmp_path}/pipeline.py:make_pipeline", {"clf__C": 3.0})
    assert [name for name, _ in made.steps] == ["tfidf", "clf"] and made.named_steps["clf"].C == 3
    assert type(load_estimator("pipeline.py")).__name__ == "Pipeline"  # module-level estimator
    assert type(load_estimator("pipeline:make_pipeline")).__name__ == "Pipeline"  # cwd module
    assert load_estimator("sklearn.svm.SVC", {"gamma": 0.1}).gamma == 0.1


def test_a_model_from_the_users_file_travels_by_value(tmp_path):
    """Engines do not have the user's file: its classes must pickle by value."""
    import cloudpickle

    (tmp_path / "custom.py").write_text(
        "from sklearn.base import BaseEstimator, ClassifierMixin\n"
        "class Majority(ClassifierMixin, BaseEstimator):\n"
        "    def fit(self, X, y):\n"
        "        import numpy as np\n"
        "        values, counts = np.unique(y, return_counts=True)\n"
        "        self.value_ = values[counts.argmax()]\n"
        "        return self\n"
        "    def predict(self, X):\n"
        "        return [self.value_] * len(X)\n"
        "estimator = Majority()\n"
    )
    blob = cloudpickle.dumps(load_estimator(f"{tmp_path}/custom.py"))
    elsewhere = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; m = pickle.loads(sys.stdin.buffer.read()); "
         "print(m.fit([[0], [1], [2]], [4, 4, 5]).predict([[9]]))"],
        input=blob, capture_output=True, cwd="/", check=True,
    )
    assert elsewhere.stdout.strip() == b"[np.int64(4)]"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{d}/nope.py", "--model: {d}/nope.py: no such file"),
        ("{d}/pipeline.py:make_pipline", "pipeline.py:make_pipline: provision_model_pipeline"),
        ("{d}/pipeline.py", "defines no module-level `estimator`"),
        ("{d}/pipeline.py:broken", "calling it failed (RuntimeError: no network here)"),
        ("nosuchmodule:make", "--model: cannot import nosuchmodule"),
    ],
)
def test_a_model_that_cannot_be_made_is_one_line(tmp_path, model, message):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    with pytest.raises(BadInput) as e:
        load_estimator(model.format(d=tmp_path))
    assert message.format(d=tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_a_misspelled_factory_gets_a_did_you_mean(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    with pytest.raises(BadInput, match="did you mean 'make_pipeline'"):
        load_estimator(f"{tmp_path}/pipeline.py:make_pipline")


def put(c: Case, dataset: str, *flags: str) -> list[str]:
    return ["put-data", "unit", dataset, "--config", str(c.cfg), *flags]


def run(c: Case, kind: str, *flags: str) -> list[str]:
    return ["run", "unit", kind, "--data", "digits", "--config", str(c.cfg), *flags]


def test_put_data_bad_splitter_flags_are_one_line(case):
    one_line_exit_2(invoke(*put(case, "digits", "--cv", "time-series", "--seed", "3")),
                    "--seed: does not apply to --cv time-series")
    one_line_exit_2(invoke(*put(case, "digits", "--cv", "group-kfold")),
                    "--cv group-kfold: needs group labels (--groups COLUMN)")
    one_line_exit_2(invoke(*put(case, "digits", "--cv", "kfolds")),
                    "--cv: unknown splitter 'kfolds'", "did you mean 'kfold'")
    one_line_exit_2(invoke(*put(case, "digits", "--partition", "--cv", "kfold")),
                    "--cv: does not apply with --partition")
    one_line_exit_2(invoke(*put(case, "digits", "--partition", "--n-splits", "3")),
                    "--n-splits: does not apply with --partition")


def test_put_data_groups_column_missing_or_data_unsplittable_is_one_line(case):
    csv = case.write("d.csv", "a,b,y\n1,2,0.5\n3,4,1.5\n5,6,2.5\n7,8,3.5\n")
    one_line_exit_2(invoke(*put(case, csv, "--cv", "group-kfold", "--groups", "user")),
                    "--groups:", "no group column 'user' (columns: a, b, y)")
    one_line_exit_2(invoke(*put(case, csv, "--cv", "stratified-kfold", "--n-splits", "2")),
                    "--cv: cannot split d with StratifiedKFold", "continuous")


def test_stratified_still_works_and_warns_what_to_use(case):
    result = invoke(*put(case, "iris", "--cv", "stratified"))
    assert "--cv stratified is deprecated" in result.output
    assert "use --cv stratified-kfold" in " ".join(result.output.split())
    assert result.exit_code == 2 and "has no running nodes" in result.output  # then: no cluster


def test_run_bad_input_is_one_line_and_names_the_flag(case, tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    pipe = f"{tmp_path}/pipeline.py:make_pipeline"
    one_line_exit_2(invoke(*run(case, "gridsearch", "--model", pipe, "--param", "clf__c=[1]")),
                    "--param clf__c=[1]: Pipeline has no parameter 'clf__c'",
                    "did you mean 'clf__C'")
    one_line_exit_2(invoke(*run(case, "gridsearch", "--model", pipe, "--set", "clff__C=2")),
                    "--set clff__C=2: Pipeline has no parameter", "did you mean 'clf__C'")
    one_line_exit_2(invoke(*run(case, "validation-curve", "--param", "C=[1]", "--param",
                                "gamma=[1]")), "--param: validation-curve varies one parameter")
    one_line_exit_2(invoke(*run(case, "learning-curve", "--train-sizes", "[0.5, 2.0]")),
                    "--train-sizes [0.5, 2.0]: fractions must be in (0, 1]")
    one_line_exit_2(invoke(*run(case, "forest", "--n-estimators", "0")),
                    "--n-estimators: must be at least 1 (got 0)")
    one_line_exit_2(invoke(*run(case, "forest", "--test-size", "0.2")),
                    "No such option '--test-size'")
    one_line_exit_2(invoke(*run(case, "gridserch")), "unknown payload kind 'gridserch'",
                    "did you mean 'gridsearch'")


def test_run_refuses_data_of_the_wrong_layout_for_the_kind(case):
    state.update("unit", datasets={
        "digits": {"layout": "splits", "remote_dir": "/d", "files": ["a"]},
        "rows": {"layout": "partition", "remote_dir": "/p", "files": ["t"], "shards": {}},
    })
    one_line_exit_2(invoke(*run(case, "sgd-average")),
                    "--data: 'digits' holds CV splits", "put-data unit DATASET --partition")
    args = run(case, "forest")
    args[args.index("digits")] = "rows"
    one_line_exit_2(invoke(*args), "--data: 'rows' is partitioned (put-data --partition)")


def test_partition_cuts_stratified_shards_and_keeps_a_held_out_part(tmp_path, monkeypatch):
    from provision.datasets import Dataset

    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path))
    from provision.partition import persist_partition

    y = np.repeat([0, 1, 2], 40)
    local, digest, shards, _ = persist_partition(
        Dataset(np.arange(240.0).reshape(120, 2), y, None, "d"), 3, 0.25, 0
    )
    parts = [joblib.load(local / s) for s in shards]
    X_test, y_test = joblib.load(local / "test.joblib")
    assert [len(p[1]) for p in parts] == [30, 30, 30] and len(y_test) == 30
    assert all(sorted(set(p[1])) == [0, 1, 2] for p in parts)  # every shard sees every class
    rows = np.concatenate([p[0][:, 0] for p in parts] + [X_test[:, 0]])
    assert sorted(rows) == list(np.arange(0.0, 240.0, 2.0)) and local.name == digest


def test_the_memory_table_shows_free_memory_per_host_and_per_engine():
    from rich.console import Console

    from payload import HostMemory
    from provision.cli import tables

    console = Console(width=120, record=True)
    host = HostMemory("ip-10-84-0-4", total=2 * 2**30, available=2**30, engines=(0, 3),
                      engines_rss=300 * 2**20)
    console.print(tables.host_memory("memory per host, cluster c", [host]))
    row = next(line for line in console.export_text().splitlines() if "ip-10-84-0-4" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == ["ip-10-84-0-4", "0, 3", "2,048 MiB", "1,024 MiB", "512 MiB", "300 MiB"]


def test_a_second_run_of_the_same_search_refuses_in_one_line_while_the_first_writes_its_journal(
    case, monkeypatch, tmp_path
):
    """The first run is another process holding the journal open (the payload's
    Journal, with its lock); the second refuses before connecting to the cluster."""
    state.update("unit", datasets={"digits": {
        "layout": "splits", "remote_dir": "/srv/provision/data/abc", "files": ["s0", "s1"],
        "target_type": "multiclass",
    }})
    out = tmp_path / "search"
    journal = out / "journal.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from payload.journal import Journal; "
         "j, _ = Journal.open(sys.argv[1], {'key': 'k'}); print('held', flush=True); "
         "sys.stdin.read()", str(journal)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]

        def connect(name: str) -> Any:
            raise AssertionError("the second run connected to the cluster")

        monkeypatch.setattr(lifecycle, "connect", connect)
        args = ("run", "unit", "gridsearch", "--data", "digits", "--param", "C=[1]",
                "--out", str(out), "--config", str(case.cfg))
        result = invoke(*args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert f"--out {out}: another `provision run` is writing this search's journal" in lines[0]
    finally:
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(timeout=30)
    after = invoke(*args).output  # released: it goes on, to connect
    assert "the second run connected" in after and "another `provision run`" not in after
