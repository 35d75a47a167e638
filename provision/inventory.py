"""An Ansible inventory of a cluster, built from its tags.

The cloud's tags say which nodes exist and which is the master; the cluster's
settings (SSH user and key, engines per node, remote root) and the client's
Python environment (the versions nodes must run) fill in the variables that
``ansible/site.yml`` needs to do what `provision.nodes` does over Fabric. The
result is Ansible's dynamic inventory JSON (the ``--list`` format, with
``_meta.hostvars``); `render` turns it into the YAML or INI a team can keep.

Groups: ``master`` (one host) and ``workers``. Hosts are named by node name
(``master``, ``node001``) and reached at their SSH address (``ansible_host``):
the public one, or for a node without one its private address through the
master (a ProxyCommand in that host's ``ansible_ssh_common_args``), as the
image's user (``ansible_user``, with sudo: the playbook becomes root only where
it must).
Every host carries the whole picture in its own vars, so ``--host`` alone is
enough; the environment and connection settings shared by all nodes are also in
``all.vars`` for the roles.
"""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from provision import cloud, state
from provision.cloud.common import MASTER, ClusterInfo
from provision.context import Context, context_for
from provision.errors import BadInput, ProvisionError
from provision.nodes import engines, envcopy, relay, remote, setup, transfer
from provision.nodes import wheelhouse as wheelhouses
from provision.schema import ClusterConfig

GROUPS = ("master", "workers")
FORMATS = ("yaml", "ini", "json")
YAML_WIDTH = 1000  # no folded lines: a long ssh option stays one line


def ssh_common_args(known_hosts: Path, via: remote.Endpoint | None = None) -> str:
    """OpenSSH options: the cluster's own known_hosts (as Fabric uses), key auth only;
    for a node without a public address, a ProxyCommand through `via` (the master)."""
    args = (
        f"-o UserKnownHostsFile={shlex.quote(str(known_hosts))} "
        "-o StrictHostKeyChecking=accept-new -o IdentitiesOnly=yes -o PasswordAuthentication=no"
    )
    if via is None:
        return args
    proxy = transfer.proxy_command(via, accept_new=True)
    if proxy is None:
        raise ProvisionError("ssh: no OpenSSH client on PATH, which Ansible needs")
    return f"{args} -o {shlex.quote('ProxyCommand=' + proxy)}"


