"""Snapset: crash-consistent multi-volume EBS snapshots of EC2 instances."""

__version__ = "0.1.0"
