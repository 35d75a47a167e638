"""Baked images: a configured node's disk as an image, so the next `up` installs nothing.

`create` picks a node (a worker when there is one: the master holds the
cluster's keys), reads the digest of the environment it holds, takes the
cluster's secrets and runtime state off its disk (`nodes.bake.stash`), asks the
cloud for an image without a reboot, waits until it is available and puts the
secrets back, whatever happened. The image is tagged with the cluster and the
digest, so `up` on it knows before any SSH whether the install stage will be
skipped (`announce`): a node whose ``.env-digest`` matches the client's pinned
environment skips it (`nodes.setup`), one that does not installs as usual.
"""

from __future__ import annotations

import datetime as dt

from provision import cloud, locks
from provision.cloud.common import MASTER, BakedImage, CloudError, ClusterInfo, InstanceInfo
from provision.context import Context, baked_image, context_for, resolve_region
from provision.errors import BadInput, ProvisionError
from provision.files import find_node
from provision.nodes import bake
from provision.progress import Reporter
from provision.schema import IMAGE_ID_RE, IMAGE_NAME_RE, ClusterConfig

IMAGE_TIMEOUT_S = 3600  # AWS takes minutes per image, more for big disks


def default_name(cluster: str, now: dt.datetime | None = None) -> str:
    """`provision-CLUSTER-YYYYmmdd-HHMMSS` (UTC): unique per second and sortable."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"provision-{cluster}-{stamp}"


def _source(info: ClusterInfo, node: str | None) -> InstanceInfo:
    """The node to bake: `node`, else the first worker, else the master."""
    if not info.nodes:
        raise BadInput(f"NAME: no running cluster {info.name!r}")
    if node is not None:
        return find_node(info, node, "--node")
    workers = [i for i in info.nodes if i.role != MASTER]
    return workers[0] if workers else info.nodes[0]


@locks.exclusive("image create")
def create(
    name: str, image_name: str | None = None, node: str | None = None, *,
    config: ClusterConfig | None = None, reporter: Reporter | None = None,
    timeout: float = IMAGE_TIMEOUT_S,
) -> BakedImage:
    """Bake `node` of cluster `name` (default: a worker) into an available image."""
    image_name = image_name or default_name(name)
    if not IMAGE_NAME_RE.match(image_name):
        raise BadInput(f"--name: {image_name!r} is not an image name (3-128 letters, digits, "
                       "spaces and ()[]./-'@_)")
    ctx = context_for(config if config is not None else name, reporter=reporter)
    info = cloud.describe_cluster(ctx.region, name)
    inst = _source(info, node)
    ep = ctx.endpoint(inst, info.master)
    root = ctx.config.remote_root
    digest = bake.env_digest(ep, root)
    if not digest:
        raise BadInput(f"--node: {inst.label} has no complete environment to bake (run `up`)")
    source = cloud.describe_image(ctx.region, ctx.image_id)
    description = (f"provision: cluster {name}, node {inst.label}, environment {digest}; "
                   f"from {source.name} {source.description}")
    stashed = bake.stash(ep, root)
    try:
        ctx.reporter.note(f"{name}: baking {inst.label} ({inst.instance_id}) into {image_name}"
                          " (cluster keys and runtime state left out)")
        image_id = cloud.create_image(ctx.region, name, inst.instance_id, image_name,
                                      digest=digest, description=description)
        with ctx.reporter.wait(f"image {image_id} becoming available", total=timeout,
                               unit="s") as advance:
            return cloud.wait_image(ctx.region, image_id, timeout=timeout, on_progress=advance)
    finally:
        bake.restore(ep, root, stashed)


def list_images(config: ClusterConfig, cluster: str | None = None) -> list[BakedImage]:
    """The images provision baked in the config's region (of `cluster` when given)."""
    return cloud.list_images(resolve_region(config), cluster)


def delete(config: ClusterConfig, image: str) -> tuple[str, list[str]]:
    """Deregister the image `image` names (an id, or the name of one provision baked)
    and delete its snapshots; (image id, ids removed now). Safe to repeat with an id."""
    region = resolve_region(config)
    named = not IMAGE_ID_RE.match(image)
    image_id = baked_image(region, image, "IMAGE").image_id if named else image
    try:
        return image_id, cloud.delete_image(region, image_id)
    except CloudError as e:
        raise BadInput(f"IMAGE: {e}") from e


def announce(ctx: Context) -> bool | None:
    """Say, before `up` configures anything, what a baked image saves: True when its
    environment matches the client's (install skipped), False when it does not
    (installed as usual), None for an image provision did not bake."""
    try:
        baked = cloud.describe_baked(ctx.region, ctx.image_id)
    except ProvisionError:  # a question asked for the progress output only
        return None
    if baked is None:
        return None
    want = ctx.env_spec().digest
    if baked.digest == want:
        ctx.reporter.note(f"baked image {baked.image_id} ({baked.name}): install skipped, "
                          f"its environment {want} is the client's")
        return True
    ctx.reporter.warn(f"baked image {baked.image_id} ({baked.name}) holds environment "
                      f"{baked.digest or 'unknown'}, the client needs {want}: installing")
    return False
