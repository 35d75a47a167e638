"""The watcher: the only code that turns instances into hosts, and hosts into instance events.

It reads moto's backend directly (the truth, not the eventually consistent API)
and, on every poll of the daemon:

- enacts spot interruptions `provision sim interrupt` announced, when their
  notice runs out (the spot request is marked at once, closed at the end);
- enacts what a host's OS asked for (`power`): poweroff stops or terminates
  the instance, halt leaves it running but dead and unreachable, reboot
  restarts its host;
- carries out CreateImage (`images`): captures the instance's disk into the
  image's snapshot, rebooting it first unless NoReboot, then makes the image
  `available`;
- reconciles hosts with instances: an instance `running` in the sim subnet gets
  a namespace host at its private IP (and public one) some seconds later, when
  "sshd has booted", with its disk from an earlier life (a stop, a reboot, the
  baked image it was launched from); a host whose instance is stopping keeps
  its disk for the next start; a host whose instance is gone, shutting down or
  replaced is removed with everything running on it;
- keeps cuts in force and lifts them on time (`faults`), and drops the disks of
  instances and snapshots that no longer exist.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from provision.sim import disks, faults, hosts, images, model, net, power, spot
from provision.sim.imds import Imds, read_notice
from provision.sim.model import all_instances, backend, find_instance
from provision.sim.state import (
    INTERRUPTS,
    PREFIXLEN,
    REGION_NAME,
    ZONE,
    Timing,
    host_instance_id,
    set_host_instance_id,
)

log = logging.getLogger("provision.sim.watcher")
GONE = ("shutting-down", "terminated")


def metadata(instance_id: str) -> dict[str, str] | None:
    """What the metadata service tells an instance about itself, from moto's record."""
    inst = find_instance(instance_id)
    if inst is None or inst.state == "terminated":
        return None
    private = inst.private_ip or ""
    name = f"ip-{private.replace('.', '-')}.ec2.internal"
    return {
        "ami-id": inst.image_id, "instance-id": inst.id, "instance-type": inst.instance_type,
        "local-ipv4": private, "local-hostname": name, "hostname": name,
        "public-ipv4": inst.nics[0].public_ip or "",
        "placement/availability-zone": inst.placement.zone or ZONE,
        "placement/region": REGION_NAME,
        "instance-life-cycle": "spot" if inst.lifecycle == "spot" else "on-demand",
        "http-tokens": inst.metadata_options.http_tokens, "arch": inst.architecture,
    }


