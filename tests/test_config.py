"""Cluster file loading: rendering, templates, overrides, and one-line errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from provision.config import (
    ClusterConfig,
    ConfigError,
    default_config_path,
    load_config,
    templates_dir,
    write_starter,
)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME and XDG_CONFIG_HOME into tmp_path so nothing touches the real home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("PROVISION_TEMPLATE", raising=False)
    return home


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def make_key(path: Path, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("PRIVATE")
    path.chmod(mode)
    path.with_name(path.name + ".pub").write_text("ssh-ed25519 AAAA test")
    return path


def error_of(*args: object, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


CHAIN = """
    default: small
    clusters:
      base:
        instance_type: c5.large
        volume_size: 40
        packages: [lightgbm]
      small:
        extends: base
        cluster_size: 3
        spot_bid: 0.10
      big:
        extends: small
        instance_type: c6i.4xlarge
        cluster_size: 10
"""


# --- rendering ---------------------------------------------------------------


def test_environment_variables_and_expressions_are_rendered(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("NODES", "4")
    path = write(
        tmp_path,
        """
        default: a
        clusters:
          a:
            region: "{{ env.AWS_REGION | default('sim') }}"
            cluster_size: {{ env.NODES | int * 2 }}
            name: "{{ env.get('CLUSTER', 'fallback') }}"
    """,
    )
    cfg = load_config(path)
    assert (cfg.region, cfg.cluster_size, cfg.name) == ("eu-west-1", 8, "fallback")


def test_missing_environment_variable_falls_back_to_its_default(tmp_path):
    path = write(
        tmp_path,
        """
        clusters:
          a:
            region: "{{ env.AWS_REGION | default('sim') }}"
    """,
    )
    assert load_config(path).region == "sim"


# --- templates ---------------------------------------------------------------


def test_default_template_is_used_without_template_flag(tmp_path):
    cfg = load_config(write(tmp_path, CHAIN))
    assert (cfg.cluster_size, cfg.spot_bid) == (3, 0.10)


def test_child_template_overrides_parent_through_three_levels(tmp_path):
    cfg = load_config(write(tmp_path, CHAIN), template="big")
    assert cfg.instance_type == "c6i.4xlarge"  # from big
    assert cfg.cluster_size == 10  # big over small
    assert cfg.spot_bid == 0.10  # from small
    assert (cfg.volume_size, cfg.packages) == (40, ["lightgbm"])  # from base


def test_template_flag_selects_another_template(tmp_path):
    cfg = load_config(write(tmp_path, CHAIN), template="base")
    assert (cfg.cluster_size, cfg.spot_bid, cfg.volume_size) == (2, None, 40)


def test_single_template_is_used_when_no_default_is_set(tmp_path):
    path = write(tmp_path, "clusters:\n  only:\n    cluster_size: 5\n")
    assert load_config(path).cluster_size == 5


def test_overrides_win_over_the_file_and_none_means_not_given(tmp_path):
    cfg = load_config(write(tmp_path, CHAIN), overrides={"cluster_size": 7, "spot_bid": None})
    assert (cfg.cluster_size, cfg.spot_bid) == (7, 0.10)


def test_missing_default_file_gives_builtin_sim_defaults_with_overrides():
    assert not default_config_path().exists()
    cfg = load_config(overrides={"cluster_size": 4})
    assert cfg == ClusterConfig(cluster_size=4)
    assert cfg.region == "sim"


def test_derived_key_pair_name_and_public_key_path(home):
    cfg = ClusterConfig(name="lab", key_path=Path("~/.ssh/k"))
    assert cfg.pair_name == "provision-lab"
    assert cfg.key_path == home / ".ssh/k"
    assert cfg.public_key_path == home / ".ssh/k.pub"


# --- errors in the file ------------------------------------------------------


def test_unknown_key_suggests_the_close_field(tmp_path):
    path = write(tmp_path, "clusters:\n  small:\n    instnce_type: c5.large\n")
    msg = error_of(path)
    assert "cluster.yaml: clusters.small.instnce_type: unknown key" in msg
    assert "did you mean 'instance_type'?" in msg


def test_unknown_top_level_key_suggests_the_close_one(tmp_path):
    msg = error_of(write(tmp_path, "defualt: a\nclusters: {a: {}}\n"))
    assert "defualt: unknown key (did you mean 'default'?)" in msg


def test_negative_spot_bid_is_rejected(tmp_path):
    msg = error_of(write(tmp_path, "clusters:\n  small:\n    spot_bid: -1\n"))
    assert msg.endswith("clusters.small.spot_bid: must be a positive number (got -1)")


def test_zero_spot_bid_is_rejected(tmp_path):
    msg = error_of(write(tmp_path, "clusters:\n  small:\n    spot_bid: 0\n"))
    assert "clusters.small.spot_bid: must be a positive number (got 0)" in msg


@pytest.mark.parametrize("itype", ["m5.large", "t3.micro", "c5", "C5.large"])
def test_instance_type_outside_the_c_family_is_rejected(tmp_path, itype):
    msg = error_of(write(tmp_path, f"clusters:\n  a:\n    instance_type: {itype}\n"))
    assert "clusters.a.instance_type: must be a compute-optimised c-family type" in msg
    assert repr(itype) in msg


@pytest.mark.parametrize("itype", ["c5.large", "c5a.xlarge", "c6in.2xlarge", "c7g.medium"])
def test_c_family_instance_types_are_accepted(tmp_path, itype):
    path = write(tmp_path, f"clusters:\n  a:\n    instance_type: {itype}\n")
    assert load_config(path).instance_type == itype


def test_bad_cidr_is_rejected(tmp_path):
    msg = error_of(write(tmp_path, "clusters:\n  a:\n    ssh_cidr: 10.0.0.300/8\n"))
    assert "clusters.a.ssh_cidr: must be a CIDR" in msg


def test_cluster_size_zero_is_rejected(tmp_path):
    msg = error_of(write(tmp_path, "clusters:\n  a:\n    cluster_size: 0\n"))
    assert "clusters.a.cluster_size: must be >= 1 (got 0)" in msg


def test_extends_cycle_is_named(tmp_path):
    path = write(
        tmp_path,
        """
        default: a
        clusters:
          a: {extends: b}
          b: {extends: c}
          c: {extends: a}
    """,
    )
    assert "clusters.c.extends: cycle a -> b -> c -> a" in error_of(path)


def test_extends_of_an_unknown_template_suggests_the_close_one(tmp_path):
    path = write(tmp_path, "clusters:\n  base: {}\n  a: {extends: bsae}\n")
    msg = error_of(path, template="a")
    assert "clusters.a.extends: unknown template 'bsae' (did you mean 'base'?)" in msg


def test_unknown_template_flag_is_rejected(tmp_path):
    msg = error_of(write(tmp_path, CHAIN), template="smal")
    assert msg.startswith("--template: unknown template 'smal'")
    assert "did you mean 'small'?" in msg


def test_unknown_default_template_lists_the_templates(tmp_path):
    msg = error_of(write(tmp_path, "default: nope\nclusters: {a: {}, b: {}}\n"))
    assert "default: unknown template 'nope' (templates: a, b)" in msg


def test_jinja_syntax_error_names_its_line(tmp_path):
    path = write(tmp_path, "clusters:\n  a:\n    name: {{ oops(\n")
    msg = error_of(path)
    assert "cluster.yaml: line 3: template syntax error" in msg


def test_undefined_jinja_variable_names_its_line(tmp_path):
    path = write(tmp_path, "clusters:\n  a:\n\n    name: {{ cluster_name }}\n")
    msg = error_of(path)
    assert "line 4: template error: 'cluster_name' is undefined" in msg


def test_unset_environment_variable_without_default_is_named(tmp_path):
    path = write(tmp_path, "clusters:\n  a:\n    region: {{ env.AWS_REGION }}\n")
    msg = error_of(path)
    assert "line 3" in msg and "environment variable AWS_REGION is not set" in msg


def test_yaml_syntax_error_names_its_line(tmp_path):
    path = write(tmp_path, "clusters:\n  a:\n    name: [unclosed\n    size: 3\n")
    msg = error_of(path)
    assert "cluster.yaml: line 4: YAML syntax error" in msg


def test_missing_explicit_config_path_is_named(tmp_path):
    msg = error_of(tmp_path / "nowhere.yaml")
    assert "nowhere.yaml: config file not found" in msg


# --- errors in overrides -----------------------------------------------------


def test_bad_override_names_the_flag(tmp_path):
    msg = error_of(write(tmp_path, CHAIN), overrides={"spot_bid": -1})
    assert msg == "--spot-bid: must be a positive number (got -1)"


def test_unknown_override_suggests_the_close_flag(tmp_path):
    msg = error_of(write(tmp_path, CHAIN), overrides={"spot_bidd": 1.0})
    assert msg == "--spot-bidd: unknown option (did you mean '--spot-bid'?)"


# --- key checks --------------------------------------------------------------


def test_missing_key_file_is_rejected(tmp_path):
    path = write(tmp_path, "clusters:\n  a:\n    key_path: ~/.ssh/id_x\n")
    msg = error_of(path)
    assert "clusters.a.key_path: key file ~/.ssh/id_x does not exist" in msg


def test_key_file_readable_by_others_is_rejected(tmp_path, home):
    make_key(home / ".ssh/id_x", mode=0o644)
    path = write(tmp_path, "clusters:\n  a:\n    key_path: ~/.ssh/id_x\n")
    msg = error_of(path)
    assert msg.endswith(
        "clusters.a.key_path: key file ~/.ssh/id_x is readable by others (mode 0644): "
        "run chmod 600 ~/.ssh/id_x"
    )


def test_missing_public_key_is_rejected(tmp_path, home):
    make_key(home / ".ssh/id_x").with_name("id_x.pub").unlink()
    msg = error_of(overrides={"key_path": home / ".ssh/id_x"})
    assert msg.startswith("--key-path: public key ~/.ssh/id_x.pub does not exist")


def test_private_key_with_public_half_is_accepted(tmp_path, home):
    key = make_key(home / ".ssh/id_x")
    path = write(tmp_path, "clusters:\n  a:\n    key_path: ~/.ssh/id_x\n")
    assert load_config(path).key_path == key


def test_default_key_path_is_not_checked_because_it_is_generated_later(tmp_path, home):
    assert not (home / ".ssh/provision_ed25519").exists()
    assert load_config(write(tmp_path, CHAIN)).key_path == home / ".ssh/provision_ed25519"


# --- starter file ------------------------------------------------------------


def test_write_starter_goes_to_the_user_config_dir_with_mode_0600(home):
    path = write_starter()
    assert path == home / ".config/provision/cluster.yaml" == default_config_path()
    assert path.read_text() == (templates_dir() / "cluster.yaml").read_text()
    assert path.stat().st_mode & 0o777 == 0o600


def test_write_starter_refuses_to_overwrite_without_force(tmp_path):
    target = tmp_path / "conf/cluster.yaml"
    write_starter(target)
    target.write_text("mine")
    with pytest.raises(ConfigError, match="exists; use --force to overwrite"):
        write_starter(target)
    assert target.read_text() == "mine"


def test_write_starter_overwrites_with_force(tmp_path):
    target = tmp_path / "cluster.yaml"
    target.write_text("mine")
    write_starter(target, force=True)
    assert target.read_text().startswith("# provision cluster file")


def test_starter_file_loads_as_the_default_config(home):
    write_starter()
    cfg = load_config()
    assert cfg.region == "sim"


def test_starter_aws_template_loads_with_the_region_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    cfg = load_config(templates_dir() / "cluster.yaml", template="aws")
    assert (cfg.region, cfg.spot_bid, cfg.spot_master) == ("eu-central-1", 0.10, False)
