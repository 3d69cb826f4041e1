"""Embedded local AWS for Snapset's end-to-end tests, demo and benchmarks: a moto server with a
faithful EC2 CreateSnapshots, EventBridge completion events, fault injection and a clean
process lifecycle.  See localaws/README.md."""

from localaws.faults import ErrorFault, FaultRule, Throttle
from localaws.process import LocalAws, LocalAwsError

__all__ = ["ErrorFault", "FaultRule", "LocalAws", "LocalAwsError", "Throttle"]
