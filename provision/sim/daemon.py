"""The simulated region's process: moto's EC2 server plus the watcher.

`provision sim up` runs `python -m provision.sim.daemon` in a session of its own,
logging to ``STATE_ROOT/daemon.log``. Server and watcher share one process so
the daemon can seed what the EC2 API refuses to create (Canonical's public SSM
parameter and AMIs) straight into moto's in-process backends, and so one
SIGTERM takes everything down: hosts, bridge, server, state file.

The watcher is the only code that turns instances into hosts. It polls
`describe_instances` and reconciles: an instance `running` in the sim subnet
gets a namespace host at its private IP (after `boot_delay`, so callers really
wait for SSH); a host whose instance is gone, stopped or replaced is removed
with everything running on it.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import logging
import os
import signal
import threading
import time
from typing import Any

from botocore.exceptions import ClientError

from provision.sim import hosts
from provision.sim.state import (
    GATEWAY,
    PREFIXLEN,
    REGION_NAME,
    SIM_TAG,
    SUBNET_CIDR,
    VPC_CIDR,
    SimState,
    client,
    host_instance_id,
    remove_state,
    set_host_instance_id,
    write_state,
)

log = logging.getLogger("provision.sim.daemon")

CANONICAL = "099720109477"
# The public parameters provision resolves images through, as on AWS.
UBUNTU_PARAMS = {
    arch: f"/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
    for arch in ("amd64", "arm64")
}
_MOTO_ARCH = {"amd64": "x86_64", "arm64": "arm64"}


# --- the world: VPC, subnet, Ubuntu images ------------------------------------------


def _seed_ubuntu_images() -> dict[str, str]:
    """Register Ubuntu 24.04 AMIs and Canonical's SSM parameters inside moto.

    The API forbids writing under /aws ("reserved parameter name") and offers no
    way to create an image owned by Canonical, so this goes to the backends of
    this process, which the threaded server serves.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami
    from moto.ec2.utils import random_ami_id
    from moto.ssm.models import Parameter, ssm_backends

    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][REGION_NAME]
    ssm = ssm_backends[DEFAULT_ACCOUNT_ID][REGION_NAME]
    images = {}
    for arch, path in UBUNTU_PARAMS.items():
        ami_id = random_ami_id()
        ec2.amis[ami_id] = Ami(
            ec2,
            ami_id,
            name=f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-20250101",
            description=f"Canonical, Ubuntu, 24.04, {arch} noble image (provision sim)",
            owner_id=CANONICAL,
            public=True,
            virtualization_type="hvm",
            architecture=_MOTO_ARCH[arch],
            hypervisor="xen",
            root_device_type="ebs",
            root_device_name="/dev/sda1",
            region_name=f"{REGION_NAME}a",
        )
        ssm._parameters[path].append(
            Parameter(
                account_id=DEFAULT_ACCOUNT_ID,
                name=path,
                value=ami_id,
                parameter_type="String",
                description=None,
                allowed_pattern=None,
                keyid=None,
                last_modified_date=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                version=len(ssm._parameters[path]) + 1,
                data_type="aws:ec2:image",
            )
        )
        images[arch] = ami_id
    return images


