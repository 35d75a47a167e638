#!/usr/bin/env python3
"""Dynamic inventory of a provision cluster, for ansible-playbook -i.

    cd provision/ansible   # or the ansible/ folder of an installed provision
    PROVISION_CLUSTER=NAME ansible-playbook -i inventory.py site.yml

Answers ``--list`` (every group and host, with ``_meta.hostvars``) and ``--host
HOST`` from the cluster's tags, through provision's own inventory code: imported
when this Python has provision installed, else by running ``provision inventory``
(``PROVISION_BIN``, or ``provision`` on PATH). PROVISION_STATE_DIR, AWS
credentials and the like pass through unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="every group and host, as JSON")
    mode.add_argument("--host", metavar="HOST", help="one host's variables, as JSON")
    parser.add_argument("--cluster", default=os.environ.get("PROVISION_CLUSTER"),
                        help="cluster name (default: $PROVISION_CLUSTER)")
    args = parser.parse_args(argv)
    if not args.cluster:
        print("inventory.py: set PROVISION_CLUSTER=NAME (the cluster to list)", file=sys.stderr)
        return 2
    try:
        from provision import inventory
        from provision.errors import ProvisionError
    except ImportError:
        return _run_cli(args.cluster, args.host)
    try:
        doc = inventory.inventory(args.cluster)
        print(json.dumps(inventory.host(doc, args.host) if args.host else doc, indent=2))
    except ProvisionError as err:
        print(f"inventory.py: {err}", file=sys.stderr)
        return 1
    return 0


def _run_cli(cluster: str, host: str | None) -> int:
    exe = os.environ.get("PROVISION_BIN") or shutil.which("provision")
    if exe is None:
        print("inventory.py: provision is neither importable by this Python nor on PATH "
              "(set PROVISION_BIN to its executable)", file=sys.stderr)
        return 2
    args = [exe, "inventory", cluster] + (["--host", host] if host else ["--list"])
    return subprocess.call(args)


if __name__ == "__main__":
    sys.exit(main())
