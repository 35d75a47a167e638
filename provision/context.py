"""The context of a cluster: its settings, region, key and instance type, resolved once.

Every step (`up`, `addnode`, `put-data`, the inventory) works from a `Context`,
built by `prepare` before anything is created, so a bad instance type, image or
key is reported (exit 2) while there is still nothing to clean up.
`context_for` builds one for a cluster that already exists, from its local
record or a config. Building a context creates nothing in the cloud; with
`need_key` it may create the local SSH key pair the cluster will use.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision import cloud, state
from provision.cloud.common import MASTER, CloudAPIError, InstanceInfo, Region
from provision.errors import BadInput, ProvisionError
from provision.nodes import remote, setup
from provision.progress import Reporter
from provision.schema import SIM_REGION, ClusterConfig


def resolve_region(config: ClusterConfig) -> Region:
    """The region a config names, with the network it sets (`subnet_id`, `vpc_id`):
    the one switch between a provider's region and the simulated one (`SimError`
    when that is not running)."""
    if config.region == SIM_REGION:
        from provision import sim  # only when asked for: it pulls in the region's machinery

        region = sim.region()
    else:
        region = cloud.named_region(config.region, config.provider)
    network = {k: v for k, v in (("subnet_id", config.subnet_id), ("vpc_id", config.vpc_id)) if v}
    return dataclasses.replace(region, **network) if network else region


@dataclass
class Context:
    """Everything a step needs, resolved once and validated before any create."""

    config: ClusterConfig
    region: Region
    type_info: cloud.InstanceTypeInfo
    image_id: str
    user: str
    public_key: str  # "" when built without the key (read-only commands)
    reporter: Reporter = field(default_factory=Reporter)
    # Instance ids this invocation launched: what a failed `up` terminates.
    launched: list[str] = field(default_factory=list)
    _ssh_cidr: str | None = field(default=None, repr=False)

    @property
    def ssh_cidr(self) -> str:
        """Who may SSH in: the configured CIDR, else this machine's public address.

        Looked up on first use only, i.e. where an SSH rule is created or checked
        (`up`, `addnode`), never by commands that merely connect or read.
        """
        if self._ssh_cidr is None:
            cfg, region = self.config, self.region
            self._ssh_cidr = cfg.ssh_cidr or region.ssh_cidr or cloud.caller_cidr(region)
        return self._ssh_cidr

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def engines_per_node(self) -> int:
        return self.config.engines_per_node or self.type_info.vcpus

    def engines_on(self, inst: InstanceInfo) -> int:
        if inst.role == MASTER and not self.config.master_engines:
            return 0
        return self.engines_per_node

    def endpoint(self, inst: InstanceInfo, master: InstanceInfo | None = None) -> remote.Endpoint:
        """How this machine reaches `inst` over SSH, as the image's user.

        At its public address; a worker with only a private address through the
        master (ProxyJump), never by trying a private address this machine has
        no route to. `master` (the cluster's, running) saves a lookup.
        """
        if inst.public_ip:
            return self._endpoint(inst.label, inst.public_ip)
        if inst.role == MASTER:
            raise ProvisionError(
                f"master {inst.instance_id} ({inst.state}) has no public address: this machine "
                "reaches the cluster through it"
            )
        if not inst.private_ip:
            raise ProvisionError(f"{inst.label} ({inst.instance_id}) has no address yet")
        if master is None:
            master = cloud.describe_cluster(self.region, self.name).master
        if master is None or not master.public_ip:
            raise ProvisionError(
                f"{inst.label} has only a private address ({inst.private_ip}) and no running "
                "master with a public one to reach it through"
            )
        return self._endpoint(inst.label, inst.private_ip, via=self.endpoint(master))

    def _endpoint(
        self, name: str, host: str, via: remote.Endpoint | None = None
    ) -> remote.Endpoint:
        return remote.Endpoint(
            name=name,
            host=host,
            user=self.user,
            key_path=Path(self.config.key_path).expanduser(),
            known_hosts=state.cluster_dir(self.name) / "known_hosts",
            via=via,
        )

    def env_spec(self) -> setup.EnvSpec:
        """The environment every node gets: this client's Python minor and package
        versions, wheels and uv for the nodes' architecture, the configured Python source."""
        cfg = self.config
        source = setup.PythonSource(cfg.python_install_mirror, cfg.python_downloads_json_url)
        return setup.client_env_spec(
            list(cfg.packages), cfg.remote_root, setup.platform_for(self.type_info.arch), source
        )

    @property
    def connection_files(self) -> tuple[Path, Path]:
        """The controller's client and engine connection files, cached locally."""
        d = state.cluster_dir(self.name)
        return d / "ipcontroller-client.json", d / "ipcontroller-engine.json"


def ensure_key(config: ClusterConfig) -> str:
    """Return the public key, creating an ed25519 pair (0600) when none exists."""
    key = Path(config.key_path).expanduser()
    pub = Path(str(key) + ".pub")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"provision-{config.name}",
             "-f", str(key)],
            check=True,
        )
        os.chmod(key, 0o600)
    elif not pub.exists():
        raise BadInput(
            f"{pub}: public key missing (create it with ssh-keygen -y -f {key} > {pub})"
        )
    return pub.read_text().strip()


