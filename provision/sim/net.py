"""The region's address plan and what this machine's routing table knows of it.

Two planes, as on EC2:

- the private plane (the VPC's subnet, 10.<77+id>.0.0/24) is a bridge with no
  address on this machine: hosts reach each other there, the laptop cannot;
- the public plane (198.18.<id>.0/24, from the benchmarking range RFC 2544
  reserves, so no real host can ever hold one) carries the public addresses of
  instances that asked for one, and the laptop's own side, .1, which stands for
  "the internet" as a host sees it (a package mirror the laptop serves lives
  there).

Both ranges get a low-priority blackhole route that outlives the region, so a
packet meant for a simulated host never leaves through the default gateway,
whether the region is up (the bridge's own route wins) or down (the blackhole
catches it). The metadata address 169.254.169.254 exists only on each host's
loopback; it is not routed here because this machine may have a real one.

Also here: the WAN between laptop and region (tc on the laptop side of the
public plane), outages of one host's link (`block`), and sockets opened inside
a host's network namespace.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import re
import socket
import threading
from pathlib import Path

from provision.sim import hosts
from provision.sim.hosts import SIM_ID, SimError, run

_NET = f"10.{77 + SIM_ID}"  # 10.77.x.x for region 0, 10.78.x.x for region 1, ...
SUBNET_CIDR = f"{_NET}.0.0/24"
VPC_CIDR = f"{_NET}.0.0/16"
# The subnet's router address, which AWS reserves (.1). Nothing holds it here:
# the private plane has no gateway, and the laptop no address on it.
GATEWAY = f"{_NET}.0.1"
PREFIXLEN = 24
PUBLIC_NET = f"198.18.{SIM_ID}"
PUBLIC_CIDR = f"{PUBLIC_NET}.0/24"
PUBLIC_GATEWAY = f"{PUBLIC_NET}.1"  # the laptop's side of the public plane
PUBLIC_POOL = [f"{PUBLIC_NET}.{n}" for n in range(10, 255)]  # handed to instances
METADATA_IP = "169.254.169.254"
# Below every route a region ever adds, so it is only the fallback.
BLACKHOLE_METRIC = 4_000_000_000
SIM_RANGES = (VPC_CIDR, PUBLIC_CIDR)


def ensure_blackholes() -> None:
    """Install the fallback blackholes for this region's ranges (idempotent)."""
    for cidr in SIM_RANGES:
        run("ip", "route", "replace", "blackhole", cidr, "metric", str(BLACKHOLE_METRIC))


def routes() -> list[str]:
    """This machine's routes into the region's ranges (not another region's), as `ip route`
    prints them."""
    ranges = [ipaddress.ip_network(c) for c in SIM_RANGES]

    def dst(line: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        for token in line.split()[:2]:  # "10.80.0.0/24 dev ..." or "blackhole 10.80.0.0/16 ..."
            try:
                return ipaddress.ip_network(token, strict=False)
            except ValueError:
                continue
        return None

    out = run("ip", "route", "show", "table", "all", check=False).stdout.splitlines()
    return [line.strip() for line in out
            if (d := dst(line)) is not None and any(d.overlaps(r) for r in ranges)]


def ensure_planes() -> None:
    """Blackholes first, then the private bridge (no address) and the public one (.1)."""
    ensure_blackholes()
    hosts.ensure_bridge(None)
    hosts.ensure_bridge(f"{PUBLIC_GATEWAY}/{PREFIXLEN}", hosts.PUBLIC_BRIDGE)


def remove_planes() -> None:
    hosts.remove_bridge()
    hosts.remove_bridge(hosts.PUBLIC_BRIDGE)
    ensure_blackholes()


# --- the WAN: laptop -> region ------------------------------------------------------

_RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit)$")
_DELAY = re.compile(r"^\d+(\.\d+)?(us|ms|s)$")
OFF = ("", "0", "off", "none")


def check_wan(uplink: str | None, rtt: str | None) -> None:
    """Reject malformed rates and delays before anything is touched."""
    if uplink is not None and uplink not in OFF and not _RATE.match(uplink):
        raise SimError(f"--uplink {uplink!r}: expected a rate such as 20mbit, 512kbit or off")
    if rtt is not None and rtt not in OFF and not _DELAY.match(rtt):
        raise SimError(f"--rtt {rtt!r}: expected a delay such as 40ms, 0.1s or off")


