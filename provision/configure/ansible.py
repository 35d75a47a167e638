"""The Ansible strategy: reach every node, then one ``ansible/site.yml`` run for all.

Each node waits for running and SSH on its own; one playbook run then configures
every node that answered (packages, controller, engines, data) to the layout
the Fabric strategy gives, so every other command works the same on either.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from provision import cloud, inventory, state
from provision.cloud.common import MASTER, InstanceInfo
from provision.configure import playbook
from provision.configure.base import Gateway, Results, Step, Strategy, failed, reach, stage
from provision.context import Context
from provision.errors import BadInput
from provision.nodes import engines, fanout, relay
from provision.nodes.remote import NodeError

# The playbook's `debug` line when a worker could not take the master's environment.
_COPY_WARNING = re.compile(r"ok: \[(\S+)\] => \{\s*\"msg\": \"warning: ([^\"]*)\"")


class AnsibleStrategy(Strategy):
    """Configure nodes with ansible-playbook (needs ansible-core next to provision)."""

    name = "ansible"

    def check(self) -> None:
        """See `Strategy.check`: ansible-playbook must be there."""
        try:
            playbook.find_playbook_command()
        except playbook.AnsibleError as err:
            raise BadInput(f"--configure-with ansible: {err}") from err

    def configure(self, ctx: Context, nodes: Sequence[InstanceInfo]) -> Results:
        """See `Strategy.configure`."""
        claim = threading.Lock()
        gateway = Gateway(ctx, has_master=any(n.role == MASTER for n in nodes))
        running: dict[str, InstanceInfo] = {}

        def reach_one(inst: InstanceInfo) -> BaseException | None:
            try:
                running[inst.label], _ = reach(ctx, inst, claim, gateway)
            except BaseException as err:  # noqa: BLE001 - reported per node
                failed(ctx, inst.label, err)
                return err
            stage(ctx, inst.label, "waiting for the playbook", Step.PACKAGES)
            return None

        results: Results = dict(fanout.fan_out(reach_one, list(nodes), key=lambda n: n.label))
        reached = {label for label, err in results.items() if err is None}
        if reached:
            results.update(self._playbook(ctx, [running[label] for label in sorted(reached)]))
        return results

    def _playbook(self, ctx: Context, reached_nodes: list[InstanceInfo]) -> Results:
        """One run of site.yml on the nodes that answered; their outcomes."""
        info = cloud.describe_cluster(ctx.region, ctx.name)
        info.merge(reached_nodes)  # as `reach` saw them running
        reached = {i.label for i in reached_nodes}
        _let_the_master_in(ctx, info, reached_nodes)
        doc = inventory.build(ctx, info, spec=self.spec, wheelhouse=self.wheelhouse(), only=reached)
        run = playbook.run_playbook(
            doc, on_progress=lambda host, text: stage(ctx, host, text, Step.PACKAGES)
        )
        for warning in _COPY_WARNING.findall(run.output):
            ctx.reporter.warn(f"{warning[0]}: " + " ".join(warning[1].split()))
        results: Results = {}
        for label in sorted(reached):
            inst = info.find(label)
            address = (inst.public_ip or inst.private_ip or "") if inst else ""
            err = run.error_for(label, address)
            results[label] = err
            if err is not None:
                failed(ctx, label, err)
            elif inst is not None:
                stage(ctx, label, f"ready ({inst.instance_id}, {inst.private_ip})", Step.READY)
        master = info.master
        if master is not None and master.label in reached and results[master.label] is None:
            engines.fetch_connection_files(
                ctx.endpoint(master), ctx.config.remote_root, state.cluster_dir(ctx.name)
            )
        return results


def _let_the_master_in(ctx: Context, info: cloud.ClusterInfo, nodes: list[InstanceInfo]) -> None:
    """The cluster key on the master, authorised on each worker, so that the playbook's
    workers take the master's environment (`envcopy`); a worker the key does not reach
    installs its own (the playbook falls back), so a failure here is only a warning."""
    master = info.master
    workers = [n for n in nodes if n.role != MASTER and n.private_ip]
    if master is None or not workers:
        return
    root = ctx.config.remote_root
    try:
        master_ep = ctx.endpoint(master)
        key = relay.ensure_key(master_ep, root)
        done = fanout.fan_out(
            lambda w: relay.authorize(ctx.endpoint(w, master), master_ep, w.private_ip or "",
                                      key, root),
            workers, key=lambda w: w.label, limit=fanout.MAX_PARALLEL_HOSTS)
    except NodeError as err:
        ctx.reporter.warn(f"the master cannot reach the workers ({err}): each installs its own")
        return
    for label, err in done.failed.items():
        ctx.reporter.warn(f"{label}: the master cannot reach it ({err}): it installs its own")
