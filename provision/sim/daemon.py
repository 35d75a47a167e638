"""The simulated region's process: moto's EC2 server, the AWS model and the watcher.

`provision sim up` runs `python -m provision.sim.daemon` in a session of its own,
logging to ``STATE_ROOT/daemon.log``. Server, model, metadata service and
watcher share one process so the daemon can seed what the EC2 API refuses to
create (the publishers' SSM parameters and AMIs) straight into moto's
in-process backends, graft AWS's timing and consistency onto them (`model`,
`prices`), and so one SIGTERM takes everything down: hosts, bridges, server,
state file.

The watcher (`watcher`) is the only code that turns instances into hosts, and
what happens on hosts (an OS shutdown, a CreateImage) into instance events.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import random
import signal
import threading
import time

from provision.sim import disks, faults, hosts, images, model, net, prices, spot
from provision.sim.imds import Imds
from provision.sim.model import backend
from provision.sim.state import (
    INTERRUPTS,
    REGION_NAME,
    SIM_TAG,
    SUBNET_CIDR,
    VPC_CIDR,
    ZONE,
    SimState,
    Timing,
    client,
    remove_state,
    write_state,
)
from provision.sim.watcher import Watcher, metadata

log = logging.getLogger("provision.sim.daemon")


# --- the world: VPC, subnet, images ---------------------------------------------------


class World:
    """VPC, subnet and images; re-created if a moto reset wipes them."""

    def __init__(self, endpoint: str, timing: Timing) -> None:
        self.endpoint = endpoint
        self.timing = timing
        self.state: SimState | None = None

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
        params = images.seed(REGION_NAME)
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
    spot.install()
    images.install()
    prices.install()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    imds = Imds(metadata, INTERRUPTS)
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        net.ensure_planes()
        world = World(endpoint, timing)
        world.ensure()
        watcher = Watcher(lambda: world.state.subnet_id if world.state else None, timing, imds,
                          rng)
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
        disks.remove_all()
        faults.remove_all()
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
