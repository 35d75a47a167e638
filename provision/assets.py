"""Where the files that ship inside the package are: the one place that knows.

The starter cluster file (``templates/``), the Ansible playbook and roles
(``ansible/``) and the minimal IAM policy are package data, so a plain
``pip install provision`` (or pipx, or uv tool) has them: nothing is looked
up next to a source checkout. Every module asks here instead of building a
path from ``__file__`` of its own.

They are read as files, not through ``importlib.resources`` readers, because
their users need a directory on disk (``ansible-playbook`` runs in it); a
wheel always installs unpacked, so the package directory is that directory.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
IAM_POLICY = "iam-policy.json"  # the minimal IAM policy, also shown in the README


def templates_dir() -> Path:
    """The starter cluster file and other templates."""
    return PACKAGE_DIR / "templates"


def ansible_dir() -> Path:
    """The playbook (``site.yml``), its roles and ``ansible.cfg``.

    ``PROVISION_ANSIBLE_DIR`` points at another copy (a team's own fork of the roles).
    """
    env = os.environ.get("PROVISION_ANSIBLE_DIR")
    return Path(env) if env else PACKAGE_DIR / "ansible"


def iam_policy_path() -> Path:
    """The minimal IAM policy `provision` needs on AWS (JSON)."""
    return PACKAGE_DIR / IAM_POLICY
