"""Snapset's CDK app: configuration model, the `SnapshotPolicies` construct and its stack."""