class ImageUnresolved(BadInput):
    """The cluster file's image does not resolve (unknown, deleted, not available)."""


def prepare(
    config: ClusterConfig,
    reporter: Reporter | None = None,
    *,
    need_key: bool = True,
    recorded: dict[str, Any] | None = None,
) -> Context:
    """Resolve and validate everything `up` needs; creates nothing in the cloud.

    Errors here are the user's input (unknown instance type in the region, an
    image that does not exist) and exit with status 2; an API failure (no
    credentials, throttled past retries) is not, and exits with 1. `recorded`: a
    running cluster's local record; when its image no longer resolves (a baked
    image deleted after `up`), the image and user its `up` recorded are used.
    """
    reporter = reporter or Reporter()
    region = resolve_region(config)  # SimError: BadInput, nothing created
    try:
        type_info = cloud.describe_instance_type(region, config.instance_type)
        cloud.resolve_network(region, config.zone)  # e.g. no default VPC: say what to set
    except CloudAPIError as err:
        raise ProvisionError(f"{config.region}: {err}") from err
    except cloud.CloudError as err:  # the region cannot do what the config asks
        raise BadInput(f"{config.region}: {err}") from err
    try:
        image_id, user = _image(config, region, type_info.arch)
    except ImageUnresolved:
        if not (recorded and recorded.get("image_id") and recorded.get("user")):
            raise
        image_id, user = recorded["image_id"], recorded["user"]
        reporter.warn(f"{config.name}: its image no longer resolves; using {image_id}, "
                      "recorded when it came up")
    return Context(
        config=config,
        region=region,
        type_info=type_info,
        image_id=image_id,
        user=user,
        public_key=ensure_key(config) if need_key else "",
        reporter=reporter,
    )


def _image(config: ClusterConfig, region: Region, arch: str) -> tuple[str, str]:
    """The image the config names, as an AMI id, and its login user."""
    try:
        wanted = config.image_id
        if config.image is not None:
            wanted = _launchable(baked_image(region, config.image, "image")).image_id
        image_id = cloud.resolve_image(region, wanted, arch)
        image = cloud.describe_image(region, image_id)
    except CloudAPIError as err:
        raise ProvisionError(f"{config.region}: {err}") from err
    except cloud.CloudError as err:  # no such image in the region
        raise ImageUnresolved(f"{config.region}: {err}") from err
    user = config.user or image.user
    if user is None:
        raise BadInput(
            f"user: image {image_id} ({image.name or 'no name'}) is of no family provision "
            "knows the login user of: set user in the cluster file (e.g. ubuntu, ec2-user)"
        )
    return image_id, user


def baked_image(region: Region, name: str, field: str) -> cloud.BakedImage:
    """The image provision baked under `name`; `BadInput` naming `field` when there
    is none (a typo, another region, or deleted), pointing at the list of images."""
    found = cloud.find_image(region, name)
    if found is None:
        raise ImageUnresolved(f"{field}: no image called {name!r} baked by provision in "
                       f"{region.name} (see `provision image list`)")
    return found


def _launchable(image: cloud.BakedImage) -> cloud.BakedImage:
    """`image` if it is available: a pending one (an `image create` still running or
    interrupted) or a failed one cannot be launched."""
    if image.state != "available":
        raise ImageUnresolved(f"image: {image.name!r} ({image.image_id}) is {image.state}, not "
                       "available (see `provision image list`)")
    return image


def recorded_config(name: str, record: dict[str, Any] | None = None) -> ClusterConfig:
    """The settings cluster `name` was brought up with, from its local record."""
    record = state.load(name) if record is None else record
    if "config" not in record:
        raise BadInput(
            f"NAME: no local record of cluster {name!r}: pass --config/--template for it"
        )
    return ClusterConfig.model_validate(record["config"])


def context_for(
    target: str | ClusterConfig | Context,
    *,
    reporter: Reporter | None = None,
    need_key: bool = True,
) -> Context:
    """The context of a cluster by name (its local record), by config, or as is.

    `need_key=False` is for commands that only read (the inventory): they never
    create a key pair, locally or in the cloud.
    """
    if isinstance(target, Context):
        return target
    if isinstance(target, ClusterConfig):
        return prepare(target, reporter, need_key=need_key)
    record = state.load(target)
    return prepare(recorded_config(target, record), reporter, need_key=need_key, recorded=record)
