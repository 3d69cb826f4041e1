"""`SnapsetStack`: a thin stack around the `Snapset` construct, with the outputs operators need."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from infra.config import SnapsetConfig
from infra.snapset import Snapset


class SnapsetStack(Stack):
    """One Snapset deployment. Extra keyword arguments go to `Stack` (env, stack_name, tags...)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: SnapsetConfig, **kwargs: Any
    ) -> None:
        kwargs.setdefault("description", "Snapset: crash-consistent multi-volume EBS snapshot sets")
        super().__init__(scope, construct_id, **kwargs)
        self.snapset = Snapset(self, "Snapset", config=config)
        CfnOutput(
            self,
            "TopicArn",
            value=self.snapset.topic.topic_arn,
            description="SNS topic with run reports and alarms",
        )
        CfnOutput(
            self,
            "ReportBucket",
            value=self.snapset.reports.bucket.bucket_name,
            description="Every run's full report, under reports/<policy>/<yyyy>/<mm>/<dd>/",
        )
        CfnOutput(
            self,
            "FunctionName",
            value=self.snapset.function.function_name,
            description="The snapshot Lambda",
        )
        CfnOutput(
            self,
            "ExampleInvokeCommand",
            value=self.snapset.invoke_command(),
            description='Run the first policy now (add "dry_run": true to only check access)',
        )
