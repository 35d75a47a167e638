"""What put-data accepts before anything ships: every scikit-learn splitter by name
with the flags it takes, text X and multi-output y, group labels, and data that
cannot be split refused as bad input. Fast: no cluster."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import model_selection as ms

from provision import data, splitters
from provision.datasets import load_dataset
from provision.errors import BadInput

X = np.arange(60.0).reshape(30, 2)
Y = np.array([0, 1, 2] * 10)
G = np.repeat(np.arange(6), 5)


@pytest.mark.parametrize(
    ("name", "flags", "expected"),
    [
        ("kfold", {}, ms.KFold(5, shuffle=True, random_state=42)),
        ("kfold", {"n_splits": 3, "shuffle": False}, ms.KFold(3)),
        ("stratified-kfold", {"seed": 7}, ms.StratifiedKFold(5, shuffle=True, random_state=7)),
        ("group-kfold", {"n_splits": 3, "shuffle": False}, ms.GroupKFold(3)),
        ("stratified-group-kfold", {"n_splits": 2},
         ms.StratifiedGroupKFold(2, shuffle=True, random_state=42)),
        ("time-series", {"n_splits": 4, "test_size": 3}, ms.TimeSeriesSplit(4, test_size=3)),
        ("repeated-kfold", {"n_repeats": 2}, ms.RepeatedKFold(n_splits=5, n_repeats=2,
                                                             random_state=42)),
        ("repeated-stratified-kfold", {"n_splits": 3, "n_repeats": 2},
         ms.RepeatedStratifiedKFold(n_splits=3, n_repeats=2, random_state=42)),
        ("shuffle", {}, ms.ShuffleSplit(5, test_size=0.25, random_state=42)),
        ("shuffle", {"test_size": 6}, ms.ShuffleSplit(5, test_size=6, random_state=42)),
        ("stratified-shuffle", {"n_splits": 2},
         ms.StratifiedShuffleSplit(2, test_size=0.25, random_state=42)),
        ("group-shuffle", {"n_splits": 2}, ms.GroupShuffleSplit(2, test_size=0.25,
                                                                random_state=42)),
        ("leave-one-group-out", {}, ms.LeaveOneGroupOut()),
    ],
)
def test_each_splitter_name_makes_sklearns_splitter_with_its_flags(name, flags, expected):
    groups = name in splitters.GROUPED
    made = data.make_cv(name, flags.get("n_splits"), flags.get("test_size"), flags.get("seed"),
                        n_repeats=flags.get("n_repeats"), shuffle=flags.get("shuffle"),
                        groups=groups)
    assert repr(made) == repr(expected)
    ready = data.plan((X, Y), made, groups=G if groups else None)
    want = list(expected.split(X, Y, G if groups else None))
    assert len(ready.splits) == len(want)
    for (train, test), (want_train, want_test) in zip(ready.splits, want, strict=True):
        np.testing.assert_array_equal(train, want_train)
        np.testing.assert_array_equal(test, want_test)


@pytest.mark.parametrize(
    ("name", "flags", "message"),
    [
        ("time-series", {"seed": 1}, "--seed: does not apply to --cv time-series"),
        ("kfold", {"test_size": 0.2}, "--test-size: does not apply to --cv kfold (it takes: "
                                      "--n-splits, --seed, --shuffle/--no-shuffle)"),
        ("shuffle", {"n_repeats": 3}, "--n-repeats: does not apply to --cv shuffle"),
        ("leave-one-group-out", {"n_splits": 3}, "--n-splits: does not apply"),
        ("time-series", {"shuffle": True}, "--shuffle: does not apply to --cv time-series"),
        ("kfold", {"shuffle": False, "seed": 3}, "--seed: does not apply to --cv kfold with "
                                                 "--no-shuffle"),
        ("time-series", {"test_size": 0.2}, "--test-size: --cv time-series takes a whole number"),
        ("shuffle", {"test_size": 1.5}, "--test-size: must be between 0 and 1"),
        ("kfold", {"n_splits": 1}, "--n-splits: too small (1); --cv kfold needs at least 2"),
        ("repeated-kfold", {"n_repeats": 0}, "--n-repeats: must be at least 1"),
        ("stratifed-kfold", {}, "--cv: unknown splitter 'stratifed-kfold'"),
    ],
)
def test_a_flag_the_splitter_does_not_take_is_bad_input(name, flags, message):
    with pytest.raises(BadInput) as e:
        data.make_cv(name, flags.get("n_splits"), flags.get("test_size"), flags.get("seed"),
                     n_repeats=flags.get("n_repeats"), shuffle=flags.get("shuffle"))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_splitter_suggests_the_closest_name():
    with pytest.raises(BadInput, match="did you mean 'stratified-kfold'"):
        splitters.canonical("stratifed-kfold")


def test_stratified_is_a_deprecated_alias_of_stratified_shuffle_that_says_so():
    name, warning = splitters.canonical("stratified")
    assert name == "stratified-shuffle"
    assert "StratifiedShuffleSplit" in warning and "--cv stratified-kfold" in warning
    assert isinstance(data.make_cv("stratified"), ms.StratifiedShuffleSplit)


def test_group_splitters_need_groups_and_the_others_refuse_them():
    with pytest.raises(BadInput, match="--cv group-kfold: needs group labels"):
        data.plan((X, Y), "group-kfold")
    with pytest.raises(BadInput, match="--groups: does not apply to --cv kfold"):
        data.plan((X, Y), "kfold", groups=G)


@pytest.mark.parametrize(
    ("cv", "n_splits", "y", "groups", "message"),
    [
        ("stratified-kfold", 5, np.linspace(0, 1, 30), None, "Supported target types"),
        ("stratified-kfold", 16, np.repeat([0, 1], 15), None, "cannot be greater than"),
        ("stratified-kfold", 5, np.column_stack([Y, Y]), None, "multiclass-multioutput"),
        ("group-kfold", 5, Y, np.repeat([0, 1], 15), "number of groups"),
        ("kfold", 31, Y, None, "greater than the number of samples"),
    ],
)
def test_data_that_cannot_be_split_is_bad_input_before_anything_ships(
    cv, n_splits, y, groups, message
):
    with pytest.raises(BadInput, match="--cv: cannot split dataset with ") as e:
        data.plan((X, y), cv, n_splits=n_splits, groups=groups)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_splitting_a_small_class_warns_and_still_splits():
    ready = data.plan((X, np.array([0] * 29 + [1])), "stratified-kfold", n_splits=5)
    assert len(ready.splits) == 5
    assert any("least populated class" in w for w in ready.warnings)


def test_any_splitter_object_or_iterable_is_taken_as_is_without_flags():
    pairs = [(np.arange(20), np.arange(20, 30))]
    assert len(data.plan((X, Y), ms.PredefinedSplit(G % 2)).splits) == 2
    assert len(data.plan((X, Y), pairs).splits) == 1
    with pytest.raises(BadInput, match="n_splits: do not apply when cv is a splitter object"):
        data.plan((X, Y), ms.KFold(3), n_splits=4)


def test_a_text_column_is_1d_text_x_and_several_targets_are_2d_y(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,stars,helpful,user\n"great, really",5,1,a\nawful,1,0,b\n'
                    "fine I guess,3,1,a\nlovely,5,1,c\n")
    ds = load_dataset(str(path), target="stars,helpful", groups="user")
    assert ds.X.tolist() == ["great, really", "awful", "fine I guess", "lovely"]
    assert ds.y.shape == (4, 2) and ds.groups.tolist() == ["a", "b", "a", "c"]
    assert ds.label == "reviews" and ds.n_features == 1
    numeric = tmp_path / "n.csv"
    numeric.write_text("a,y\n1,0\n2,1\n")
    assert load_dataset(str(numeric)).X.shape == (2, 1)  # one numeric column stays 2-D
    ready = data.plan(ds, "group-kfold", n_splits=2)
    assert all(set(ds.groups[tr]).isdisjoint(ds.groups[te]) for tr, te in ready.splits)


def test_group_labels_come_from_an_npz_array_or_a_npy_file(tmp_path):
    np.savez(tmp_path / "d.npz", X=X, y=Y, subject=G)
    assert load_dataset(str(tmp_path / "d.npz"), groups="subject").groups.tolist() == G.tolist()
    np.save(tmp_path / "g.npy", G)
    with pytest.raises(BadInput, match=r"one label per row \(150\), got shape \(30,\)"):
        load_dataset("iris", groups=str(tmp_path / "g.npy"))
    ds = load_dataset(str(tmp_path / "d.npz"), groups=str(tmp_path / "g.npy"))
    assert ds.groups.tolist() == G.tolist()


@pytest.mark.parametrize(
    ("make", "groups", "message"),
    [
        (lambda p: np.savez(p / "d.npz", X=X, y=Y), "subject",
         "--groups: {p}/d.npz: missing array(s) subject (has X, y)"),
        (lambda p: (p / "d.csv").write_text("a,b,y\n1,2,0\n3,4,1\n"), "user",
         "--groups: {p}/d.csv: no group column 'user' (columns: a, b, y)"),
        (lambda p: np.savez(p / "d.npz", X=X, y=Y, g=G[:5]), "g",
         "groups must be 1-D with one label per row (30), got shape (5,)"),
        (lambda p: None, "digits-groups", "--groups: digits has no columns"),
    ],
)
def test_missing_or_misshapen_group_labels_are_bad_input(tmp_path, make, groups, message):
    make(tmp_path)
    found = sorted(tmp_path.iterdir())
    spec = str(found[0]) if found else "digits"
    with pytest.raises(BadInput) as e:
        load_dataset(spec, groups=groups)
    assert message.format(p=tmp_path) in str(e.value)


def test_partitioned_shipping_gives_each_host_its_own_shard_only(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from provision.nodes import transfer
    from provision.nodes.remote import Endpoint
    from provision.progress import Reporter

    local = tmp_path / "abc"
    local.mkdir()
    for name in ("test.joblib", "shard_000.joblib", "shard_001.joblib"):
        (local / name).write_bytes(name.encode() * 10)
    sent: dict[str, tuple[list[str], str | None]] = {}

    def push_tree(ep, source, target, *, unless_exists=None, on_bytes=None, **checks):
        sent[ep.name] = (sorted(p.name for p in source.iterdir()), unless_exists)
        return 1

    monkeypatch.setattr(transfer, "push_tree", push_tree)
    ctx = SimpleNamespace(
        config=SimpleNamespace(remote_root="/srv/provision"), reporter=Reporter(),
        endpoint=lambda n: Endpoint(name=n.label, host="x", user="u", key_path=tmp_path),
    )
    nodes = [SimpleNamespace(label="master"), SimpleNamespace(label="node001")]
    owner = {"master": ["test.joblib", "shard_000.joblib"],
             "node001": ["test.joblib", "shard_001.joblib"]}
    result = data.ship(ctx, nodes, local, "abc", files_for=owner)
    assert sent == {
        "master": (["shard_000.joblib", "test.joblib"], "/srv/provision/data/abc/shard_000.joblib"),
        "node001": (["shard_001.joblib", "test.joblib"],
                    "/srv/provision/data/abc/shard_001.joblib"),
    }
    assert result.bytes_per_host == {"master": 270, "node001": 270}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc"]  # staging dirs are gone
    data.ship(ctx, nodes, local, "abc")
    assert sent["node001"] == (["shard_000.joblib", "shard_001.joblib", "test.joblib"],
                               "/srv/provision/data/abc/manifest.json")
