"""The `snapset` command line: plan and run policies from a terminal, and the local demo.

It is not part of the Lambda's code asset (`lambdas/`): it calls the runtime package `snapset`
the way the handler does, and adds what only a terminal needs (argument parsing, progress,
tables, reading cdk.json).
"""
