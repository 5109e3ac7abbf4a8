"""A deploy command for the tests: publishes a new Lambda version of each function (boto3's
standard configuration, so AWS_ENDPOINT_URL points it at moto), as `serverless deploy` would.

Knobs (environment variables) for the reliability tests:
  FAIL_DEPLOY=R        exit 3 for release R, as a broken CloudFormation stack would
  DEPLOY_BLOCK=FILE    start a grandchild, write "child_pid grandchild_pid" to FILE, then hang (60 s at most)
  DEPLOY_SLEEP=S       take S seconds after publishing (a slow deploy)
  FOREIGN_PUBLISH=1    after ours, someone else publishes another version (release v9) on top
  UNMARKED_PUBLISH=1   publish without naming the release (no Description, no LLAMA_RELEASE)
  DEPLOY_ONLY=FN,...   publish only these functions (a partial release: the others are unchanged)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import boto3


def _hang(ready: str) -> None:
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(ready + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {grandchild.pid}")
    os.replace(ready + ".tmp", ready)
    time.sleep(60)  # bounded: the gate kills us (and the grandchild) long before


def main() -> int:
    release = sys.argv[1]
    functions = sys.argv[2].split(",")
    if os.environ.get("DEPLOY_ONLY"):
        functions = [fn for fn in functions if fn in os.environ["DEPLOY_ONLY"].split(",")]
    if os.environ.get("FAIL_DEPLOY") == release:
        print(f"deploying {release}: CloudFormation stack in UPDATE_ROLLBACK_FAILED", file=sys.stderr)
        return 3
    if os.environ.get("DEPLOY_BLOCK"):
        _hang(os.environ["DEPLOY_BLOCK"])
    client = boto3.client("lambda", region_name="us-east-1")
    unmarked = bool(os.environ.get("UNMARKED_PUBLISH"))
    versions = {}
    for fn in functions:
        client.update_function_configuration(FunctionName=fn, Environment={
            "Variables": {"LLAMA_RELEASE": "" if unmarked else release}})
        versions[fn] = client.publish_version(FunctionName=fn, Description="" if unmarked else release)["Version"]
    if os.environ.get("FOREIGN_PUBLISH"):
        for fn in functions:
            client.update_function_configuration(FunctionName=fn, Environment={"Variables": {"LLAMA_RELEASE": "v9"}})
            client.publish_version(FunctionName=fn, Description="release v9")
    if os.environ.get("DEPLOY_SLEEP"):
        time.sleep(float(os.environ["DEPLOY_SLEEP"]))
    # A token in the output must be redacted in the ledger and the log.
    print(f"deployed {release}: {json.dumps(versions)} using password=hunter2hunter2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
