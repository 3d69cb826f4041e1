"""CloudWatch alarms on the function, the dead-letter queues and each policy's failures, all
notifying the report topic."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra.config import SnapsetConfig
from snapset.settings import METRICS_NAMESPACE, SERVICE_NAME


def policy_metric(name: str, policy: str, period: Duration) -> cloudwatch.Metric:
    """One policy's EMF metric `name` (`InstancesFailed`; `PostScriptFailures`, the instances
    whose post script did not succeed; `CopyFailures`, the copies into another region that
    failed or were refused), with the exact emitted dimensions."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"policy": policy, "service": SERVICE_NAME},
        statistic="Sum",
        period=period,
    )


class Alarms(Construct):
    """Errors and throttles of `function`, depth of each of `dead_letter_queues` (name ->
    queue), failed, timed-out and aborted executions of `state_machine`, and `InstancesFailed`
    per policy (and `PostScriptFailures` for a policy with scripts, `CopyFailures` for a policy
    with copies); each alarm notifies `topic`. Exposes `alarms`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: SnapsetConfig,
        function: lambda_.IFunction,
        dead_letter_queues: Mapping[str, sqs.IQueue],
        topic: sns.ITopic,
        state_machine: sfn.IStateMachine | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self._topic = topic
        self.alarms: list[cloudwatch.Alarm] = []
        a = config.alarms
        period = Duration.minutes(a.period_minutes)
        self._alarm(
            "FunctionErrorsAlarm",
            function.metric_errors(period=period, statistic="Sum"),
            a.errors_threshold,
            "Snapset: the snapshot Lambda failed (an invocation raised or timed out)",
        )
        self._alarm(
            "FunctionThrottlesAlarm",
            function.metric_throttles(period=period, statistic="Sum"),
            a.throttles_threshold,
            "Snapset: the snapshot Lambda was throttled",
        )
        for name, queue in dead_letter_queues.items():
            self._alarm(
                f"{name}Alarm",
                queue.metric_approximate_number_of_messages_visible(
                    period=period, statistic="Maximum"
                ),
                a.dlq_messages_threshold,
                f"Snapset: messages in the {name} dead-letter queue (undelivered or failed runs)",
            )
        if state_machine is not None:
            # A failed execution published no run report (its aggregator never ran).
            for name, metric in {
                "FanOutFailedAlarm": state_machine.metric_failed(period=period, statistic="Sum"),
                "FanOutTimedOutAlarm": state_machine.metric_timed_out(
                    period=period, statistic="Sum"
                ),
                "FanOutAbortedAlarm": state_machine.metric_aborted(period=period, statistic="Sum"),
            }.items():
                self._alarm(
                    name,
                    metric,
                    a.errors_threshold,
                    "Snapset: a fan-out execution ended without its run report "
                    f"({name.removeprefix('FanOut').removesuffix('Alarm').lower()})",
                )
        # One alarm per configured policy on the engine's EMF metric. Dimensions must match the
        # emitted set exactly: the handler adds `policy`, Powertools adds `service`.
        for index, policy in enumerate(config.policies):
            self._alarm(
                f"InstancesFailedAlarm{index}-{policy.name}",
                policy_metric("InstancesFailed", policy.name, period),
                a.failed_instances_threshold,
                f"Snapset policy {policy.name}: instances failed to snapshot",
            )
            if policy.scripts is not None:
                # One failed post script may leave an instance's file systems frozen.
                self._alarm(
                    f"PostScriptFailuresAlarm{index}-{policy.name}",
                    policy_metric("PostScriptFailures", policy.name, period),
                    1,
                    f"Snapset policy {policy.name}: a post script did not succeed, so an "
                    "instance may still be frozen",
                )
            if policy.copies:
                # A failed copy leaves that set without its disaster-recovery copy.
                self._alarm(
                    f"CopyFailuresAlarm{index}-{policy.name}",
                    policy_metric("CopyFailures", policy.name, period),
                    1,
                    f"Snapset policy {policy.name}: a copy into another region failed, so a set "
                    "has no disaster-recovery copy there",
                )

    def _alarm(
        self, construct_id: str, metric: cloudwatch.IMetric, threshold: int, description: str
    ) -> None:
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self._topic))
        self.alarms.append(alarm)
