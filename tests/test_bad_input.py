"""A corpus of bad input, each through the CLI against moto's EC2.

Configs, flags, datasets for `put-data` and parameter specs for `run`: every
case exits 2 with exactly one line that names the field, flag or file and the
problem, no traceback, and nothing created in the region. `put-data` and `run`
are pointed at a cluster that does not exist: their input must be checked
before anything else happens.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import offline_aws_env
from moto import mock_aws
from test_cli import CONFIG, nothing_created

from provision import state
from provision.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass
class Case:
    """One user's session: a cluster file, a key and somewhere to put data files."""

    dir: Path
    cfg: Path
    key: Path

    def edit(self, old: str, new: str) -> Path:
        text = self.cfg.read_text()
        assert old in text, old
        self.cfg.write_text(text.replace(old, new, 1))
        return self.cfg

    def npz(self, **arrays: Any) -> str:
        path = self.dir / "data.npz"
        np.savez(path, **arrays)
        return str(path)

    def write(self, name: str, content: str | bytes) -> str:
        path = self.dir / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)


@functools.cache
def ec2_client() -> Any:
    """One client for the module's checks: building one costs ~0.1 s, more than a case."""
    return boto3.client("ec2", region_name="us-east-1")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture
def case(
    tmp_path: Path, keys: Path, moto_amis: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Case]:
    offline_aws_env(monkeypatch, tmp_path)
    monkeypatch.delenv("PROVISION_TEST_UNSET", raising=False)
    key = tmp_path / "id_ed25519"  # a copy per case: some cases break it
    for suffix in ("", ".pub"):
        Path(f"{key}{suffix}").write_bytes(Path(f"{keys}{suffix}").read_bytes())
    os.chmod(key, 0o600)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(CONFIG.format(key=key))
    # Keep boto3's session: a new one re-reads EC2's service model on every test.
    core = {"reset_boto3_session": False, "mock_credentials": False, "service_whitelist": None,
            "passthrough": {"urls": [], "services": []}}
    with mock_aws(config={"core": core}):
        yield Case(tmp_path, cfg, key)


Args = Callable[[Case], list[str]]


def up(*flags: str) -> Args:
    return lambda c: ["up", "--config", str(c.cfg), *flags]


def config(old: str, new: str, *flags: str) -> Args:
    return lambda c: ["up", "--config", str(c.edit(old, new)), *flags]


def put_data(dataset: Callable[[Case], str], *flags: str) -> Args:
    return lambda c: ["put-data", "unit", dataset(c), "--config", str(c.cfg), *flags]


def run(*flags: str) -> Args:
    return lambda c: [
        "run",
        "unit",
        "gridsearch",
        "--data",
        "digits",
        "--config",
        str(c.cfg),
        *flags,
    ]


def model(spec: str, *expected: str) -> tuple[Args, tuple[str, ...]]:
    """A `--model` case: its one line names the flag, the spec, and says `expected`."""
    return run("--model", spec, "--param", "C=[1]"), ("--model", spec, *expected)


def unreadable_key(c: Case) -> list[str]:
    os.chmod(c.key, 0o644)
    return up()(c)


def no_public_key(c: Case) -> list[str]:
    Path(f"{c.key}.pub").unlink()
    return up()(c)


def extends_cycle(c: Case) -> list[str]:
    c.edit("    spot_bid: 0.10\n", "    spot_bid: 0.10\n    extends: base\n")
    c.edit("clusters:\n", "clusters:\n  base:\n    extends: aws\n")
    return up()(c)


def csv(c: Case) -> str:
    return c.write("data.csv", "a,b,y\n1,2,0\n3,4,1\n5,6,0\n")


def dump(X: Any, y: Any) -> Callable[[Case], str]:
    return lambda c: (joblib.dump((X, y), c.dir / "xy.joblib"), str(c.dir / "xy.joblib"))[1]


