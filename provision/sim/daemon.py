"""The simulated region's process: moto's EC2 server, the AWS model and the watcher.

`provision sim up` runs `python -m provision.sim.daemon` in a session of its own,
logging to ``STATE_ROOT/daemon.log``. Server, model, metadata service and
watcher share one process so the daemon can seed what the EC2 API refuses to
create (the publishers' SSM parameters and AMIs) straight into moto's
in-process backends, graft AWS's timing and consistency onto them (`model`,
`prices`), and so one SIGTERM takes everything down: hosts, bridges, server,
state file.

The watcher is the only code that turns instances into hosts. It reads moto's
backend directly (the truth, not the eventually consistent API) and reconciles:
an instance `running` in the sim subnet gets a namespace host at its private IP
(and its public one, if it has one) some seconds later, when "sshd has booted";
a host whose instance is gone, shutting down or replaced is removed with
everything running on it. It also enacts the spot interruptions that
`provision sim interrupt` announced, when their notice runs out.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from provision.sim import hosts, images, model, net, prices
from provision.sim.hostfs import Login
from provision.sim.imds import Imds, read_notice
from provision.sim.state import (
    INTERRUPTS,
    PREFIXLEN,
    REGION_NAME,
    SIM_TAG,
    SUBNET_CIDR,
    VPC_CIDR,
    ZONE,
    SimState,
    Timing,
    client,
    host_instance_id,
    remove_state,
    set_host_instance_id,
    write_state,
)

log = logging.getLogger("provision.sim.daemon")
DEFAULT_LOGIN = images.FAMILIES[0].login  # an image the sim does not know boots as Ubuntu


def backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    return ec2_backends[DEFAULT_ACCOUNT_ID][REGION_NAME]


def all_instances() -> Iterator[Any]:
    """Every instance moto holds, hidden ones included (the watcher sees the truth)."""
    for r in list(backend().reservations.values()):
        yield from list(r.instances)


# --- the world: VPC, subnet, images ---------------------------------------------------


class World:
    """VPC, subnet and images; re-created if a moto reset wipes them."""

    def __init__(self, endpoint: str, timing: Timing) -> None:
        self.endpoint = endpoint
        self.timing = timing
        self.state: SimState | None = None
        self.logins: dict[str, Login] = {}  # AMI id -> who logs in to its hosts

    def intact(self) -> bool:
        from moto.ec2.exceptions import InvalidSubnetIdError

        if self.state is None:
            return False
        try:
            backend().get_subnet(self.state.subnet_id)
        except InvalidSubnetIdError:
            return False
        return images.intact(REGION_NAME, self.state.images)

    def ensure(self) -> SimState:
        """Make sure VPC, subnet and images exist; (re)write the state if anything changed."""
        if self.state is not None and self.intact():
            return self.state
        ec2 = client("ec2", self.endpoint)
        tags = [{"Key": SIM_TAG, "Value": "true"}, {"Key": "Name", "Value": "provision-sim"}]
        vpc = ec2.create_vpc(
            CidrBlock=VPC_CIDR, TagSpecifications=[{"ResourceType": "vpc", "Tags": tags}]
        )["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(
            VpcId=vpc, CidrBlock=SUBNET_CIDR, AvailabilityZone=ZONE,
            TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}],
        )["Subnet"]["SubnetId"]
        params, self.logins = images.seed(REGION_NAME)
        again = self.state is not None
        self.state = SimState(
            endpoint=self.endpoint, pid=os.getpid(), vpc_id=vpc, subnet_id=subnet,
            region_name=REGION_NAME,
            started_at=self.state.started_at if self.state else time.time(),
            timing={k: list(v) for k, v in self.timing.__dict__.items()}, images=params,
        )
        write_state(self.state)
        log.info("world %s: vpc %s, subnet %s, %d images", "re-created after a reset"
                 if again else "created", vpc, subnet, len(set(params.values())))
        return self.state


# --- the watcher ----------------------------------------------------------------------


def metadata(instance_id: str) -> dict[str, str] | None:
    """What the metadata service tells an instance about itself, from moto's record."""
    inst = next((i for i in all_instances() if i.id == instance_id), None)
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
    """Reconciles namespace hosts with what moto says is running in the subnet."""

    def __init__(self, world: World, imds: Imds, rng: random.Random) -> None:
        self.world = world
        self.imds = imds
        self.rng = rng
        self.boot_at: dict[str, float] = {}  # instance id -> when its sshd "has booted"

    def _running(self) -> dict[str, Any]:
        """Private IP -> instance, for instances running in the sim subnet."""
        subnet = self.world.state.subnet_id if self.world.state else None
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

    def interrupt_due(self) -> None:
        """Terminate instances whose spot interruption notice has run out."""
        now = dt.datetime.now(dt.timezone.utc)
        for f in sorted(INTERRUPTS.glob("*.json")) if INTERRUPTS.exists() else []:
            iid = f.stem
            notice = read_notice(INTERRUPTS, iid)
            if notice is not None and dt.datetime.fromisoformat(notice["time"]) > now:
                continue
            inst = next((i for i in all_instances() if i.id == iid), None)
            if inst is not None and inst.state not in ("shutting-down", "terminated"):
                backend().terminate_instances([iid])
                inst.state_reason.message, inst.state_reason.code = model.SPOT_REASON
                inst._reason = "Server.SpotInstanceTermination"
                log.info("%s interrupted (spot)", iid)
            for h in hosts.list_hosts():
                if host_instance_id(h.name) == iid:
                    self.imds.stop(h.name)
                    hosts.stop_host(h.name)
            f.unlink(missing_ok=True)

    def step(self) -> None:
        self.interrupt_due()
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
            # Terminated, stopped, wiped by a reset, or the IP now belongs to another instance.
            log.info("host %s (%s, %s) removed: its instance is not running", host.name,
                     host.ip, iid)
            self.imds.stop(host.name)
            hosts.stop_host(host.name)
        self.imds.keep_only({hosts.netns_name(ip) for ip in have})
        for ip, inst in sorted(want.items()):
            due = self.boot_at.setdefault(inst.id, now + self.rng.uniform(*self.world.timing.ssh))
            if ip in have or now < due:
                continue
            login = self.world.logins.get(inst.image_id, DEFAULT_LOGIN)
            host = hosts.start_host(
                ip, PREFIXLEN, self._public_key(inst), hostname=f"ip-{ip.replace('.', '-')}",
                public_ip=inst.nics[0].public_ip, login=login,
            )
            set_host_instance_id(host.name, inst.id)
            self.imds.start(host.name, inst.id)
            log.info("host %s up for %s at %s/%s as %s (sshd %s)", host.name, inst.id, ip,
                     host.public_ip or "-", login.user, host.sshd_pid)


