"""A deploy command for the tests: publishes a new Lambda version of each function (boto3's
standard configuration, so AWS_ENDPOINT_URL points it at moto), as `serverless deploy` would."""

from __future__ import annotations

import json
import os
import sys

import boto3


def main() -> int:
    release = sys.argv[1]
    functions = sys.argv[2].split(",")
    if os.environ.get("FAIL_DEPLOY") == release:
        print(f"deploying {release}: CloudFormation stack in UPDATE_ROLLBACK_FAILED", file=sys.stderr)
        return 3
    client = boto3.client("lambda", region_name="us-east-1")
    versions = {}
    for fn in functions:
        client.update_function_configuration(FunctionName=fn, Environment={"Variables": {"LLAMA_RELEASE": release}})
        versions[fn] = client.publish_version(FunctionName=fn, Description=release)["Version"]
    # A token in the output must be redacted in the ledger and the log.
    print(f"deployed {release}: {json.dumps(versions)} using password=hunter2hunter2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
