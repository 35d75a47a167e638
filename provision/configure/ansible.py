"""The Ansible strategy: reach every node, then one ``ansible/site.yml`` run for all.

Each node waits for running and SSH on its own; one playbook run then configures
every node that answered (packages, controller, engines, data) to the layout
the Fabric strategy gives, so every other command works the same on either.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from provision import cloud, inventory, state
from provision.cloud.common import MASTER, InstanceInfo
from provision.configure import playbook
from provision.configure.base import Gateway, Results, Step, Strategy, failed, reach, stage
from provision.context import Context
from provision.errors import BadInput
from provision.nodes import engines, fanout


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
        doc = inventory.build(ctx, info, spec=self.spec, wheelhouse=self.wheelhouse(), only=reached)
        run = playbook.run_playbook(
            doc, on_progress=lambda host, text: stage(ctx, host, text, Step.PACKAGES)
        )
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
