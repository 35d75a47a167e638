"""The simulated region: EC2 on this machine, as unkind as AWS where it matters.

`up()` starts a daemon running moto's EC2 server on 127.0.0.1 with a VPC and a
private subnet (10.<77+id>.0.0/24), publishers' images behind AWS's SSM
parameters, AWS's timing and eventual consistency (`instant=True` switches them
off) and a watcher that turns every running instance into a network-namespace
host: its own sshd, users, /etc files, home and metadata service, reachable from
this machine only at its public address (198.18.<id>.0/24) if its launch asked
for one. Terminating the instance removes the host; `interrupt()` announces a
spot interruption on the host's metadata, then terminates it; `cut()`/`heal()`
silence and restore the laptop's link to one host; `disk()` shrinks a host's
/srv. From inside a host, `sudo poweroff` stops or terminates its instance as
on EC2, and CreateImage bakes a host's disk into an AMI. `region()` is the
`Region` provision code is handed for `--region sim`: outside this package
nothing knows the region is simulated.

Needs root, iproute2, openssh-server and sudo (see `hosts.check_requirements`).
"""

from provision.sim.control import down, interrupt, region, status, up
from provision.sim.faults import cut, disk, heal
from provision.sim.hosts import SimError
from provision.sim.state import SimHost, SimState, Timing

__all__ = [
    "SimError", "SimHost", "SimState", "Timing", "cut", "disk", "down", "heal", "interrupt",
    "region", "status", "up",
]
