"""What starts a run: Scheduler schedules, instance state-change rules and the completion rule,
with their role and dead-letter queues."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Annotations, Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sqs as sqs
from aws_cdk.interfaces.aws_events import IRuleRef
from constructs import Construct

from infra.config import PolicyConfig, SnapsetConfig
from infra.queues import dead_letter_queue
from snapset.completion import MULTI_VOLUME_DETAIL_TYPE, SNAPSHOT_DETAIL_TYPE
from snapset.copies import COPY_SWEEP_KEY, COPY_SWEEP_SCHEDULE
from snapset.triggers import (
    STATE_CHANGE_DETAIL_TYPE,
    instance_event_input_template,
    schedule_input,
)


class _RawInputTemplate(events.RuleTargetInput):
    """An input transformer whose template is used verbatim (no InputPathsMap needed).

    `RuleTargetInput.from_text/from_object` quote or re-serialize the template; the Lambda's
    `instance_event_input_template` already is the exact template string.
    """

    def __init__(self, template: str) -> None:
        super().__init__()
        self._template = template

    def bind(self, rule: IRuleRef) -> events.RuleTargetInputProperties:  # noqa: ARG002
        return events.RuleTargetInputProperties(input_template=self._template)


def completion_event_pattern() -> dict[str, Any]:
    """Multi-volume set completion, and failures of single snapshots, delivered raw."""
    return {
        "source": ["aws.ec2"],
        "$or": [
            {
                "detail-type": [MULTI_VOLUME_DETAIL_TYPE],
                "detail": {"event": ["createSnapshots"]},
            },
            {
                "detail-type": [SNAPSHOT_DETAIL_TYPE],
                "detail": {"event": ["createSnapshot"], "result": ["failed"]},
            },
        ],
    }


class Triggers(Construct):
    """Every trigger of the configured policies, delivering to `function`.

    Exposes `scheduler_role`, `scheduler_dlq`, `rules_dlq`, `schedules` (policy name ->
    CfnSchedules), `instance_rules` (policy name -> Rule), `completion_rule` (or None) and
    `copy_sweep_schedule` (or None: only when a policy has copies).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: SnapsetConfig,
        function: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._function = function
        self.scheduler_dlq = dead_letter_queue(
            self, "SchedulerDlq", "schedule deliveries Scheduler gave up"
        )
        self.rules_dlq = dead_letter_queue(self, "RulesDlq", "event deliveries EventBridge gave up")
        self.scheduler_role = self._scheduler_role(self.scheduler_dlq)
        self.schedules: dict[str, list[scheduler.CfnSchedule]] = {}
        self.instance_rules: dict[str, events.Rule] = {}
        for index, policy in enumerate(config.policies):
            self.schedules[policy.name] = self._schedules(
                index, policy, self.scheduler_role, self.scheduler_dlq
            )
            if policy.on_instance_states:
                self.instance_rules[policy.name] = self._instance_rule(
                    index, policy, self.rules_dlq
                )
        self.completion_rule = (
            self._completion_rule(self.rules_dlq) if config.completion_events else None
        )
        self.copy_sweep_schedule = (
            self._copy_sweep_schedule(self.scheduler_role, self.scheduler_dlq)
            if config.copying_policies()
            else None
        )
        for warning in config.schedule_warnings():
            Annotations.of(self).add_warning_v2("snapset:schedule-repeated-hour", warning)

    def _scheduler_role(self, dlq: sqs.IQueue) -> iam.Role:
        role = iam.Role(
            self,
            "SchedulerRole",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            ),
            description="Snapset schedules: invoke the snapshot Lambda, dead-letter to the DLQ",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="InvokeSnapsetFunction",
                actions=["lambda:InvokeFunction"],
                resources=[self._function.function_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="DeadLetter",
                actions=["sqs:SendMessage"],
                resources=[dlq.queue_arn],
            )
        )
        return role

    def _schedules(
        self, index: int, policy: PolicyConfig, role: iam.IRole, dlq: sqs.IQueue
    ) -> list[scheduler.CfnSchedule]:
        payload = json.dumps(schedule_input(policy.snapshot_policy()), separators=(",", ":"))
        return [
            self._schedule(
                f"Schedule{index}x{n}-{policy.name}",
                description=f"Snapset policy {policy.name}: {sched.expression} {sched.timezone}",
                expression=sched.expression,
                timezone=sched.timezone,
                payload=payload,
                role=role,
                dlq=dlq,
            )
            for n, sched in enumerate(policy.schedules)
        ]

    def _copy_sweep_schedule(self, role: iam.IRole, dlq: sqs.IQueue) -> scheduler.CfnSchedule:
        """The copy sweep: starts queued copies as slots free, runs the destination retention
        and reports each set whose copies all ended (the policies with copies drive it)."""
        return self._schedule(
            "CopySweepSchedule",
            description=f"Snapset copy sweep: {COPY_SWEEP_SCHEDULE} UTC",
            expression=COPY_SWEEP_SCHEDULE,
            timezone="UTC",
            payload=json.dumps({COPY_SWEEP_KEY: {}}, separators=(",", ":")),
            role=role,
            dlq=dlq,
        )

    def _schedule(
        self,
        construct_id: str,
        *,
        description: str,
        expression: str,
        timezone: str,
        payload: str,
        role: iam.IRole,
        dlq: sqs.IQueue,
    ) -> scheduler.CfnSchedule:
        config = self._config
        return scheduler.CfnSchedule(
            self,
            construct_id,
            description=description,
            schedule_expression=expression,
            schedule_expression_timezone=timezone,
            flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
            state="ENABLED",
            target=scheduler.CfnSchedule.TargetProperty(
                arn=self._function.function_arn,
                role_arn=role.role_arn,
                input=payload,
                retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                    maximum_retry_attempts=config.trigger_retry_attempts,
                    maximum_event_age_in_seconds=config.max_event_age_minutes * 60,
                ),
                dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(
                    arn=dlq.queue_arn
                ),
            ),
        )

    def _lambda_target(
        self, event: events.RuleTargetInput | None, dlq: sqs.IQueue
    ) -> targets.LambdaFunction:
        return targets.LambdaFunction(
            self._function,
            event=event,
            dead_letter_queue=dlq,
            retry_attempts=self._config.trigger_retry_attempts,
            max_event_age=Duration.minutes(self._config.max_event_age_minutes),
        )

    def _instance_rule(self, index: int, policy: PolicyConfig, dlq: sqs.IQueue) -> events.Rule:
        template = instance_event_input_template(policy.snapshot_policy())
        return events.Rule(
            self,
            f"InstanceRule{index}-{policy.name}",
            description=f"Snapset policy {policy.name}: instance state "
            + ", ".join(policy.on_instance_states),
            event_pattern=events.EventPattern(
                source=["aws.ec2"],
                detail_type=[STATE_CHANGE_DETAIL_TYPE],
                detail={"state": list(policy.on_instance_states)},
            ),
            targets=[self._lambda_target(_RawInputTemplate(template), dlq)],
        )

    def _completion_rule(self, dlq: sqs.IQueue) -> events.Rule:
        rule = events.Rule(
            self,
            "CompletionRule",
            description="Snapset: snapshot set completion and snapshot failures",
            event_pattern=events.EventPattern(source=["aws.ec2"]),
            targets=[self._lambda_target(None, dlq)],
        )
        # The L2 EventPattern cannot express `$or`; the pattern is set on the L1 as a whole.
        cfn_rule = rule.node.default_child
        assert isinstance(cfn_rule, events.CfnRule)
        cfn_rule.add_property_override("EventPattern", completion_event_pattern())
        return rule
