"""The cluster's own SSH keys, as shell run on its nodes: made once, authorised once.

Two keys live on the master: the relay's (`provision.nodes.relay`, to forward
artefacts to the workers) and the autostop agent's (`provision.nodes.autostop`,
to power them off). Both are made where they are used (the private half never
leaves the node) and let in on the workers the same way, so both are made and
authorised here; each caller keeps what differs: where the key lives, its
comment (what `provision.nodes.bake` finds its lines by) and the options of its
authorized_keys line (the autostop key's forced command).
"""

from __future__ import annotations

import shlex

KEY_NAME = "id_ed25519"
AUTHORIZED_KEYS = "~/.ssh/authorized_keys"  # unquoted: the node's shell expands ~


def ensure_key_script(key_dir: str, comment: str) -> str:
    """Shell printing the public half of ``{key_dir}/id_ed25519``, generating the pair
    the first time (0600 in a 0700 directory). Idempotent and safe to run from
    several threads at once: ``flock``, and ssh-keygen into a temp name renamed
    into place, so no run sees half a key or replaces one another run handed out."""
    d = shlex.quote(key_dir)
    key = f"{d}/{KEY_NAME}"
    return (
        f"umask 077 && mkdir -p {d} && chmod 700 {d} && flock {d}/.lock sh -c "
        + shlex.quote(
            f"test -s {key}.pub || {{ rm -f {key}.new {key}.new.pub && "
            f"ssh-keygen -q -t ed25519 -N '' -C {shlex.quote(comment)} -f {key}.new && "
            f"mv {key}.new.pub {key}.pub && mv {key}.new {key}; }}"
        )
        + f" && cat {key}.pub"
    )


def authorize_script(line: str) -> str:
    """Shell adding `line` (a public key, with any options before it) to the login
    user's authorized_keys, unless it is there already (idempotent)."""
    q, keys = shlex.quote(line), AUTHORIZED_KEYS
    return (f"umask 077 && mkdir -p ~/.ssh && touch {keys} && "
            f"{{ grep -qxF {q} {keys} || printf '%s\\n' {q} >> {keys}; }}")