def npy_pair(X: Any, y: Any) -> Callable[[Case], str]:
    def write(c: Case) -> str:
        np.save(c.dir / "X.npy", X)
        np.save(c.dir / "y.npy", y)
        return f"{c.dir / 'X.npy'},{c.dir / 'y.npy'}"
    return write


HOLES = {"layout": "splits", "remote_dir": "/srv/provision/data/abc", "files": ["s0", "s1"],
         "target_type": "binary", "n_samples": 10, "n_features": 2, "x_nan": 3,
         "x_nan_columns": ["age"]}


def run_on_nan_data(*flags: str) -> Args:
    """`run` on a dataset put-data recorded with NaN in X (the cluster need not exist:
    the model is refused before anything is contacted)."""
    def args(c: Case) -> list[str]:
        state.update("unit", datasets={"holes": HOLES})
        return ["run", "unit", "gridsearch", "--data", "holes", "--config", str(c.cfg), *flags]
    return args


# A scaler takes NaN and passes it on: the SVC after it would fail every fit.
SCALED = """
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

estimator = make_pipeline(StandardScaler(), SVC())
"""


X = np.arange(20.0).reshape(10, 2)
Y = np.array([0, 1] * 5)

CASES: dict[str, tuple[Args, tuple[str, ...]]] = {
    # --- cluster files -------------------------------------------------------
    "yaml-syntax-error": (
        config("cluster_size: 3", "cluster_size: [3"),
        ("cluster.yaml: line", "YAML syntax error"),
    ),
    "unknown-top-level-key": (
        config("default: aws", "defualt: aws"),
        ("defualt: unknown key", "did you mean 'default'"),
    ),
    "unknown-cluster-key": (
        config("cluster_size:", "clustr_size:"),
        ("clusters.aws.clustr_size: unknown key", "did you mean 'cluster_size'"),
    ),
    "size-not-a-number": (
        config("cluster_size: 3", 'cluster_size: "three"'),
        ("clusters.aws.cluster_size", "integer", "'three'"),
    ),
    "size-zero": (
        config("cluster_size: 3", "cluster_size: 0"),
        ("clusters.aws.cluster_size", ">= 1"),
    ),
    "size-absurd": (
        config("cluster_size: 3", "cluster_size: 1000"),
        ("clusters.aws.cluster_size", "<= 100"),
    ),
    "bid-negative": (
        config("spot_bid: 0.10", "spot_bid: -3"),
        ("clusters.aws.spot_bid", "positive", "-3"),
    ),
    "bid-zero": (config("spot_bid: 0.10", "spot_bid: 0"), ("clusters.aws.spot_bid", "positive")),
    "bid-absurd": (
        config("spot_bid: 0.10", "spot_bid: 1000"),
        ("clusters.aws.spot_bid", "below 100", "1000"),
    ),
    "type-m5": (
        config("c5.large", "m5.large"),
        ("clusters.aws.instance_type", "c-family", "m5.large"),
    ),
    "type-t3": (
        config("c5.large", "t3.micro"),
        ("clusters.aws.instance_type", "c-family", "t3.micro"),
    ),
    "type-r6i": (
        config("c5.large", "r6i.xlarge"),
        ("clusters.aws.instance_type", "c-family", "r6i.xlarge"),
    ),
    "type-not-in-region": (
        config("c5.large", "c5.enormous"),
        ("c5.enormous", "not offered in us-east-1"),
    ),
    "subnet-id-not-an-id": (
        config("spot_bid: 0.10", "spot_bid: 0.10\n    subnet_id: my-subnet"),
        ("clusters.aws.subnet_id", "subnet id like", "my-subnet"),
    ),
    "subnet-id-unknown": (
        config("spot_bid: 0.10", "spot_bid: 0.10\n    subnet_id: subnet-0123456789abcdef0"),
        ("subnet_id subnet-0123456789abcdef0 does not exist in us-east-1",),
    ),
    "vpc-id-not-an-id": (
        config("spot_bid: 0.10", "spot_bid: 0.10\n    vpc_id: default"),
        ("clusters.aws.vpc_id", "VPC id like", "'default'"),
    ),
    "vpc-id-unknown": (
        config("spot_bid: 0.10", "spot_bid: 0.10\n    vpc_id: vpc-0123456789abcdef0"),
        ("vpc_id vpc-0123456789abcdef0 does not exist in us-east-1",),
    ),
    "public-ip-not-a-boolean": (
        config("spot_bid: 0.10", "spot_bid: 0.10\n    public_ip: sometimes"),
        ("clusters.aws.public_ip", "boolean", "'sometimes'"),
    ),
    "user-not-a-login-name": (
        config("spot_bid: 0.10", "spot_bid: 0.10\n    user: Ubuntu User"),
        ("clusters.aws.user", "login name", "'Ubuntu User'"),
    ),
    "key-missing": (
        config("key_path: ", "key_path: /nonexistent/"),
        ("clusters.aws.key_path", "does not exist"),
    ),
    "key-readable-by-others": (
        unreadable_key,
        ("clusters.aws.key_path", "readable by others", "chmod 600"),
    ),
    "public-key-missing": (
        no_public_key,
        ("clusters.aws.key_path", "id_ed25519.pub", "does not exist"),
    ),
    "extends-cycle": (extends_cycle, ("clusters.base.extends", "cycle aws -> base -> aws")),
    "extends-missing-template": (
        config("    spot_bid: 0.10\n", "    spot_bid: 0.10\n    extends: base\n"),
        ("clusters.aws.extends", "unknown template 'base'"),
    ),
    "template-unknown": (
        up("--template", "awz"),
        ("--template", "unknown template 'awz'", "did you mean 'aws'"),
    ),
    "default-unknown": (
        config("default: aws", "default: small"),
        ("default: unknown template 'small'",),
    ),
    "jinja-syntax-error": (
        config("region: us-east-1", "region: {{ nope( }}"),
        ("cluster.yaml: line 4", "template syntax error"),
    ),
    "jinja-undefined-env": (
        config("region: us-east-1", "region: {{ env.PROVISION_TEST_UNSET }}"),
        ("line 4", "environment variable PROVISION_TEST_UNSET is not set"),
    ),
    "jinja-undefined-name": (
        config("region: us-east-1", "region: {{ regoin }}"),
        ("line 4", "'regoin' is undefined"),
    ),
    "cidr-invalid": (
        config("203.0.113.7/32", "999.1.1.1/40"),
        ("clusters.aws.ssh_cidr", "CIDR", "999.1.1.1/40"),
    ),
    "region-invalid": (
        config("region: us-east-1", "region: moon-base"),
        ("clusters.aws.region", "moon-base"),
    ),
    "zone-of-another-region": (
        config("    name: unit\n", "    name: unit\n    zone: eu-west-1a\n"),
        ("clusters.aws.zone", "us-east-1"),
    ),
    "remote-root-relative": (
        config("    name: unit\n", "    name: unit\n    remote_root: srv/provision\n"),
        ("clusters.aws.remote_root", "absolute"),
    ),
    "engines-per-node-zero": (
        config("    name: unit\n", "    name: unit\n    engines_per_node: 0\n"),
        ("clusters.aws.engines_per_node", ">= 1"),
    ),
    "volume-too-small": (
        config("    name: unit\n", "    name: unit\n    volume_size: 2\n"),
        ("clusters.aws.volume_size", ">= 8"),
    ),
    "name-invalid": (config("name: unit", "name: Unit_1"), ("clusters.aws.name", "'Unit_1'")),
    "config-file-missing": (
        lambda c: ["up", "--config", str(c.dir / "nope.yaml")],
        ("nope.yaml", "not found"),
    ),
    # --- flags ----------------------------------------------------------------
    "flag-bid-not-a-number": (
        up("--spot-bid", "abc"),
        ("--spot-bid", "'abc'", "not a valid float"),
    ),
    "flag-bid-negative": (up("--spot-bid", "-1"), ("--spot-bid", "positive")),
    "flag-size-zero": (up("-n", "0"), ("--cluster-size", ">= 1")),
    "flag-size-negative": (up("-n", "-2"), ("--cluster-size", "-2")),
    "flag-name-upper": (up("--name", "UPPER"), ("--name", "'UPPER'")),
    "flag-type-m5": (up("--instance-type", "m5.large"), ("--instance-type", "c-family")),
    "flag-unknown": (up("--spot-price", "0.1"), ("--spot-price", "No such option")),
    "flag-value-missing": (up("--spot-bid"), ("--spot-bid", "requires an argument")),
    "addnode-zero": (
        lambda c: ["addnode", "unit", "-n", "0", "--config", str(c.cfg)],
        ("-n", "at least 1"),
    ),
    "down-without-yes": (
        lambda c: ["down", "unit", "--config", str(c.cfg)],
        ("--yes", "no terminal"),
    ),
    "put-data-cv-unknown": (put_data(lambda c: "digits", "--cv", "bogus"), ("--cv", "'bogus'")),
    "put-data-test-size": (
        put_data(lambda c: "digits", "--test-size", "1.5"),
        ("--test-size", "between 0 and 1", "1.5"),
    ),
    "put-data-n-splits": (
        put_data(lambda c: "digits", "--n-splits", "0"),
        ("--n-splits", "too small"),
    ),
    "run-kind-unknown": (
        lambda c: ["run", "unit", "gridserch", "--data", "digits"],
        ("'gridserch'", "gridsearch"),
    ),
    # --- datasets ---------------------------------------------------------------
    "data-missing-file": (
        put_data(lambda c: str(c.dir / "nope.npz")),
        ("nope.npz", "no such file"),
    ),
    "data-unknown-dataset": (
        put_data(lambda c: "digitz"),
        ("digitz", "no such file or dataset", "digits"),
    ),
    "data-unknown-format": (
        put_data(lambda c: c.write("data.txt", "1 2 3\n")),
        ("data.txt", "unknown data format .txt"),
    ),
    "data-npz-without-y": (put_data(lambda c: c.npz(X=X)), ("data.npz", "missing array(s) y")),
    "data-x-1d": (
        put_data(lambda c: c.npz(X=np.arange(10.0), y=Y)),
        ("data.npz", "X must be 2-D", "(10,)"),
    ),
    "data-y-3d": (
        put_data(lambda c: c.npz(X=X, y=np.zeros((10, 2, 2)))),
        ("data.npz", "y must be 1-D, or 2-D", "(10, 2, 2)"),
    ),
    "data-nan-in-y": (
        put_data(lambda c: c.npz(X=X, y=np.where(Y == 1, np.nan, 0.0))),
        ("data.npz", "y contains 5 NaN"),
    ),
    "data-lengths-differ": (
        put_data(lambda c: c.npz(X=X, y=Y[:9])),
        ("data.npz", "X has 10 rows but y has 9"),
    ),
    "data-npy-pair-missing-y": (
        put_data(lambda c: f"{c.write('X.npy', b'')},{c.dir / 'y.npy'}"),
        ("y.npy", "no such file"),
    ),
    "data-joblib-corrupt": (
        put_data(lambda c: c.write("data.joblib", b"not a pickle at all")),
        ("data.joblib", "cannot read"),
    ),
    "data-joblib-not-a-pair": (
        put_data(lambda c: (joblib.dump(X, c.dir / "x.joblib"), str(c.dir / "x.joblib"))[1]),
        ("x.joblib", "expected a joblib dump of (X, y)"),
    ),
    "data-csv-unknown-target": (
        put_data(csv, "--target", "label"),
        ("data.csv", "no target column 'label'"),
    ),
    "data-inf-in-x": (
        put_data(lambda c: c.npz(X=np.where(X == 3.0, np.inf, X), y=Y)),
        ("data.npz", "X contains 1 inf value(s)", "column(s) 1", "even where NaN is allowed"),
    ),
    "data-inf-in-csv-column": (
        put_data(lambda c: c.write("data.csv", "age,height,y\n1,inf,0\n3,4,1\n5,-inf,0\n")),
        ("data.csv", "X contains 2 inf value(s)", "column(s) height"),
    ),
    "data-inf-in-y": (
        put_data(lambda c: c.npz(X=X, y=np.where(Y == 1, np.inf, 0.0))),
        ("data.npz", "y contains 5 inf value(s)"),
    ),
    "data-object-dtype-x": (
        put_data(dump(np.array([[1.0, "red"]] * 5 + [[2.0, "blue"]] * 5, dtype=object), Y)),
        ("xy.joblib", "X has dtype object", "column 1 holds str values such as 'red'"),
    ),
    "data-object-dtype-x-dates": (
        put_data(dump(np.array([[1.0, date(2026, 11, 29)]] * 10, dtype=object), Y)),
        ("xy.joblib", "X has dtype object", "column 1 holds date values such as datetime.date("),
    ),
    "data-string-matrix": (
        put_data(npy_pair(np.array([["a", "b"]] * 10), Y)),
        ("X.npy", "X has dtype <U1", "column 0 holds str values such as 'a'"),
    ),
    "data-no-samples": (
        put_data(lambda c: c.npz(X=np.zeros((0, 2)), y=np.zeros(0))),
        ("data.npz", "no samples", "(0, 2)"),
    ),
    "data-no-features": (
        put_data(lambda c: c.npz(X=np.zeros((10, 0)), y=Y)),
        ("data.npz", "X has no features", "(10, 0)"),
    ),
    "data-lengths-differ-npy-pair": (
        put_data(npy_pair(X, Y[:7])),
        ("X.npy", "X has 10 rows but y has 7"),
    ),
    "data-lengths-differ-joblib": (
        put_data(dump(X[:4], Y)),
        ("xy.joblib", "X has 4 rows but y has 10"),
    ),
    "data-csv-not-numeric": (
        put_data(lambda c: c.write("data.csv", "a,b,y\n1,2,0\nabc,3,1\n")),
        ("data.csv", "non-numeric", "abc"),
    ),
    # --- parameter specs -----------------------------------------------------------
    "model-unknown-module": model("sklearn.nope.SVC", "No module"),
    "model-unknown-class": model("sklearn.svm.SVD", "did you mean"),
    "model-not-an-estimator": model("collections.OrderedDict", "not a scikit-learn estimator"),
    "model-a-function": model("math.sqrt", "not a scikit-learn estimator", "needs x"),
    "model-a-module": model("sklearn.svm", "not a scikit-learn estimator but a module",
                            "e.g. sklearn.svm."),
    "model-module-does-not-import": model("no_such_package.Model",
                                          "cannot import no_such_package.Model"),
    "model-file-fails-to-import": (
        lambda c: run("--model", c.write("broken.py", "import no_such_module\n"),
                      "--param", "C=[1]")(c),
        ("--model", "broken.py", "ModuleNotFoundError"),
    ),
    "model-takes-no-nan": (
        run_on_nan_data("--param", "C=[1]"),
        ("--model sklearn.svm.SVC: SVC does not take NaN", "'holes' has 3 NaN value(s) in X",
         "column(s) age", "HistGradientBoosting"),
    ),
    "pipeline-scales-nan-into-svc": (
        lambda c: run_on_nan_data(
            "--model", c.write("scaled.py", SCALED), "--param", "svc__C=[1]")(c),
        ("--model", "scaled.py", "Pipeline does not take NaN", "3 NaN"),
    ),
    "model-not-dotted": (run("--model", "SVC", "--param", "C=[1]"), ("--model", "dotted path")),
    "param-unknown": (
        run("--param", "gama=[0.1]"),
        ("--param gama=[0.1]", "SVC has no parameter 'gama'", "did you mean 'gamma'"),
    ),
    "param-empty-grid": (run("--param", "C=[]"), ("--param C=[]", "empty")),
    "param-unparseable": (run("--param", "C=logspace("), ("--param C=logspace(", "cannot parse")),
    "param-unknown-function": (
        run("--param", "C=exp(3)"),
        ("--param C=exp(3)", "unknown function 'exp'"),
    ),
    "param-bad-arguments": (run("--param", "C=logspace(1)"), ("--param C=logspace(1)", "logspace")),
    "param-not-name-equals-values": (run("--param", "C"), ("--param C", "NAME=VALUES")),
    "param-markup-like": (
        run("--param", "kernel=[/rbf]"),
        ("--param kernel=[/rbf]", "cannot parse"),
    ),
    "param-none": (run(), ("--param", "at least one")),
    "param-distribution-without-n-iter": (
        run("--param", "C=loguniform(1e-2,1e2)"),
        ("--n-iter", "distributions"),
    ),
    "n-iter-zero": (run("--param", "C=[1,10]", "--n-iter", "0"), ("--n-iter", "at least 1")),
    "scoring-unknown": (
        run("--param", "C=[1]", "--scoring", "acuracy"),
        ("--scoring", "'acuracy'", "close ones: accuracy, "),
    ),
    "scoring-nothing-close": (
        run("--param", "C=[1]", "--scoring", "zzz"),
        ("--scoring: unknown scorer 'zzz'", "get_scorer_names()"),
    ),
    "param-negative-count": (
        run("--param", "C=linspace(1,2,-1)"),
        ("--param C=linspace(1,2,-1)", "non-negative"),
    ),
    "param-distribution-bad-arguments": (
        run("--param", "C=loguniform(1)", "--n-iter", "5"),
        ("--param C=loguniform(1)", "missing"),
    ),
    "param-unhashable-literal": (
        run("--param", "C={[1]: 2}"),
        ("--param C={[1]: 2}", "not a literal value"),
    ),
    "grid-over-max-candidates": (
        run("--param", "C=logspace(-3,3,400)", "--param", "gamma=logspace(-3,3,400)"),
        ("--param: the grid has 160000 candidates", "--max-candidates 100000"),
    ),
    "n-iter-over-max-candidates": (
        run("--param", "C=loguniform(1e-2,1e2)", "--n-iter", "20", "--max-candidates", "10"),
        ("--n-iter asks for 20 candidates", "--max-candidates 10"),
    ),
    "set-without-value": (
        run("--param", "C=[1]", "--set", "kernel"),
        ("--set kernel", "NAME=VALUE"),
    ),
    "set-not-a-literal": (
        run("--param", "C=[1]", "--set", "kernel=rbf"),
        ("--set kernel=rbf", "not a literal value"),
    ),
}


def test_the_corpus_holds_as_many_cases_as_the_readme_says():
    said = re.search(r"\*\*Bad input\*\* \((\d+) cases", README.read_text())
    assert said, "README: the bad-input guarantee no longer says how many cases"
    assert len(CASES) == int(said.group(1))


def state_files() -> dict[Path, bytes]:
    root = Path(os.environ["PROVISION_STATE_DIR"])
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_naming_it_and_creates_nothing(case, name):
    args, expected = CASES[name]
    argv = args(case)
    given = state_files()  # a record the case needs (a dataset put before `run`)
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in expected:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert state_files() == given, "the command changed the local state"
    for path in given:
        path.unlink()
    nothing_created(ec2_client())  # and no journal or results: nothing under the cwd either
    assert not Path("provision-results").exists()