def shape_wan(uplink: str | None, rtt: str | None, wan_file: Path) -> dict[str, str]:
    """Shape what the laptop sends into the region: tbf for the rate, netem for the delay.

    The qdiscs sit on the public bridge's own device, which only frames the
    laptop sends pass through; host-to-host frames are switched between bridge
    ports and stay at LAN speed. The whole round-trip delay is added on the way
    in (the way back is not shaped), so a TCP round trip takes `rtt` longer.
    None keeps what is in force; "off" removes it.
    """
    check_wan(uplink, rtt)
    cur = read_wan(wan_file)
    want = {
        "uplink": cur.get("uplink", "") if uplink is None else ("" if uplink in OFF else uplink),
        "rtt": cur.get("rtt", "") if rtt is None else ("" if rtt in OFF else rtt),
    }
    dev = hosts.PUBLIC_BRIDGE
    if want["rtt"]:
        # A kernel without netem refuses the kind and leaves the device as it was.
        probe = run("tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", want["rtt"],
                    check=False)
        if "unknown" in probe.stderr:
            raise SimError(f"--rtt {want['rtt']}: this kernel has no netem qdisc "
                           "(CONFIG_NET_SCH_NETEM); --uplink (tbf) works without it")
    run("tc", "qdisc", "del", "dev", dev, "root", check=False)
    if want["uplink"]:
        # burst: a few full-size GSO frames; latency bounds the queue (bufferbloat
        # of a home router is more, but enough to keep a TCP stream busy).
        run("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf",
            "rate", want["uplink"], "burst", "64kb", "latency", "400ms")
    if want["rtt"]:
        parent = ["parent", "1:1"] if want["uplink"] else ["root"]
        run("tc", "qdisc", "add", "dev", dev, *parent, "handle", "10:", "netem",
            "delay", want["rtt"], "limit", "10000")
    if want["uplink"] or want["rtt"]:
        wan_file.write_text(json.dumps(want))
    else:
        wan_file.unlink(missing_ok=True)
    return want


def read_wan(wan_file: Path) -> dict[str, str]:
    try:
        return dict(json.loads(wan_file.read_text()))
    except (OSError, ValueError):
        return {}


def qdiscs() -> str:
    """What tc says is on the public bridge (for `status`: the truth, not the intent)."""
    return run("tc", "qdisc", "show", "dev", hosts.PUBLIC_BRIDGE, check=False).stdout.strip()


# --- outages: a host's link drops every frame -------------------------------------------

_PORT_DISABLED = "0"  # a bridge port's STP state: disabled forwards and learns nothing


def _ports(host: hosts.Host, planes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(bridge-side veth, plane) of the host's links on `planes` ("private", "public")."""
    n = host.name[len(hosts.NETNS_PREFIX):]
    ports = {"private": f"{hosts.VETH_PREFIX}{n}", "public": f"{hosts.PUBLIC_VETH_PREFIX}{n}"}
    return [(ports[p], p) for p in planes if Path(f"/sys/class/net/{ports[p]}").exists()]


def blocked(host: hosts.Host, plane: str = "public") -> bool:
    for veth, _ in _ports(host, (plane,)):
        try:
            return Path(f"/sys/class/net/{veth}/brport/state").read_text().strip() == _PORT_DISABLED
        except OSError:
            return False
    return False


def block(host: hosts.Host, planes: tuple[str, ...] = ("public",)) -> None:
    """Drop every frame to and from the host on `planes`, silently, as a dead link does.

    The bridge port stops forwarding (no RST, no ICMP: TCP just retransmits), and
    both ends keep a permanent ARP entry for the other, so neither learns "no
    route to host" from unanswered ARP: a connect times out, as across the internet.
    """
    for veth, plane in _ports(host, planes):
        run("bridge", "link", "set", "dev", veth, "state", _PORT_DISABLED)
        if plane == "public" and host.public_ip:
            mac = Path(f"/sys/class/net/{hosts.PUBLIC_BRIDGE}/address").read_text().strip()
            run("ip", "neigh", "replace", host.public_ip, "lladdr", _host_mac(host, "eth1"),
                "dev", hosts.PUBLIC_BRIDGE, "nud", "permanent")
            run("ip", "-n", host.name, "neigh", "replace", PUBLIC_GATEWAY, "lladdr", mac,
                "dev", "eth1", "nud", "permanent")


def unblock(host: hosts.Host, planes: tuple[str, ...] = ("public",)) -> None:
    for veth, plane in _ports(host, planes):
        run("bridge", "link", "set", "dev", veth, "state", "3", check=False)  # forwarding
        if plane == "public" and host.public_ip:
            run("ip", "neigh", "del", host.public_ip, "dev", hosts.PUBLIC_BRIDGE, check=False)
            run("ip", "-n", host.name, "neigh", "del", PUBLIC_GATEWAY, "dev", "eth1", check=False)


def _host_mac(host: hosts.Host, dev: str) -> str:
    out = run("ip", "-n", host.name, "-o", "link", "show", dev).stdout
    return out.split("link/ether", 1)[1].split()[0]


# --- sockets inside a host ------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def listen_in(netns: str, addr: tuple[str, int]) -> socket.socket:
    """A listening TCP socket bound inside `netns` (a socket keeps the namespace it was made in).

    setns(2) moves only the calling thread, so a short-lived thread does it and
    the daemon's other threads stay where they are.
    """
    box: dict[str, object] = {}

    def work() -> None:
        try:
            with open(f"/run/netns/{netns}") as f:
                if _libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {err}")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.listen(64)
            box["sock"] = s
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=work, name=f"setns-{netns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["sock"]  # type: ignore[return-value]