# --- process plumbing ---------------------------------------------------------------


def _become_subreaper() -> None:
    """Adopt orphans of SSH sessions (nohup'd jobs) so they are reaped here.

    Otherwise they go to PID 1, which in containers and microVMs may reap late
    or never (here: ~1.5 s), and a killed job lingers as a zombie meanwhile.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        log.warning("could not become a child subreaper; orphans go to PID 1")


def reap() -> None:
    """Collect exited children (sshds, adopted orphans) so no zombie piles up."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run(timing: Timing, poll: float, seed: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then remove every host, the bridges and the state."""
    from moto.server import ThreadedMotoServer

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    _become_subreaper()
    hosts.check_requirements()
    rng = random.Random(seed)
    model.install(model.Model(timing, net.PUBLIC_POOL, rng.randrange(2**32)))
    prices.install()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    imds = Imds(metadata, INTERRUPTS)
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        net.ensure_planes()
        world = World(endpoint, timing)
        world.ensure()
        watcher = Watcher(world, imds, rng)
        log.info("serving on %s (pid %d); timing: %s", endpoint, os.getpid(), timing.describe())
        while not stop.is_set():
            try:
                model.current().tick()
                world.ensure()
                watcher.step()
            except Exception:  # keep watching: one bad poll must not kill the region
                log.exception("watcher step failed")
            reap()
            stop.wait(poll)
    finally:
        log.info("stopping: removing hosts and bridges")
        imds.stop_all()
        hosts.stop_all_hosts()
        net.remove_planes()
        server.stop()
        remove_state(os.getpid())
        reap()
        log.info("stopped")


def _range(text: str) -> tuple[float, float]:
    """`2:4` (uniform between), or `3` (always)."""
    try:
        lo, _, hi = text.partition(":")
        r = (float(lo), float(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, LOW:HIGH or N") from None
    if not 0 <= r[0] <= r[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LOW <= HIGH")
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m provision.sim.daemon", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Timing()
    for flag, default, what in (
        ("--pending", d.pending, "an instance stays pending"),
        ("--ssh-delay", d.ssh, "from running until the host answers SSH"),
        ("--shutting-down", d.shutting_down, "an instance stays shutting-down"),
        ("--not-found", d.not_found, "a new id stays unknown to the API"),
    ):
        p.add_argument(flag, type=_range, default=default,
                       help=f"seconds {what}, LOW:HIGH (default {default[0]:g}:{default[1]:g})")
    p.add_argument("--instant", action="store_true",
                   help="no delays and a consistent API (all of the above 0)")
    p.add_argument("--seed", type=int, help="seed the random delays (reproducible runs)")
    p.add_argument("--poll", type=float, default=0.2, help="watcher poll interval, seconds")
    p.add_argument("--state-dir",
                   help="the region's state directory (must match PROVISION_SIM_DIR/ID)")
    args = p.parse_args(argv)
    if args.state_dir is not None and (
        os.path.realpath(args.state_dir) != os.path.realpath(hosts.STATE_ROOT)
    ):
        p.error(f"--state-dir {args.state_dir} is not this region's {hosts.STATE_ROOT}")
    timing = Timing.instant() if args.instant else Timing(
        args.pending, args.ssh_delay, args.shutting_down, args.not_found
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("werkzeug", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(timing, args.poll, args.seed)
    except hosts.SimError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
