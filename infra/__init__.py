"""Snapset's CDK app: configuration model, the `Snapset` construct (one construct per concern)
and its stack."""
