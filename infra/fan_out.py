"""The fan-out state machine: a run too big for one invocation, done batch by batch.

The function plans and starts the execution (lambdas/snapset/fanout.py); the execution maps
its batches (a JSON array in the report bucket, read by a Distributed Map) onto the same
function and, for a policy with retention, maps them again beside it for retention (each
retain task waits for its own batch's creation), then has the function aggregate the batches'
results into one run report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from aws_cdk import ArnFormat, CfnElement, Duration, Names, Stack, Token
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from infra import nag
from infra.config import SnapsetConfig
from infra.function import RETENTION
from snapset.fanout import RUN_PREFIX

SID_START_FAN_OUT = "StartFanOut"
SID_RUN_FILES = "FanOutRunFiles"
SID_RUN_FILES_KEY = "ReadFanOutRunFiles"
SID_LIST_RUN_FILES = "ListFanOutRunFiles"
SID_DESCRIBE_FAN_OUT = "DescribeFanOut"

# Lambda's errors that say the invocation never ran the code (or was throttled): retried fast.
LAMBDA_SERVICE_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
# Raised by the function, after writing the batch's results, for instances to retry.
INCOMPLETE_RUN = "IncompleteRun"
# Raised for a task the function cannot parse: a bug between stack and code, never retried.
INVALID_INPUT = "InvalidInput"
# Raised by a retain task whose batch's creation has not settled: retried until it has (the
# create batch's own retries take up to about 4 minutes; this waits up to about 17).
CREATION_PENDING = "CreationPending"


def _machine_name(scope: Construct) -> str:
    """The stack's name and a digest of the construct's path, at most 80 characters: two
    stacks of the app in one account and region get two state machines."""
    stack = Stack.of(scope)
    unique = Names.unique_resource_name(scope, max_length=80, separator="-")
    if Token.is_unresolved(stack.stack_name):
        return unique
    digest = hashlib.sha256(f"{stack.stack_name}/{scope.node.path}".encode()).hexdigest()[:8]
    return f"{stack.stack_name[:62]}-fan-out-{digest}"


class FanOut(Construct):
    """A Standard state machine over `function`, its batches in `bucket` (under the run
    prefix, encrypted with `key`). The function's role may start it and use the run files.

    Its name is fixed at synth (so the function's environment can name it without a reference
    that would make the function and the state machine depend on each other): `state_machine_arn`
    is built from it. Exposes `state_machine`, `state_machine_arn`, `log_group`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: SnapsetConfig,
        function: lambda_.IFunction,
        function_role: iam.IRole,
        bucket: s3.IBucket,
        key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        name = self._name = _machine_name(self)
        self.state_machine_arn = stack.format_arn(
            service="states",
            resource="stateMachine",
            resource_name=name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.execution_arns = stack.format_arn(
            service="states",
            resource="execution",
            resource_name=f"{name}:*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.log_group = logs.LogGroup(self, "Logs", retention=RETENTION[config.log_retention_days])
        create = self._map(
            "CreateSets",
            "batch",
            function,
            bucket,
            # Instances throttled or out of time: wait for the bucket to refill, then redo
            # the batch (its idempotency records make that redo only what did not start).
            own_retry={
                "errors": [INCOMPLETE_RUN],
                "interval": Duration.seconds(30),
                "backoff_rate": 2,
                "max_attempts": 3,
                "max_delay": Duration.minutes(5),
                "jitter_strategy": sfn.JitterType.FULL,
            },
        )
        retain = self._map(
            "RetainSets",
            "retain",
            function,
            bucket,
            # The batch's creation is still running or retrying: look again later. A batch
            # the create Map gave up on never settles, and its retention is reported failed.
            own_retry={
                "errors": [CREATION_PENDING],
                "interval": Duration.seconds(15),
                "backoff_rate": 1.5,
                "max_attempts": 12,
                "max_delay": Duration.minutes(2),
            },
        )
        no_retention = sfn.Pass(self, "NoRetention", result=sfn.Result.from_array([]))
        # Retention maps the batches beside their creation: each retain task waits for its own
        # batch, so deletion (another bucket) overlaps the creation of the later batches and
        # never delays it. The run takes the slower phase, not the two one after the other.
        phases = sfn.Parallel(
            self,
            "Phases",
            result_selector={
                "created": sfn.JsonPath.list_at("$[0]"),
                "retained": sfn.JsonPath.list_at("$[1]"),
            },
            result_path="$.phases",
        )
        phases.branch(create)
        phases.branch(
            sfn.Choice(self, "Retention?")
            .when(sfn.Condition.boolean_equals("$.run.retention", True), retain)
            .otherwise(no_retention)
        )
        aggregate = tasks.LambdaInvoke(
            self,
            "Aggregate",
            lambda_function=function,
            payload=sfn.TaskInput.from_object(
                {
                    "snapset_task": "aggregate",
                    "run": sfn.JsonPath.object_at("$.run"),
                    "created": sfn.JsonPath.list_at("$.phases.created"),
                    "retained": sfn.JsonPath.list_at("$.phases.retained"),
                    "execution_arn": sfn.JsonPath.execution_id,
                }
            ),
            payload_response_only=True,
            retry_on_service_exceptions=False,
        )
        aggregate.add_retry(errors=[INVALID_INPUT], max_attempts=0)
        aggregate.add_retry(
            errors=["States.ALL"],
            interval=Duration.seconds(5),
            backoff_rate=2,
            max_attempts=4,
            jitter_strategy=sfn.JitterType.FULL,
        )
        chain = phases.next(aggregate)
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_chainable(chain),
            comment="Snapset: a run too big for one invocation, batch by batch",
            # A night's fan-out is bounded by EC2's buckets: 10,000 instances at half the
            # CreateSnapshots refill take about 70 minutes, retention of two snapshots each
            # (beside it, on its own bucket) about 140.
            timeout=Duration.hours(12),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
        )
        # The Map's ItemReader reads the batches with the state machine's role.
        key.grant_decrypt(self.state_machine)
        # CDK makes the state machine depend on its role, which its RoleArn GetAtt already
        # implies (cfn-lint W3005): keep the role's default policy (its Lambda and S3 grants).
        # The Distributed Map's policy names the state machine, so it cannot come first.
        cfn_machine = self.state_machine.node.default_child
        assert isinstance(cfn_machine, sfn.CfnStateMachine)
        default = self.state_machine.role.node.find_child("DefaultPolicy").node.default_child
        assert isinstance(default, CfnElement)
        cfn_machine.add_override("DependsOn", [stack.get_logical_id(default)])
        self._function_role = function_role
        self._grant_function(function_role, bucket, key)
        self._acknowledge(bucket, function)

    def _map(
        self,
        construct_id: str,
        task: str,
        function: lambda_.IFunction,
        bucket: s3.IBucket,
        *,
        own_retry: Mapping[str, Any],
    ) -> sfn.DistributedMap:
        """A Distributed Map of `task` over the batches: Lambda's service errors retried, then
        the task's `own_retry` (`add_retry` arguments), then anything else; a batch that still
        fails becomes its result, and one the function refuses fails the execution."""
        work = tasks.LambdaInvoke(
            self,
            f"{construct_id}Batch",
            lambda_function=function,
            payload=sfn.TaskInput.from_object(
                {
                    "snapset_task": task,
                    "run": sfn.JsonPath.object_at("$.run"),
                    "batch": sfn.JsonPath.object_at("$.batch"),
                    # A first attempt looks for no set; a retry, or a redriven execution's
                    # first attempt, lists its trigger's sets.
                    "attempt": sfn.JsonPath.number_at("$$.State.RetryCount"),
                    "redrive": sfn.JsonPath.number_at("$$.Execution.RedriveCount"),
                }
            ),
            payload_response_only=True,
            retry_on_service_exceptions=False,
        )
        work.add_retry(errors=[INVALID_INPUT], max_attempts=0)
        work.add_retry(
            errors=LAMBDA_SERVICE_ERRORS,
            interval=Duration.seconds(2),
            backoff_rate=2,
            max_attempts=6,
            max_delay=Duration.minutes(1),
            jitter_strategy=sfn.JitterType.FULL,
        )
        work.add_retry(**own_retry)
        # A worker that died (timed out, out of memory) or any other error.
        work.add_retry(
            errors=["States.ALL"],
            interval=Duration.seconds(10),
            backoff_rate=2,
            max_attempts=2,
            jitter_strategy=sfn.JitterType.FULL,
        )
        # A task the function cannot parse is a bug between this definition and the code: the
        # execution fails (and alarms) rather than reporting every batch failed.
        work.add_catch(
            sfn.Fail(
                self,
                f"{construct_id}Invalid",
                error=INVALID_INPUT,
                cause="the function refused the task the state machine sent",
            ),
            errors=[INVALID_INPUT],
        )
        # One batch never stops the others: its error becomes its result, and the aggregator
        # reports its instances. The Cause is left out: a Lambda error's can be 32 KB, and
        # every item's result is kept in the execution's 256 KB state.
        failed = sfn.Pass(
            self,
            f"{construct_id}Failed",
            parameters={"batch.$": "$.batch.index", "error.$": "$.error.Error"},
        )
        work.add_catch(failed, errors=["States.ALL"], result_path="$.error")
        mapped = sfn.DistributedMap(
            self,
            construct_id,
            item_reader=sfn.S3JsonItemReader(
                bucket=bucket, key=sfn.JsonPath.string_at("$.run.items_key")
            ),
            max_concurrency_path="$.run.max_concurrency",
            item_selector={
                "run": sfn.JsonPath.object_at("$.run"),
                "batch": sfn.JsonPath.object_at("$$.Map.Item.Value"),
            },
            map_execution_type=sfn.StateMachineType.STANDARD,
        )
        mapped.item_processor(work)
        return mapped

    def _grant_function(self, role: iam.IRole, bucket: s3.IBucket, key: kms.IKey) -> None:
        """Start this state machine (by its ARN, no reference), write the batches and results
        and read them back under the run prefix, decrypt them (through S3 only)."""
        stack = Stack.of(self)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid=SID_START_FAN_OUT,
                actions=["states:StartExecution"],
                resources=[self.state_machine_arn],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid=SID_RUN_FILES,
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[bucket.arn_for_objects(f"{RUN_PREFIX}*")],
            )
        )
        # Without ListBucket S3 answers a GetObject of a missing key 403, not 404: a batch
        # with no results (the Map gave up on it) must read as missing.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid=SID_LIST_RUN_FILES,
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{RUN_PREFIX}*"]}},
            )
        )
        # A delivery that finds the execution already there says what became of it.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid=SID_DESCRIBE_FAN_OUT,
                actions=["states:DescribeExecution"],
                resources=[self.execution_arns],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid=SID_RUN_FILES_KEY,
                actions=["kms:Decrypt"],
                resources=[key.key_arn],
                conditions={
                    "StringEquals": {"kms:ViaService": f"s3.{stack.region}.{stack.url_suffix}"}
                },
            )
        )

    def _acknowledge(self, bucket: s3.IBucket, function: lambda_.IFunction) -> None:
        stack = Stack.of(self)

        def logical_id(arn: str) -> str:
            # {"Fn::GetAtt": [id, "Arn"]} or {"Ref": id}: the id as the template has it
            resolved = stack.resolve(arn)
            return str(resolved["Fn::GetAtt"][0] if "Fn::GetAtt" in resolved else resolved["Ref"])

        bucket_id = logical_id(bucket.bucket_arn)
        function_id = logical_id(function.function_arn)
        machine_id = logical_id(self.state_machine.state_machine_arn)
        role_policy = self.state_machine.role.node.find_child("DefaultPolicy")
        nag.acknowledge(
            role_policy,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::<{bucket_id}>/*]",
            "The Distributed Map's ItemReader reads the batches with s3:GetObject; their key "
            "comes from the execution's input, which only the function (StartExecution) sets.",
        )
        nag.acknowledge(
            role_policy,
            f"AwsSolutions-IAM5[Resource::<{function_id}.Arn>:*]",
            "CDK's Lambda task grant: the one Snapset function, any of its versions or aliases.",
        )
        nag.acknowledge(
            role_policy,
            "AwsSolutions-IAM5[Resource::*]",
            "Active tracing (xray:PutTraceSegments, PutTelemetryRecords, GetSampling*) and "
            "execution logging (logs:CreateLogDelivery and the other log-delivery actions) "
            "support no resource-level permissions.",
        )
        execution = (
            "arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
            f'{{"Fn::Select":[6,{{"Fn::Split":[":",{{"Ref":"{machine_id}"}}]}}]}}'
        )
        map_policy = self.state_machine.node.find_child("DistributedMapPolicy")
        for suffix in (":*", "/*:*"):
            nag.acknowledge(
                map_policy,
                f"AwsSolutions-IAM5[Resource::{execution}{suffix}]",
                "CDK's Distributed Map grant: DescribeExecution, StopExecution and "
                "RedriveExecution on this state machine's own executions and their child "
                "executions, which are named at run time.",
            )
        function_policy = self._function_role.node.find_child("DefaultPolicy")
        nag.acknowledge(
            function_policy,
            f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{RUN_PREFIX}*]",
            "Batch and result keys are made per run (policy, execution, plan digest, batch); "
            "the grant is s3:GetObject and s3:PutObject under the run prefix only.",
        )
        nag.acknowledge(
            function_policy,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:"
            f"<AWS::AccountId>:execution:{self._name}:*]",
            "states:DescribeExecution on this state machine's executions only, which are named "
            "per trigger at run time (a delivery that finds its trigger's execution reports it).",
        )
