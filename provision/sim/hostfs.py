"""What a simulated host's file system looks like from inside: the image's view.

A host is this machine's OS seen through a private mount namespace. For an
image with a login user (`ubuntu`, `ec2-user`, `admin`) the host gets, as a
cloud image booted by cloud-init would:

- its own /etc/passwd, group, shadow, gshadow, hosts, hostname and
  /etc/sudoers.d (the user with passwordless sudo), bind-mounted from the host's
  directory, so this machine's /etc is never written;
- fresh, empty /home (with the user's ~/.ssh/authorized_keys holding the
  instance's key pair), /root, /tmp, /srv, /run, and every top-level directory
  that is the laptop's rather than the OS's (/work, /opt, ...) hidden under an
  empty tmpfs: a host cannot see the laptop's Python, checkouts or keys;
- an sshd that refuses root (`PermitRootLogin no`), as the clouds' images do;
- for an image without a usable python3, /usr/bin without python3* (an overlay
  whose upper layer holds whiteouts);
- its own systemctl, poweroff, halt, reboot and shutdown (an overlay on
  /usr/sbin, whatever this machine has there): the script of `power`, which
  asks the daemon to shut the instance down;
- the files of its root volume from an earlier life (a stop, a reboot, or the
  baked image it was launched from; see `disks`), unpacked before sshd starts;
  the instance's key is then added to ~/.ssh/authorized_keys, as cloud-init
  adds it (a baked image keeps the keys it was baked with).

`user="root"` keeps the base recipe's host (root login, /root and /tmp shared,
the machine's users): for tests that need namespace hosts, not images.
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
INSIDE = "/run/sim"  # where the host's directory is seen from inside the host
# Top-level directories an OS image has; everything else at / is the laptop's.
OS_DIRS = {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run",
           "sbin", "sys", "usr", "var", "lost+found"}
PRIVATE_DIRS = {"home": "755", "root": "700", "tmp": "1777", "srv": "755", "mnt": "755",
                "media": "755"}
_ETC_FILES = ("passwd", "group", "shadow", "gshadow", "hosts", "hostname")
POWER_BIN = "power-bin"  # in the host's directory: see `power.install`


@dataclass(frozen=True)
class Login:
    """Who logs in to a host, and whether its image has a python3 the client can use."""

    user: str = "root"
    python: bool = True
    groups: tuple[str, ...] = ("adm", "sudo")  # supplementary groups (those that exist)

    @property
    def is_root(self) -> bool:
        return self.user == "root"


ROOT_LOGIN = Login()


def _free_id(lines: list[str], start: int = 1000) -> int:
    used = {int(f[2]) for f in (line.split(":") for line in lines) if len(f) > 2 and f[2].isdigit()}
    n = start
    while n in used:
        n += 1
    return n


def write_etc(d: Path, login: Login, ip: str, hostname: str) -> int:
    """The host's own /etc files under `d`/etc; returns the user's uid (= gid)."""
    etc = d / "etc"
    (etc / "sudoers.d").mkdir(parents=True, exist_ok=True)
    passwd = Path("/etc/passwd").read_text().splitlines()
    group = Path("/etc/group").read_text().splitlines()
    uid = _free_id(passwd + group)
    u = login.user
    passwd.append(f"{u}:x:{uid}:{uid}:{u}:/home/{u}:/bin/bash")
    out_groups = []
    for line in group:
        name, pw, gid, members = (line.split(":") + ["", "", "", ""])[:4]
        if name in login.groups:
            members = ",".join([m for m in members.split(",") if m] + [u])
        out_groups.append(f"{name}:{pw}:{gid}:{members}")
    out_groups.append(f"{u}:x:{uid}:")
    # "*": no password, yet not "locked" ("!"), which sshd without PAM would refuse.
    shadow = Path("/etc/shadow").read_text().splitlines() + [f"{u}:*:19700:0:99999:7:::"]
    gshadow_src = Path("/etc/gshadow")
    gshadow = gshadow_src.read_text().splitlines() if gshadow_src.exists() else []
    gshadow.append(f"{u}:!::")
    files = {
        "passwd": (passwd, 0o644),
        "group": (out_groups, 0o644),
        "shadow": (shadow, 0o640),
        "gshadow": (gshadow, 0o640),
        "hosts": (["127.0.0.1 localhost", f"{ip} {hostname}"], 0o644),
        "hostname": ([hostname], 0o644),
    }
    for name, (lines, mode) in files.items():
        path = etc / name
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, mode)
    sudoers = etc / "sudoers.d" / "90-cloud-init-users"
    sudoers.write_text(f"# Created by cloud-init (provision sim)\n{u} ALL=(ALL) NOPASSWD:ALL\n")
    os.chmod(sudoers, 0o440)
    return uid


def write_root_keys(d: Path, login: Login, authorized_keys: str) -> None:
    """root's keys as cloud-init writes them (disable_root): a login only says who to be.

    sshd refuses root before these are read; they make sure that, if it did not,
    root still would not get a shell.
    """
    say = (f"echo 'Please login as the user \\\"{login.user}\\\" rather than the user "
           "\\\"root\\\".';echo;sleep 10;exit 142")
    opts = f'no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="{say}"'
    keys = [f"{opts} {k}" for k in authorized_keys.splitlines() if k.strip()]
    (d / "root_authorized_keys").write_text("\n".join(keys) + "\n")
    os.chmod(d / "root_authorized_keys", 0o600)


def write_whiteouts(d: Path) -> Path:
    """An overlay layer that deletes python3* from /usr/bin (char device 0:0 = whiteout)."""
    wh = d / "no-python"
    wh.mkdir(exist_ok=True)
    for p in Path("/usr/bin").glob("python3*"):
        target = wh / p.name
        if not target.exists():
            os.mknod(target, 0o644 | stat.S_IFCHR, os.makedev(0, 0))
    return wh


def sshd_config(d: Path, ip: str, login: Login) -> str:
    """sshd as a cloud image runs it; paths are as seen from inside the host."""
    if login.is_root:  # the base recipe: listens on the private address, root by key
        lines = [f"ListenAddress {ip}", f"HostKey {d}/ssh_host_ed25519_key",
                 f"PidFile {d}/sshd.pid", f"AuthorizedKeysFile {d}/authorized_keys",
                 "PermitRootLogin prohibit-password", "StrictModes no"]
    else:
        lines = [f"HostKey {INSIDE}/ssh_host_ed25519_key", "PidFile /run/sshd.pid",
                 "AuthorizedKeysFile .ssh/authorized_keys", "PermitRootLogin no",
                 "StrictModes yes"]
    return "\n".join(lines + [
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "UseDNS no",
        "Subsystem sftp internal-sftp",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "AcceptEnv LANG LC_*",
        "",
    ])


def _power(d: str) -> str:
    """The host's shutdown commands over this machine's (sudo's PATH finds /usr/sbin first)."""
    return (f"mount -t overlay overlay -o lowerdir={d}/{POWER_BIN}:/usr/sbin /usr/sbin && "
            f"{{ [ ! -e /usr/bin/systemctl ] || "
            f"mount --bind {d}/{POWER_BIN}/systemctl /usr/bin/systemctl; }}")


def _restore(d: str) -> str:
    """Unpack the root volume's earlier files, if the host has any (see `disks`)."""
    return (f"if [ -f {d}/restore.tar ]; then tar -C / --numeric-owner -xpf {d}/restore.tar"
            f" && rm -f {d}/restore.tar; fi")


def boot_script(d: Path, login: Login, hostname: str, tmpfs_size: str, uid: int) -> str:
    """The shell script a host's mount namespace runs before it execs sshd."""
    q = shlex.quote
    if login.is_root:
        return "\n".join([
            "set -e",
            f"hostname {q(hostname)}",
            f"mount -t tmpfs -o size={tmpfs_size},mode=755 tmpfs /srv",
            "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/sshd",
            _power(q(str(d))),
            _restore(q(str(d))),
            f"exec {SSHD} -D -e -f {q(str(d))}/sshd_config",
        ])
    steps = [
        "set -e",
        f"hostname {q(hostname)}",
        "mount -t tmpfs -o mode=755 tmpfs /run",
        f"mkdir -p /run/sshd {INSIDE}",
        f"mount --bind {q(str(d))} {INSIDE}",
    ]
    hide = sorted(
        name for name in os.listdir("/")
        if name not in OS_DIRS and os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}")
    )
    for name in sorted(set(hide) | set(PRIVATE_DIRS)):
        if not os.path.isdir(f"/{name}"):
            continue
        mode = PRIVATE_DIRS.get(name, "755")
        size = f"size={tmpfs_size}," if name in ("home", "srv", "tmp") else "size=64m,"
        steps.append(f"mount -t tmpfs -o {size}mode={mode} tmpfs /{name}")
    for f in _ETC_FILES:
        steps.append(f"mount --bind {INSIDE}/etc/{f} /etc/{f}")
    steps.append(f"mount --bind {INSIDE}/etc/sudoers.d /etc/sudoers.d")
    if not login.python:
        steps.append(f"mount -t overlay overlay -o lowerdir={INSIDE}/no-python:/usr/bin /usr/bin")
    home = f"/home/{login.user}"
    keys = f"{q(home)}/.ssh/authorized_keys"
    steps += [
        _power(INSIDE),
        _restore(INSIDE),
        f"install -d -m 700 /root/.ssh && install -m 600 {INSIDE}/root_authorized_keys"
        " /root/.ssh/authorized_keys",
        f"install -d -m 755 -o {uid} -g {uid} {q(home)} && install -d -m 700 -o {uid} -g {uid}"
        f" {q(home)}/.ssh",
        # cloud-init adds the instance's key to what the image already holds
        f"touch {keys} && while IFS= read -r k; do grep -qxF \"$k\" {keys} ||"
        f" printf '%s\\n' \"$k\" >> {keys}; done < {INSIDE}/authorized_keys",
        f"chown {uid}:{uid} {keys} && chmod 600 {keys}",
        f"exec {SSHD} -D -e -f {INSIDE}/sshd_config",
    ]
    return "\n".join(steps)
