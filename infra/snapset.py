"""`Snapset`: every Snapset resource for a validated `SnapsetConfig`, composed from one construct
per concern.

Add it to any stack: `Snapset(stack, "Snapset", config=load_config(raw))`. It needs no AWS
credentials, context lookups or Docker at synth time and stays region/account-agnostic (ARNs are
built from `AWS::Partition`, `AWS::Region` and `AWS::AccountId`).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from aws_cdk import Stack, Token
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra.alarms import Alarms
from infra.config import SnapsetConfig
from infra.fan_out import FanOut
from infra.function import SnapshotFunction
from infra.notifications import Notifications
from infra.reports import ReportArchive
from infra.triggers import Triggers
from snapset.settings import ENV_STATE_MACHINE_ARN


class Snapset(Construct):
    """Snapset for one account and region.

    `notifications` (topic and key), `reports` (the full reports' bucket, also the fan-out's
    run files), `snapshot_function` (function, role, grants, table, DLQ), `fan_out` (the state
    machine a run too big for one invocation is handed to), `triggers` (schedules, rules,
    their DLQs) and `alarms`; the most used parts are also attributes here: `function`,
    `role`, `topic`, `topic_key`, `idempotency_table`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: SnapsetConfig,
        code: lambda_.Code | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        region = Stack.of(self).region
        if not Token.is_unresolved(region):
            # An env-agnostic stack is checked by the Lambda, which knows its region.
            config.check_copy_regions(region)
        self.config = config
        self.notifications = Notifications(self, "Notifications", config=config)
        self.topic = self.notifications.topic
        self.topic_key = self.notifications.key
        self.reports = ReportArchive(self, "Reports", config=config)
        self.snapshot_function = SnapshotFunction(
            self,
            "Function",
            config=config,
            topic=self.topic,
            topic_key=self.topic_key,
            report_bucket=self.reports.bucket,
            code=code,
        )
        self.function = self.snapshot_function.function
        self.role = self.snapshot_function.role
        self.reports.grant_store(self.role)
        self.idempotency_table = self.snapshot_function.idempotency_table
        self.notifications.only_publisher(self.role)
        self.fan_out = FanOut(
            self,
            "FanOut",
            config=config,
            function=self.function,
            function_role=self.role,
            bucket=self.reports.bucket,
            key=self.reports.key,
        )
        self.function.add_environment(ENV_STATE_MACHINE_ARN, self.fan_out.state_machine_arn)
        self.triggers = Triggers(self, "Triggers", config=config, function=self.function)
        self.alarms = Alarms(
            self,
            "Alarms",
            config=config,
            function=self.function,
            dead_letter_queues={
                "FunctionDlq": self.snapshot_function.dlq,
                "SchedulerDlq": self.triggers.scheduler_dlq,
                "RulesDlq": self.triggers.rules_dlq,
            },
            topic=self.topic,
            state_machine=self.fan_out.state_machine,
        )

    def example_payload(self) -> dict[str, Any]:
        """A manual-invoke payload: the first policy, as the Lambda's request model (without
        retention, which a deployed policy takes from the stack)."""
        policy = self.config.policies[0].snapshot_policy()
        payload: dict[str, Any] = policy.model_dump(
            mode="json", exclude_defaults=True, exclude={"retention"}
        )
        return payload

    def invoke_command(self) -> str:
        """`aws lambda invoke ...` for the first policy (a token string; resolves at deploy)."""
        payload = json.dumps(self.example_payload(), separators=(",", ":"))
        return (
            f"aws lambda invoke --function-name {self.function.function_name} "
            f"--cli-binary-format raw-in-base64-out --payload {shlex.quote(payload)} "
            "snapset-report.json"
        )