class Watcher:
    """Reconciles namespace hosts with what moto says, and enacts what hosts ask for."""

    def __init__(self, subnet: Callable[[], str | None], timing: Timing, imds: Imds,
                 rng: random.Random) -> None:
        self.subnet = subnet
        self.timing = timing
        self.imds = imds
        self.rng = rng
        self.boot_at: dict[str, float] = {}  # instance id -> when its sshd "has booted"

    def step(self) -> None:
        self.interrupt_due()
        self.power_due()
        self.capture_due()
        for iid in model.current().take_reboots():
            host, inst = faults.host_for(iid), find_instance(iid)
            if host is not None and inst is not None and inst.state == "running":
                self.restart(host, inst)
        self.reconcile()
        faults.enforce_cuts()
        disks.gc({i.id for i in all_instances() if i.state not in GONE},
                 set(backend().snapshots))

    # --- what happens to instances ------------------------------------------------

    def interrupt_due(self) -> None:
        """Mark announced interruptions; terminate instances whose notice has run out."""
        now = dt.datetime.now(dt.timezone.utc)
        for f in sorted(INTERRUPTS.glob("*.json")) if INTERRUPTS.exists() else []:
            iid = f.stem
            notice = read_notice(INTERRUPTS, iid)
            inst = find_instance(iid)
            if notice is not None and dt.datetime.fromisoformat(notice["time"]) > now:
                if inst is not None:
                    spot.marked(inst)
                continue
            if inst is not None and inst.state not in GONE:
                backend().terminate_instances([iid])
                model.set_reason(inst, model.SPOT_REASON)
                inst._reason = "Server.SpotInstanceTermination"
                spot.interrupted(inst)
                log.info("%s interrupted (spot)", iid)
            host = faults.host_for(iid)
            if host is not None:
                self.remove(host)
            f.unlink(missing_ok=True)

    def power_due(self) -> None:
        """Enact the poweroff, halt and reboot that hosts' OSes asked for (see `power`)."""
        for host in hosts.list_hosts():
            action = power.due(host.dir)
            inst = find_instance(host_instance_id(host.name)) if action else None
            if inst is None or inst.state != "running":
                continue
            log.info("%s: %s from its OS", inst.id, action)
            if action == "reboot":
                self.restart(host, inst)
            elif action == "halt":  # the CPU halts; the instance runs on, unreachable
                net.block(host, ("private", "public"))
                (host.dir / faults.HALTED).touch()
                hosts.kill_processes(host.name)
            else:
                if spot.shutdown_behavior(inst) == "terminate":
                    backend().terminate_instances([inst.id])
                else:
                    backend().stop_instances([inst.id])
                model.set_reason(inst, model.OS_SHUTDOWN_REASON)

    def capture_due(self) -> None:
        """Carry out pending CreateImage calls, oldest first."""
        while images.CAPTURES:
            c = images.CAPTURES[0]
            image, snap = backend().amis.get(c.image_id), backend().snapshots.get(c.snapshot_id)
            inst, host = find_instance(c.instance_id), faults.host_for(c.instance_id)
            out = disks.snapshot_file(c.snapshot_id)
            if image is None or snap is None:  # deregistered or deleted meanwhile
                pass
            elif inst is None or inst.state in GONE:
                image.state, snap.status = "failed", "error"
            elif inst.state in ("stopping", "stopped"):
                if disks.volume_file(inst.id).exists():
                    hosts.share(disks.volume_file(inst.id), out)
                elif host is not None:
                    return  # its disk is saved when its host goes
                else:
                    disks.empty(out)
            elif host is None or host.sshd_pid is None:
                return  # not booted yet
            else:
                if c.reboot:  # AWS shuts the instance down for a consistent snapshot
                    hosts.kill_processes(host.name)
                size, took = disks.capture(host, out)
                log.info("%s: captured %s's disk for %s: %d bytes in %.2fs", c.snapshot_id,
                         inst.id, c.image_id, size, took)
                if c.reboot:
                    hosts.share(out, disks.volume_file(inst.id))
                    self.restart(host, inst, saved=True)
            if image is not None and image.state == "pending":
                image.state, snap.status = "available", "completed"
            images.CAPTURES.popleft()

    # --- hosts ------------------------------------------------------------------

    def _running(self) -> dict[str, Any]:
        """Private IP -> instance, for instances running in the sim subnet."""
        subnet = self.subnet()
        return {
            i.private_ip: i for i in all_instances()
            if i.state == "running" and i.subnet_id == subnet and i.private_ip
        }

    def _public_key(self, inst: Any) -> str:
        """The instance key pair's public key: what cloud-init puts in authorized_keys."""
        kp = backend().key_pairs.get(inst.key_name or "")
        if kp is None:
            log.warning("%s: no key pair %r; nobody can log in", inst.id, inst.key_name)
            return ""
        return str(kp.public_key)

    def _disk(self, inst: Any) -> Any:
        """The files the instance's host starts with: its own disk, else its image's."""
        own = disks.volume_file(inst.id)
        if own.exists():
            return own
        image = backend().amis.get(inst.image_id)
        snap = getattr(image, "ebs_snapshot", None)
        baked = disks.snapshot_file(snap.id) if snap is not None else None
        return baked if baked is not None and baked.exists() else None

    def remove(self, host: hosts.Host) -> None:
        self.imds.stop(host.name)
        hosts.stop_host(host.name)

    def restart(self, host: hosts.Host, inst: Any, *, saved: bool = False) -> None:
        """Reboot: processes end, the disk is kept, sshd answers again some seconds later."""
        if not saved:
            hosts.kill_processes(host.name)
            disks.capture(host, disks.volume_file(inst.id))
        self.remove(host)
        self.boot_at[inst.id] = time.monotonic() + self.rng.uniform(*self.timing.ssh)
        log.info("%s rebooting", inst.id)

    def reconcile(self) -> None:
        want = self._running()
        now = time.monotonic()
        ids = {inst.id for inst in want.values()}
        self.boot_at = {i: t for i, t in self.boot_at.items() if i in ids}
        have = set()
        for host in hosts.list_hosts():
            inst = want.get(host.ip)
            iid = host_instance_id(host.name)
            if inst is not None and inst.id == iid:
                have.add(host.ip)
                continue
            old = find_instance(iid)
            if old is not None and old.state in ("stopping", "stopped") and host.sshd_pid:
                hosts.kill_processes(host.name)  # the OS shuts down; its EBS disk stays
                size, _ = disks.capture(host, disks.volume_file(old.id))
                log.info("%s stopped: kept its disk (%d bytes)", old.id, size)
            # Stopped, terminated, wiped by a reset, or the IP now belongs to another instance.
            log.info("host %s (%s, %s) removed: its instance is not running", host.name,
                     host.ip, iid)
            self.remove(host)
        self.imds.keep_only({hosts.netns_name(ip) for ip in have})
        for ip, inst in sorted(want.items()):
            due = self.boot_at.setdefault(inst.id, now + self.rng.uniform(*self.timing.ssh))
            if ip in have or now < due:
                continue
            login = images.login_for(inst.image_id)
            host = hosts.start_host(
                ip, PREFIXLEN, self._public_key(inst), hostname=f"ip-{ip.replace('.', '-')}",
                public_ip=inst.nics[0].public_ip, login=login, restore=self._disk(inst),
                host_key=disks.host_key(inst.id),
            )
            disks.volume_file(inst.id).unlink(missing_ok=True)  # its files live in the host now
            set_host_instance_id(host.name, inst.id)
            self.imds.start(host.name, inst.id)
            log.info("host %s up for %s at %s/%s as %s (sshd %s)", host.name, inst.id, ip,
                     host.public_ip or "-", login.user, host.sshd_pid)
