"""`provision image create/list/delete`: baked images of configured nodes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
from rich.table import Table

from provision import imaging, progress
from provision.cli.common import config_options, err, json_option, out, settings


@click.group()
def image() -> None:
    """Images baked from a configured node: `up` on one skips the install stage.

    \b
      provision image create c1 --name sk-1.5   # a worker (or the master) of c1
      provision image list
      provision up -c cluster.yaml              # with `image: sk-1.5` in it
      provision image delete ami-0123456789abcdef0
    """


@image.command()
@click.argument("name")
@click.option("--name", "image_name", metavar="IMAGE",
              help="The image's name (default: provision-NAME-<UTC time>).")
@click.option("--node", metavar="NODE",
              help="The node to bake (default: the first worker, else the master).")
@click.option("--timeout", type=click.FloatRange(min=1), default=imaging.IMAGE_TIMEOUT_S,
              show_default=True, help="Seconds to wait for the image to become available.")
@config_options
def create(name: str, image_name: str | None, node: str | None, timeout: float,
           config_path: Path | None, template: str | None) -> None:
    """Bake a configured node of cluster NAME into an image; prints its id.

    The node keeps running (no reboot). Its Python environment, wheelhouse and
    files under /srv and /home go in; the cluster's SSH keys, autostop agent and
    controller state are taken off the disk while the image is made, then put back.
    Name it in the cluster file as `image: IMAGE` (or its id as `image_id:`) and
    `up` installs nothing when the image's environment is the client's.
    """
    with progress.for_console(err) as reporter:
        baked = imaging.create(name, image_name, node, config=settings(config_path, template, name),
                               reporter=reporter, timeout=timeout)
    err.print(f"{name}: image {baked.name}, environment {baked.digest}, "
              f"snapshot(s) {', '.join(baked.snapshots) or 'none'}")
    out.print(baked.image_id)


@image.command(name="list")
@click.option("--cluster", metavar="NAME", help="Only the images baked from this cluster.")
@config_options
@json_option
def list_(cluster: str | None, config_path: Path | None, template: str | None,
          as_json: bool) -> None:
    """The images provision baked in the region, newest first."""
    found = imaging.list_images(settings(config_path, template), cluster)
    if as_json:
        out.print_json(json.dumps([dataclasses.asdict(b) for b in found]))
        return
    table = Table(title="images baked by provision", title_justify="left")
    for column in ("id", "name", "cluster", "digest", "created", "state"):
        table.add_column(column, no_wrap=True)
    for b in found:
        table.add_row(b.image_id, b.name, b.cluster, b.digest, b.created, b.state)
    out.print(table)


@image.command()
@click.argument("image_ref", metavar="IMAGE")
@config_options
def delete(image_ref: str, config_path: Path | None, template: str | None) -> None:
    """Deregister IMAGE (an id, or a name from `image list`) and delete its snapshots.

    Safe to repeat: an id already deleted removes nothing and succeeds.
    """
    image_id, removed = imaging.delete(settings(config_path, template), image_ref)
    out.print(f"{image_id}: removed {', '.join(removed)}" if removed
              else f"{image_id}: nothing left to remove")


COMMANDS = (image,)
