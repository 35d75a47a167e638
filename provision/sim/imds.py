"""The instance metadata service, at 169.254.169.254 inside each host, IMDSv2 style.

As on EC2 (see "Use the Instance Metadata Service" in AWS's docs):

- `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600)
  returns a session token; without the header, 400; a PUT that went through a
  proxy (`X-Forwarded-For`) is refused, 403;
- a GET carrying `X-aws-ec2-metadata-token` must carry a live token (401
  otherwise); a GET without one is served only when the instance's
  `MetadataOptions.HttpTokens` is `optional`, 401 when it is `required`;
- `/latest/meta-data/spot/instance-action` is 404 until a spot interruption is
  announced, then `{"action": "terminate", "time": "...Z"}` (also as
  `spot/termination-time`).

Every host's server lives in the daemon: its listening socket is made inside
the host's network namespace, so only that host reaches it, and nothing runs
inside the instance. What a server answers is looked up at each request (the
instance's addresses and options as moto holds them, and the notice file the
`interrupt` command writes), so it is never stale.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from provision.sim.net import METADATA_IP, listen_in

log = logging.getLogger("provision.sim.imds")

Lookup = Callable[[str], "dict[str, str] | None"]  # instance id -> metadata items
MAX_TTL = 21600
_PRIVATE = {"http-tokens", "arch"}  # what the server needs but does not list


def notice_file(interrupts: Path, instance_id: str) -> Path:
    return interrupts / f"{instance_id}.json"


def read_notice(interrupts: Path, instance_id: str) -> dict[str, str] | None:
    try:
        return dict(json.loads(notice_file(interrupts, instance_id).read_text()))
    except (OSError, ValueError):
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, instance_id: str, lookup: Lookup, interrupts: Path) -> None:
        super().__init__((METADATA_IP, 80), _Handler, bind_and_activate=False)
        self.instance_id = instance_id
        self.lookup = lookup
        self.interrupts = interrupts
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("imds %s: " + format, self.server.instance_id, *args)

    def _send(self, code: int, body: str = "", ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != "/latest/api/token":
            return self._send(404, "Not Found")
        if self.headers.get("X-Forwarded-For"):
            return self._send(403, "Forbidden")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL:
            return self._send(400, "Bad Request")
        token = secrets.token_urlsafe(42)
        self.server.tokens[token] = time.monotonic() + int(ttl)
        self._send(200, token)

    def do_GET(self) -> None:  # noqa: N802
        meta = self.server.lookup(self.server.instance_id)
        if meta is None:
            return self._send(404, "Not Found")
        token = self.headers.get("X-aws-ec2-metadata-token")
        if token is not None or meta.get("http-tokens") == "required":
            expiry = self.server.tokens.get(token or "")
            if expiry is None or expiry < time.monotonic():
                return self._send(401, "Unauthorized")
        answer = self._answer(meta)
        if answer is None:
            return self._send(404, "Not Found")
        self._send(200, answer, "application/json" if answer.startswith("{") else "text/plain")

    def _answer(self, meta: dict[str, str]) -> str | None:
        items = {k: v for k, v in meta.items() if k not in _PRIVATE and v}
        notice = read_notice(self.server.interrupts, self.server.instance_id)
        if notice is not None:
            items["spot/instance-action"] = json.dumps(notice)
            items["spot/termination-time"] = notice["time"]
        path = self.path.split("?", 1)[0]
        if path in ("/latest/dynamic/instance-identity/document",):
            return json.dumps({
                "instanceId": meta["instance-id"], "imageId": meta["ami-id"],
                "instanceType": meta["instance-type"], "privateIp": meta["local-ipv4"],
                "availabilityZone": meta["placement/availability-zone"],
                "region": meta["placement/region"], "architecture": meta.get("arch", "x86_64"),
            }, indent=2)
        prefix = "/latest/meta-data/"
        if not path.startswith(prefix):
            return None
        key = path[len(prefix):]
        if key in items:
            return items[key]
        # A directory: list its children, sub-directories with a trailing slash.
        base = key if key == "" or key.endswith("/") else key + "/"
        children = sorted({k[len(base):].split("/")[0] + ("/" if "/" in k[len(base):] else "")
                           for k in items if k.startswith(base)})
        return "\n".join(children) if children else None


class Imds:
    """Metadata servers, one per host, served from the daemon's threads."""

    def __init__(self, lookup: Lookup, interrupts: Path) -> None:
        self.lookup = lookup
        self.interrupts = interrupts
        self.servers: dict[str, _Server] = {}  # netns -> its server

    def start(self, netns: str, instance_id: str) -> None:
        self.stop(netns)
        server = _Server(instance_id, self.lookup, self.interrupts)
        server.socket.close()
        server.socket = listen_in(netns, (METADATA_IP, 80))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         name=f"imds-{netns}", daemon=True).start()
        self.servers[netns] = server

    def stop(self, netns: str) -> None:
        """Stop serving; closing the socket also lets the kernel free the namespace."""
        server = self.servers.pop(netns, None)
        if server is not None:
            server.shutdown()
            server.server_close()

    def keep_only(self, netns_names: set[str]) -> None:
        for name in set(self.servers) - netns_names:
            self.stop(name)

    def stop_all(self) -> None:
        self.keep_only(set())