def build(
    ctx: Context,
    info: ClusterInfo,
    *,
    spec: setup.EnvSpec | None = None,
    wheelhouse: Path | None = None,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """The inventory of `info`'s live nodes (those with an address); no cloud call.

    `spec` is the environment nodes must have (default: this client's, as `up`
    computes it); `wheelhouse` its directory (default: the cache entry for its
    digest, which `wheelhouse.build_wheelhouse` fills). `only`: node names to keep.
    """
    cfg = ctx.config
    root = cfg.remote_root
    spec = spec or ctx.env_spec()
    wheelhouse = wheelhouse or wheelhouses.default_cache_dir() / spec.digest
    cdir = state.cluster_dir(ctx.name)
    security = f"{root}/ipython/security"
    master = info.master
    record = state.load(ctx.name)
    shared: dict[str, Any] = {
        "ansible_user": ctx.user,
        "ansible_ssh_private_key_file": str(Path(cfg.key_path).expanduser()),
        "ansible_ssh_common_args": ssh_common_args(cdir / "known_hosts"),
        # Not discovered: a pyenv shim on PATH can win discovery and then refuse to run.
        "ansible_python_interpreter": "/usr/bin/python3",
        "cluster_name": ctx.name,
        "region": ctx.region.name,
        "remote_root": root,
        "venv": spec.venv,
        "profile_dir": f"{root}/ipython",
        "data_dir": f"{root}/data",
        "connection_file": f"{security}/{engines.CLIENT_JSON}",
        "engine_connection_file": f"{security}/{engines.ENGINE_JSON}",
        "controller_host": master.name if master else "",
        "controller_ip": (master.private_ip or "") if master else "",
        "local_connection_dir": str(cdir),
        "heartbeat_ms": engines.HEARTBEAT_MS,
        "heartbeat_misses": engines.HEARTBEAT_MISSES,
        "task_hwm": engines.TASK_HWM,
        "engine_env": engines.THREAD_ENV,
        "engine_flags": engines.ENGINE_FLAGS,
        "python_minor": spec.python_minor,
        # Where a node without that minor gets one ("" = uv's default source).
        "python_install_mirror": spec.python_source.install_mirror or "",
        "python_downloads_json_url": spec.python_source.downloads_json_url or "",
        "env_digest": spec.digest,
        "env_requirements": " ".join(spec.requirements),
        "wheelhouse": str(wheelhouse),
        "datasets": [
            {"digest": d["digest"], "local_dir": d["local_dir"]}
            for _, d in sorted(record.get("datasets", {}).items())
            if d.get("layout") != "partition"  # each node holds its own shard: not for all
        ],
    }
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    hostvars: dict[str, dict[str, Any]] = {}
    for inst in info.nodes:
        name = inst.label
        reachable = inst.public_ip or (inst.private_ip and master and master.public_ip)
        if not reachable or (only is not None and name not in only):
            continue  # no address yet, or no way in
        ep = ctx.endpoint(inst, master)
        groups["master" if inst.role == MASTER else "workers"].append(name)
        hostvars[name] = {
            "ansible_host": ep.host,
            "private_ip": inst.private_ip or ep.host,
            "public_ip": inst.public_ip or "",
            "instance_id": inst.instance_id,
            "instance_type": inst.instance_type,
            "zone": inst.zone,
            "lifecycle": inst.lifecycle,
            "role": inst.role,
            "vcpus": ctx.type_info.vcpus,
            "engines": ctx.engines_on(inst),
            **{k: shared[k] for k in HOST_SETTINGS},
        }
        if inst.role != MASTER and master is not None and inst.private_ip:
            # Only the master installs: a worker takes its environment (`envcopy`).
            hop = relay.Hop(name, inst.private_ip, ctx.user)
            hostvars[name]["env_copy"] = envcopy.stream_script(hop, root, spec.digest)
            hostvars[name]["env_commit"] = envcopy.commit_script(root, spec.digest)
        if ep.via is not None:  # a private node: through the master
            hostvars[name]["ansible_ssh_common_args"] = ssh_common_args(
                cdir / "known_hosts", ep.via
            )
    doc: dict[str, Any] = {
        "all": {"children": list(GROUPS), "vars": shared},
        **{g: {"hosts": hosts} for g, hosts in groups.items()},
        "_meta": {"hostvars": hostvars},
    }
    return doc


# Settings repeated in each host's vars, so `--host NAME` tells the whole story.
HOST_SETTINGS = (
    "ansible_user",
    "ansible_ssh_private_key_file",
    "ansible_ssh_common_args",
    "remote_root",
    "venv",
    "connection_file",
    "engine_connection_file",
)


def inventory(target: str | ClusterConfig | Context, **kwargs: Any) -> dict[str, Any]:
    """The inventory of a cluster as the cloud's tags describe it now (``--list`` JSON)."""
    ctx = context_for(target, need_key=False)  # an inventory only reads
    return build(ctx, cloud.describe_cluster(ctx.region, ctx.name), **kwargs)


def host(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """One host's variables (a dynamic inventory's ``--host NAME``)."""
    try:
        return doc["_meta"]["hostvars"][name]
    except KeyError:
        have = ", ".join(doc["_meta"]["hostvars"]) or "none"
        raise BadInput(f"--host: no host {name!r} in the inventory (have: {have})") from None


# --- rendering ---------------------------------------------------------------------


def render(doc: dict[str, Any], fmt: str = "yaml") -> str:
    """The inventory as JSON (``--list`` format), YAML or INI: the same to Ansible."""
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "yaml":
        return _yaml(doc)
    if fmt == "ini":
        return _ini(doc)
    raise BadInput(f"--format: must be one of {', '.join(FORMATS)} (got {fmt!r})")


def _group_vars_only(doc: dict[str, Any], hv: dict[str, Any]) -> dict[str, Any]:
    """A host's vars without what `all.vars` already says (shorter files, same meaning)."""
    shared = doc["all"]["vars"]
    return {k: v for k, v in hv.items() if k not in shared or shared[k] != v}


def _header(doc: dict[str, Any]) -> str:
    name = doc["all"]["vars"].get("cluster_name", "")
    return f"# Ansible inventory of cluster {name}, from its tags"


def _yaml(doc: dict[str, Any]) -> str:
    hostvars = doc["_meta"]["hostvars"]
    tree = {
        "all": {
            "vars": doc["all"]["vars"],
            "children": {
                g: {"hosts": {h: _group_vars_only(doc, hostvars[h]) for h in doc[g]["hosts"]}}
                for g in GROUPS
            },
        }
    }
    body = yaml.safe_dump(tree, sort_keys=False, default_flow_style=False, width=YAML_WIDTH)
    return _header(doc) + "\n" + body


def _ini_literal(value: Any) -> str:
    """A value Ansible's INI parser reads back as exactly `value`.

    Ansible evaluates INI values as Python literals where they parse as one
    (``3.10`` would become the float 3.1), so strings that would are quoted.
    """
    if isinstance(value, str):
        try:
            plain = isinstance(ast.literal_eval(value), str)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            plain = True
        if plain and value and value == value.strip() and not any(c in value for c in "\"'#;\\\n"):
            return value
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)  # JSON of strings and numbers is a Python literal too
    return repr(value)


def _ini(doc: dict[str, Any]) -> str:
    hostvars = doc["_meta"]["hostvars"]
    lines = [_header(doc)]
    for g in GROUPS:
        lines.append(f"[{g}]")
        for h in doc[g]["hosts"]:
            # Host lines are split like a shell line, then each value read as a literal.
            pairs = [
                f"{k}={shlex.quote(_ini_literal(v))}"
                for k, v in _group_vars_only(doc, hostvars[h]).items()
            ]
            lines.append(" ".join([h, *pairs]))
        lines.append("")
    lines.append("[all:vars]")
    lines += [f"{k}={_ini_literal(v)}" for k, v in doc["all"]["vars"].items()]
    return "\n".join(lines) + "\n"