def _world_intact(st: SimState) -> bool:
    """Whether subnet, images and parameters are all still there (a moto reset wipes them).

    Asked of the in-process backends, not over HTTP, so it is cheap enough for every poll.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.exceptions import InvalidSubnetIdError
    from moto.ec2.models import ec2_backends
    from moto.ssm.models import ssm_backends

    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][REGION_NAME]
    ssm = ssm_backends[DEFAULT_ACCOUNT_ID][REGION_NAME]
    try:
        ec2.get_subnet(st.subnet_id)
    except InvalidSubnetIdError:
        return False
    return all(a in ec2.amis for a in st.images.values()) and all(
        p in ssm._parameters for p in UBUNTU_PARAMS.values()
    )


def ensure_world(endpoint: str, boot_delay: float, current: SimState | None) -> SimState:
    """Make sure VPC, subnet and images exist; (re)write the state if anything changed."""
    if current is not None and _world_intact(current):
        return current
    ec2 = client("ec2", endpoint)
    tags = [{"Key": SIM_TAG, "Value": "true"}, {"Key": "Name", "Value": "provision-sim"}]
    vpc = ec2.create_vpc(
        CidrBlock=VPC_CIDR, TagSpecifications=[{"ResourceType": "vpc", "Tags": tags}]
    )["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(
        VpcId=vpc,
        CidrBlock=SUBNET_CIDR,
        AvailabilityZone=f"{REGION_NAME}a",
        TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}],
    )["Subnet"]["SubnetId"]
    st = SimState(
        endpoint=endpoint,
        pid=os.getpid(),
        vpc_id=vpc,
        subnet_id=subnet,
        region_name=REGION_NAME,
        boot_delay=boot_delay,
        started_at=current.started_at if current else time.time(),
        images=_seed_ubuntu_images(),
    )
    write_state(st)
    log.info("world %s: vpc %s, subnet %s, images %s",
             "re-created after a reset" if current else "created", vpc, subnet, st.images)
    return st


# --- the watcher --------------------------------------------------------------------


class Watcher:
    """Reconciles namespace hosts with what moto says is running in the subnet."""

    def __init__(self, endpoint: str, subnet_id: str, boot_delay: float) -> None:
        self.ec2 = client("ec2", endpoint)
        self.subnet_id = subnet_id
        self.boot_delay = boot_delay
        self.seen_running: dict[str, float] = {}  # instance id -> first seen running

    def _running(self) -> dict[str, dict[str, Any]]:
        """Private IP -> instance, for instances running in the sim subnet."""
        out = {}
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "subnet-id", "Values": [self.subnet_id]}]
        )
        for page in pages:
            for res in page["Reservations"]:
                for inst in res["Instances"]:
                    ip = inst.get("PrivateIpAddress")
                    if inst["State"]["Name"] == "running" and ip:
                        out[ip] = inst
        return out

    def _public_key(self, inst: dict[str, Any]) -> str:
        """The instance key pair's public key: what EC2 would put in authorized_keys."""
        name = inst.get("KeyName")
        if not name:
            return ""
        try:
            kp = self.ec2.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)["KeyPairs"]
        except ClientError as e:
            log.warning("%s: key pair %s: %s; nobody can log in", inst["InstanceId"], name, e)
            return ""
        return kp[0].get("PublicKey", "") if kp else ""

    def step(self) -> None:
        want = self._running()
        now = time.monotonic()
        ids = {inst["InstanceId"] for inst in want.values()}
        self.seen_running = {i: t for i, t in self.seen_running.items() if i in ids}
        have = set()
        for host in hosts.list_hosts():
            inst = want.get(host.ip)
            iid = host_instance_id(host.name)
            if inst is not None and inst["InstanceId"] == iid:
                have.add(host.ip)
                continue
            # Terminated, stopped, wiped by a reset, or the IP now belongs to another instance.
            log.info("host %s (%s, %s) removed: its instance is not running", host.name, host.ip, iid)
            hosts.stop_host(host.name)
        for ip, inst in sorted(want.items()):
            iid = inst["InstanceId"]
            first = self.seen_running.setdefault(iid, now)
            if ip in have or now - first < self.boot_delay:
                continue
            host = hosts.start_host(
                ip, PREFIXLEN, self._public_key(inst), hostname=f"ip-{ip.replace('.', '-')}"
            )
            set_host_instance_id(host.name, iid)
            log.info("host %s up for %s at %s (sshd %s)", host.name, iid, ip, host.sshd_pid)


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


def run(boot_delay: float, poll: float) -> None:
    """Serve until SIGTERM/SIGINT, then remove every host, the bridge and the state."""
    from moto.server import ThreadedMotoServer

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    _become_subreaper()
    hosts.check_requirements()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        hosts.ensure_bridge(f"{GATEWAY}/{PREFIXLEN}")
        st = ensure_world(endpoint, boot_delay, None)
        watcher = Watcher(endpoint, st.subnet_id, boot_delay)
        log.info("serving on %s (pid %d, boot delay %.2fs)", endpoint, os.getpid(), boot_delay)
        while not stop.is_set():
            try:
                st = ensure_world(endpoint, boot_delay, st)
                watcher.subnet_id = st.subnet_id
                watcher.step()
            except Exception:  # keep watching: one bad poll must not kill the region
                log.exception("watcher step failed")
            reap()
            stop.wait(poll)
    finally:
        log.info("stopping: removing hosts and bridge")
        hosts.stop_all_hosts()
        hosts.remove_bridge()
        server.stop()
        remove_state(os.getpid())
        reap()
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m provision.sim.daemon", description=__doc__)
    p.add_argument("--boot-delay", type=float, default=1.0,
                   help="seconds between an instance running and its host answering SSH")
    p.add_argument("--poll", type=float, default=0.3, help="watcher poll interval, seconds")
    p.add_argument("--state-dir", help="the region's state directory (must match PROVISION_SIM_DIR/ID)")
    args = p.parse_args(argv)
    if args.state_dir is not None and os.path.realpath(args.state_dir) != os.path.realpath(hosts.STATE_ROOT):
        p.error(f"--state-dir {args.state_dir} is not this region's {hosts.STATE_ROOT}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("werkzeug", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(args.boot_delay, args.poll)
    except hosts.SimError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
