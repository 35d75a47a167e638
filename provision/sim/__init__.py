"""The simulated region: EC2 on this machine, for tests and for trying provision offline.

`up()` starts a daemon running moto's EC2 server on 127.0.0.1 with a VPC and the
subnet 10.77.0.0/24, and a watcher that turns every instance running in that
subnet into a network-namespace host with its own sshd at the instance's private
IP. Terminating the instance removes the host; `interrupt()` does both at once,
like a spot interruption. `region()` is the `Region` provision code is handed
for `--region sim`: outside this package nothing knows the region is simulated.

Needs root, iproute2 and openssh-server (see `hosts.check_requirements`).
"""

from provision.sim.control import down, interrupt, region, status, up
from provision.sim.hosts import SimError
from provision.sim.state import SimHost, SimState

__all__ = ["SimError", "SimHost", "SimState", "down", "interrupt", "region", "status", "up"]
