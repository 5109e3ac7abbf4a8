"""Create the service's Lambda functions with aliases `live` (users) and `preview` (the preview stage) on a moto server."""

from __future__ import annotations

import io
import zipfile

import boto3

FUNCTIONS = ["onchain-api", "onchain-ws"]


def lambda_client(url: str):
    return boto3.client("lambda", region_name="us-east-1", endpoint_url=url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return {'statusCode': 200}\n")
    return buf.getvalue()


def create_service(url: str, extra_versions: int = 0) -> None:
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    role = iam.create_role(RoleName="onchain", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    client = lambda_client(url)
    for fn in FUNCTIONS:
        client.create_function(FunctionName=fn, Runtime="python3.11", Role=role, Handler="handler.handler",
                               Code={"ZipFile": _zip()}, Environment={"Variables": {"LLAMA_RELEASE": "v0"}})
        v1 = client.publish_version(FunctionName=fn)["Version"]
        client.create_alias(FunctionName=fn, Name="live", FunctionVersion=v1)
        client.create_alias(FunctionName=fn, Name="preview", FunctionVersion=v1)
        for i in range(extra_versions):
            client.update_function_configuration(FunctionName=fn, Environment={"Variables": {"LLAMA_RELEASE": f"x{i}"}})
            client.publish_version(FunctionName=fn)


def alias_state(url: str) -> dict[str, tuple[str, dict[str, float]]]:
    client = lambda_client(url)
    out = {}
    for fn in FUNCTIONS:
        a = client.get_alias(FunctionName=fn, Name="live")
        out[fn] = (a["FunctionVersion"], dict((a.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}))
    return out
