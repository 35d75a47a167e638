"""`provision check` and the checks `up` runs first: can this cluster launch here?

Before anything bills: the credentials (who, which account), the region, the
network, the instance type in the zone, the image and its login user, spot
prices against the bid, vCPU quotas against what `up` would add, the key pair,
and the plan with its hourly cost. `check` creates nothing (not even the local
SSH key); `up` runs the same checks with `fix` (on AWS: it may create the EC2
Spot service-linked role, which bills nothing) and launches nothing when one
fails. The CLI's `up` runs them once: it checks and shows the plan first, and
`up` then only `settle`s what it brings itself.

A failed check that the user fixes in the cluster file or the account (a
quota too small, a key pair holding another key, no default VPC) is
`BadInput`, exit 2, like any input the region cannot satisfy: nothing was
created and the same command fails again until the input or the account
changes. One the user cannot fix by changing the request (credentials
refused, the spot role that only an administrator can create) exits 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from provision import cloud
from provision.cloud.common import FAIL, OK, CloudAPIError, Finding, LaunchPlan, PriceSheet
from provision.context import Context, prepare, resolve_region
from provision.costs import node_hourly
from provision.errors import BadInput, ProvisionError
from provision.schema import ClusterConfig


@dataclass(frozen=True)
class PlannedNodes:
    """One line of the plan: nodes of a role on one market, and their hourly cost each."""

    role: str  # "master" or "workers"
    count: int
    market: str  # "spot" or "on-demand"
    hourly_each: float | None  # compute + volume + public address, USD


@dataclass
class CheckReport:
    """What `check` found, and what `up` would launch."""

    findings: list[Finding] = field(default_factory=list)
    plan: list[PlannedNodes] = field(default_factory=list)
    price_source: str = ""
    launch: LaunchPlan | None = None  # what was checked (None: stopped before it)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == FAIL]

    @property
    def hourly(self) -> float | None:
        """USD/hour of what `up` would launch (None when a price is unknown)."""
        total = 0.0
        for line in self.plan:
            if line.count and line.hourly_each is None:
                return None
            total += line.count * (line.hourly_each or 0.0)
        return total

    def raise_for_failures(self, outcome: str = "nothing was launched") -> None:
        """The first failure as one line: `BadInput` (2) or `ProvisionError` (1)."""
        if not self.failures:
            return
        first, others = self.failures[0], len(self.failures) - 1
        more = f" (and {others} more: see `provision check`)" if others else ""
        message = f"{first.check}: {first.detail}{more}; {outcome}"
        raise (BadInput if first.input else ProvisionError)(message)


def _public_key(config: ClusterConfig) -> str:
    """The public key `up` would register, or "" when `up` has yet to create it."""
    pub = config.public_key_path
    return pub.read_text().strip() if pub.exists() else ""


def launch_plan(ctx: Context) -> tuple[LaunchPlan, int, int]:
    """What `up` would launch now: the shortfall against the cluster's tags.
    Also (masters, workers) to launch, for the plan's lines."""
    cfg = ctx.config
    info = cloud.describe_cluster(ctx.region, ctx.name)
    masters = 0 if info.master else 1
    workers = max(0, cfg.cluster_size - 1 - len(info.workers))
    spot_workers = cfg.spot_bid is not None
    spot_master = spot_workers and cfg.spot_master
    plan = LaunchPlan(
        cluster=ctx.name, instance_type=cfg.instance_type, vcpus=ctx.type_info.vcpus,
        on_demand=masters * (not spot_master) + workers * (not spot_workers),
        spot=masters * spot_master + workers * spot_workers,
        spot_bid=cfg.spot_bid, zone=cfg.zone, key_name=cfg.pair_name,
        public_key=ctx.public_key or _public_key(cfg),
    )
    return plan, masters, workers


def _plan_lines(ctx: Context, sheet: PriceSheet, masters: int, workers: int) -> list[PlannedNodes]:
    cfg = ctx.config
    spot_workers = cfg.spot_bid is not None
    lines = []
    for role, count, spot in (("master", masters, spot_workers and cfg.spot_master),
                              ("workers", workers, spot_workers)):
        hourly = node_hourly(sheet, spot=spot, zone=cfg.zone, volume_gib=cfg.volume_size)
        lines.append(PlannedNodes(role, count, "spot" if spot else "on-demand", hourly))
    return lines


def preflight(ctx: Context, *, fix: bool, priced: bool = False) -> CheckReport:
    """The checks that need a prepared context (type and image already resolved);
    with `priced`, the plan and its hourly cost too."""
    plan, masters, workers = launch_plan(ctx)
    report = CheckReport(launch=plan)
    user = f", login user {ctx.user}"
    named = f"{ctx.config.image!r} = " if ctx.config.image is not None else ""
    report.findings.append(
        Finding("image", OK, f"{named}{ctx.image_id} ({ctx.type_info.arch}{user})"))
    if plan.on_demand or plan.spot:
        report.findings += cloud.preflight(ctx.region, plan, fix=fix)
    if priced:
        sheet = cloud.price_sheet(ctx.region, ctx.config.instance_type)
        report.plan = _plan_lines(ctx, sheet, masters, workers)
        report.price_source = sheet.source
    return report


def settle(ctx: Context, checked: CheckReport) -> CheckReport:
    """`checked` (a `check` of this cluster moments ago, under its lock) made good for
    `up` without checking it all again: what `up` brings itself is checked again
    (the key pair, against the key `up` imports, which `check` may not have had)
    and the account prerequisites of spot, which `check` only reports, created."""
    plan = checked.launch
    if plan is None or not (plan.on_demand or plan.spot):
        return checked  # stopped early (its failures say why), or nothing to launch
    plan = dataclasses.replace(plan, public_key=ctx.public_key)
    again = {f.check: f for f in cloud.prerequisites(ctx.region, plan, fix=True)}
    findings = [again.pop(f.check, f) for f in checked.findings] + list(again.values())
    return dataclasses.replace(checked, findings=findings, launch=plan)


def check(config: ClusterConfig) -> CheckReport:
    """Everything `up` needs, checked and reported; creates nothing, locally or in the cloud.

    Stops at the first check later ones depend on (credentials, then the
    instance type and image), reporting what it found so far.
    """
    region = resolve_region(config)
    report = CheckReport()
    try:
        who = cloud.caller_identity(region)
    except CloudAPIError as err:
        report.findings.append(Finding("credentials", FAIL, str(err), input=False))
        return report
    report.findings.append(Finding("credentials", OK, who))
    try:
        ctx = prepare(config, need_key=False)
    except BadInput as err:
        report.findings.append(Finding("instance type and image", FAIL, str(err)))
        return report
    found = preflight(ctx, fix=False, priced=True)
    found.findings[:0] = report.findings
    return found
