"""The account behind the credentials: who they are, and what spot needs of it.

`caller_identity` is STS GetCallerIdentity, which every principal may call (no
permission needed), so it tells "no or bad credentials" apart from "missing
permissions" before anything else is asked.

Spot Instances requested through the API need the service-linked role
``AWSServiceRoleForEC2Spot`` in the account ("If you use the AWS CLI or an API
to request a Spot Instance, you must first ensure that this role exists", EC2
User Guide). EC2 creates it on a first spot request only when the caller may
``iam:CreateServiceLinkedRole``; otherwise RunInstances fails with
``AuthFailure.ServiceLinkedRoleCreationNotPermitted`` after the on-demand
master already runs. `spot_role` finds out first and, when allowed to fix,
creates it (free, account-wide, never removed by ``down``).
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from provision.cloud.aws import api
from provision.cloud.common import FAIL, OK, WARN, CloudAPIError, Finding, Region

SPOT_ROLE = "AWSServiceRoleForEC2Spot"
SPOT_SERVICE = "spot.amazonaws.com"
CREATE_SPOT_ROLE = f"aws iam create-service-linked-role --aws-service-name {SPOT_SERVICE}"
# RunInstances' error when the role is missing and the caller may not create it.
SPOT_ROLE_ERROR = "AuthFailure.ServiceLinkedRoleCreationNotPermitted"
_EXISTS = {"InvalidInput", "EntityAlreadyExists"}  # "has been taken": another call made it
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


def caller_identity(region: Region) -> str:
    """See the contract."""
    try:
        me = api.client("sts", region).get_caller_identity()
    except ClientError as e:
        raise CloudAPIError(
            f"the credentials were refused ({api.code(e)}: {api.message(e)})"
        ) from e
    except BotoCoreError as e:
        raise CloudAPIError(
            f"no usable AWS credentials ({e}): run `aws configure`, or set AWS_PROFILE"
        ) from e
    return f"account {me['Account']} as {me['Arn']}"


def spot_role(region: Region, *, fix: bool) -> Finding:
    """Whether the EC2 Spot service-linked role exists (created when `fix`)."""
    name = "EC2 Spot service-linked role"
    iam = api.client("iam", region)
    try:
        iam.get_role(RoleName=SPOT_ROLE)
        return Finding(name, OK, f"{SPOT_ROLE} exists")
    except ClientError as e:
        if api.code(e) in _DENIED:
            return Finding(name, WARN, f"cannot tell whether {SPOT_ROLE} exists (no iam:GetRole); "
                           f"if the first spot launch fails, an administrator runs: "
                           f"{CREATE_SPOT_ROLE}")
        if api.code(e) != "NoSuchEntity":
            raise
    if not fix:
        return Finding(name, WARN, f"{SPOT_ROLE} is missing: `up` creates it (needs iam:"
                       f"CreateServiceLinkedRole), or an administrator runs: {CREATE_SPOT_ROLE}")
    try:
        iam.create_service_linked_role(AWSServiceName=SPOT_SERVICE)
    except ClientError as e:
        if api.code(e) in _EXISTS:
            return Finding(name, OK, f"{SPOT_ROLE} exists")
        if api.code(e) in _DENIED:
            return Finding(name, FAIL, f"{SPOT_ROLE} is missing and these credentials may not "
                           f"create it: an administrator runs `{CREATE_SPOT_ROLE}` once per "
                           "account", input=False)
        raise
    return Finding(name, OK, f"{SPOT_ROLE} created (needed once per account for spot)")


def spot_role_hint(error_code: str) -> str:
    """What to run when RunInstances failed for want of the spot role; "" for other errors."""
    if error_code != SPOT_ROLE_ERROR:
        return ""
    return f" (the account lacks {SPOT_ROLE}: an administrator runs `{CREATE_SPOT_ROLE}` once)"
