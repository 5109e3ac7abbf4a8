"""Metrics: the signal catalog, one GetMetricData per poll, rule evaluation, the bake watch, compare.

Nothing here imports boto3 at module level: the CloudWatch client is passed in,
so importing this package from the plugin stays cheap.
"""
