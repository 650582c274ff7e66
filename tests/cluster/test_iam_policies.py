"""The S3 policies of the IRSA roles (iam.tf) against what the platform's clients really send.

The requests come from a local moto endpoint behind tests/cluster/iam.py's RecordingProxy,
driven by boto3 (what the MLflow server uses) and by pyarrow's S3 filesystem (what Ray Train
and Ray Tune write checkpoints and experiments with). Each request becomes the IAM checks AWS
makes for it, evaluated against the policy documents built from iam.tf's HCL. The evaluator
itself is checked first, on hand-written policies, against AWS's documented rules.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer
from pyarrow import fs as pafs

from tests.cluster.iam import (
    ARROW_BACKEND_PROBE,
    TEST_ACCOUNT_ID,
    TEST_KMS_KEY_ARN,
    Authorization,
    Decision,
    PolicyError,
    RecordedRequest,
    RecordingProxy,
    UnmappedRequestError,
    UnresolvedReferenceError,
    bucket_name,
    decisions,
    evaluate,
    policy_document,
    policy_documents,
    s3_requests_to_authorizations,
)
from tests.support import free_port

BUCKET = bucket_name()
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
# One access key per role, as IRSA gives each pod its role's credentials.
RAY_KEY, MLFLOW_KEY = "ray-pods", "mlflow-server"
ROLE_OF_KEY = {RAY_KEY: "ray", MLFLOW_KEY: "mlflow"}
# pyarrow's S3 backend probe: a HeadBucket on a bucket that cannot exist, whose failure it
# expects (it only reads the kind of server off the error), so its denial breaks nothing.


def policies_by_key() -> dict[str, dict[str, Any]]:
    documents = policy_documents()
    return {key: documents[role] for key, role in ROLE_OF_KEY.items()}


def allow(statement_extra: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A one-statement policy."""
    statement = {"Effect": "Allow", **fields, **(statement_extra or {})}
    return {"Version": "2012-10-17", "Statement": [statement]}


# ---------------------------------------------------------------------------------------------
# The evaluator


def test_an_explicit_deny_wins_over_any_allow_in_either_order() -> None:
    allow_all = {"Sid": "All", "Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    deny = {"Sid": "NoDelete", "Effect": "Deny", "Action": "s3:Delete*", "Resource": "*"}
    for statements in ([allow_all, deny], [deny, allow_all]):
        policy = {"Version": "2012-10-17", "Statement": statements}
        assert evaluate(policy, "s3:DeleteObject", f"{BUCKET_ARN}/k", {}) == Decision(
            False, "ExplicitDeny", "NoDelete", f"NoDelete denies s3:DeleteObject on {BUCKET_ARN}/k"
        )
        decision = evaluate(policy, "s3:GetObject", f"{BUCKET_ARN}/k", {})
        assert (decision.allowed, decision.effect, decision.statement) == (True, "Allow", "All")


def test_nothing_applies_is_an_implicit_deny_that_says_why() -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{BUCKET_ARN}/ray/*"},
            {"Sid": "List", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": BUCKET_ARN},
        ],
    }
    decision = evaluate(policy, "s3:GetObject", f"{BUCKET_ARN}/mlflow/k", {})
    assert (decision.allowed, decision.effect, decision.statement) == (False, "ImplicitDeny", None)
    assert "Statement[0]: Resource does not match" in decision.reason
    assert "List: Action does not match s3:GetObject" in decision.reason


@pytest.mark.parametrize(
    ("pattern", "action", "matches"),
    [
        ("s3:GetObject", "s3:getobject", True),  # actions are case-insensitive
        ("S3:GET*", "s3:GetObjectTagging", True),
        ("s3:?etObject", "s3:GetObject", True),
        ("s3:?etObject", "s3:GetObjects", False),
        ("s3:Get*", "s3:PutObject", False),
        ("*", "kms:Decrypt", True),
        ("s3:[GP]utObject", "s3:PutObject", False),  # brackets are literal, unlike fnmatch
    ],
)
def test_actions_match_case_insensitively_with_wildcards(
    pattern: str, action: str, matches: bool
) -> None:
    assert evaluate(allow(Action=pattern, Resource="*"), action, BUCKET_ARN, {}).allowed is matches


@pytest.mark.parametrize(
    ("pattern", "resource", "matches"),
    [
        (f"{BUCKET_ARN}/ray/*", f"{BUCKET_ARN}/ray/train/exp/checkpoint_0/model.pt", True),
        (f"{BUCKET_ARN}/ray/*", f"{BUCKET_ARN}/ray", False),
        (f"{BUCKET_ARN}/ray/*", f"{BUCKET_ARN}/rayx/k", False),
        (f"{BUCKET_ARN}/ray/*", f"{BUCKET_ARN}/Ray/k", False),  # resources are case-sensitive
        (f"{BUCKET_ARN}/ray/?", f"{BUCKET_ARN}/ray/a", True),
        ("arn:aws:s3:::*", "arn:aws:s3:eu-west-1::x", False),  # * stays in its ARN segment
        ("arn:aws:kms:*:*:key/*", TEST_KMS_KEY_ARN, True),
        ("*", TEST_KMS_KEY_ARN, True),
    ],
)
def test_resources_match_case_sensitively_segment_by_segment(
    pattern: str, resource: str, matches: bool
) -> None:
    assert evaluate(allow(Action="*", Resource=pattern), "s3:GetObject", resource, {}).allowed is (
        matches
    )


def test_not_action_and_not_resource_apply_to_everything_else() -> None:
    not_iam = allow(NotAction=["iam:*", "sts:*"], Resource="*")
    assert evaluate(not_iam, "s3:GetObject", f"{BUCKET_ARN}/k", {}).allowed
    assert not evaluate(not_iam, "iam:CreateUser", "*", {}).allowed
    not_mlflow = allow(Action="s3:GetObject", NotResource=f"{BUCKET_ARN}/mlflow/*")
    assert evaluate(not_mlflow, "s3:GetObject", f"{BUCKET_ARN}/ray/k", {}).allowed
    decision = evaluate(not_mlflow, "s3:GetObject", f"{BUCKET_ARN}/mlflow/k", {})
    assert not decision.allowed
    assert "NotResource matches" in decision.reason


# (operator, policy values, request context for the key "s3:prefix", expected)
CONDITION_CASES = [
    ("StringEquals", ["ray/"], {"s3:prefix": "ray/"}, True),
    ("StringEquals", ["ray/"], {"s3:prefix": "Ray/"}, False),
    ("StringEquals", ["ray/"], {}, False),
    ("StringNotEquals", ["ray/"], {"s3:prefix": "mlflow/"}, True),
    ("StringNotEquals", ["ray/"], {"s3:prefix": "ray/"}, False),
    ("StringNotEquals", ["ray/"], {}, True),  # negated on a missing key: true (AWS docs)
    ("StringEqualsIgnoreCase", ["RAY/"], {"s3:prefix": "ray/"}, True),
    ("StringNotEqualsIgnoreCase", ["RAY/"], {"s3:prefix": "ray/"}, False),
    ("StringLike", ["ray/*", "ray/"], {"s3:prefix": "ray/train/"}, True),
    ("StringLike", ["ray/*", "ray/"], {"s3:prefix": "ray"}, False),
    ("StringLike", ["ray/*", "ray/"], {}, False),  # the missing-prefix case of HeadBucket
    ("StringLike", ["r?y/"], {"s3:prefix": "ray/"}, True),
    ("StringNotLike", ["mlflow/*"], {"s3:prefix": "ray/"}, True),
    ("StringNotLike", ["mlflow/*"], {"s3:prefix": "mlflow/1"}, False),
    ("StringNotLike", ["mlflow/*"], {}, True),
    ("StringEqualsIfExists", ["ray/"], {}, True),
    ("StringEqualsIfExists", ["ray/"], {"s3:prefix": "mlflow/"}, False),
    ("StringLikeIfExists", ["ray/*"], {"s3:prefix": "ray/x"}, True),
    ("StringNotEqualsIfExists", ["ray/"], {}, True),
    ("StringNotEqualsIfExists", ["ray/"], {"s3:prefix": "ray/"}, False),
    ("Null", ["true"], {}, True),
    ("Null", ["true"], {"s3:prefix": ""}, False),  # present, even if empty
    ("Null", ["false"], {"s3:prefix": "ray/"}, True),
    ("Null", ["false"], {}, False),
    ("NumericLessThanEquals", ["1000"], {"s3:prefix": "10"}, True),
    ("NumericLessThanEquals", ["1000"], {"s3:prefix": "1001"}, False),
    ("NumericLessThan", ["10"], {"s3:prefix": "not a number"}, False),
    ("NumericNotEquals", ["10"], {"s3:prefix": "11"}, True),
    ("ForAnyValue:StringEquals", ["ray/", "x"], {"s3:prefix": ["a", "x"]}, True),
    ("ForAnyValue:StringEquals", ["ray/"], {"s3:prefix": ["a", "b"]}, False),
    ("ForAnyValue:StringEquals", ["ray/"], {}, False),  # ForAnyValue on a missing key: false
    ("ForAnyValue:StringNotEquals", ["a"], {"s3:prefix": ["a", "b"]}, True),
    ("ForAllValues:StringLike", ["ray/*"], {"s3:prefix": ["ray/a", "ray/b"]}, True),
    ("ForAllValues:StringLike", ["ray/*"], {"s3:prefix": ["ray/a", "mlflow/b"]}, False),
    ("ForAllValues:StringLike", ["ray/*"], {}, True),  # ForAllValues on a missing key: true
    ("ForAllValues:StringLike", ["ray/*"], {"s3:prefix": []}, True),  # an empty set too
    ("ForAllValues:StringNotEquals", ["a", "b"], {"s3:prefix": ["c", "d"]}, True),
    ("ForAllValues:StringNotEquals", ["a", "b"], {"s3:prefix": ["c", "a"]}, False),
    ("ForAnyValue:StringEqualsIfExists", ["a"], {}, True),
    ("StringEquals", ["a"], {"s3:prefix": ["b", "a"]}, True),  # multivalued, no qualifier: any
    ("StringNotEquals", ["a"], {"s3:prefix": ["b", "a"]}, False),  # ... and negated: none
]


@pytest.mark.parametrize(("operator", "values", "context", "expected"), CONDITION_CASES)
def test_condition_operators_follow_aws_rules_for_present_and_missing_keys(
    operator: str, values: list[str], context: dict[str, Any], expected: bool
) -> None:
    policy = allow(
        Action="s3:ListBucket", Resource=BUCKET_ARN, Condition={operator: {"s3:prefix": values}}
    )
    decision = evaluate(policy, "s3:ListBucket", BUCKET_ARN, context)
    assert decision.allowed is expected, decision.reason


@pytest.mark.parametrize(
    ("value", "request_value", "expected"),
    [
        (True, "true", True),
        ("true", "True", True),
        ("false", "true", False),
        (False, "false", True),
    ],
)
def test_bool_compares_true_and_false_whatever_their_case(
    value: Any, request_value: str, expected: bool
) -> None:
    policy = allow(Action="*", Resource="*", Condition={"Bool": {"aws:SecureTransport": value}})
    assert evaluate(
        policy, "s3:GetObject", "*", {"aws:SecureTransport": request_value}
    ).allowed is (expected)


def test_bool_on_a_missing_key_is_false_unless_if_exists() -> None:
    bool_ = allow(Action="*", Resource="*", Condition={"Bool": {"aws:SecureTransport": "true"}})
    assert not evaluate(bool_, "s3:GetObject", "*", {}).allowed
    if_exists = allow(
        Action="*", Resource="*", Condition={"BoolIfExists": {"aws:SecureTransport": "true"}}
    )
    assert evaluate(if_exists, "s3:GetObject", "*", {}).allowed


@pytest.mark.parametrize(
    ("operator", "pattern", "expected"),
    [
        ("ArnLike", "arn:aws:iam::*:role/rayvision-*", True),
        ("ArnEquals", "arn:aws:iam::123456789012:role/rayvision-ray", True),
        ("ArnEquals", "arn:aws:iam::123456789012:role/rayvision-mlflow", False),
        ("ArnNotLike", "arn:aws:iam::*:role/rayvision-*", False),
        ("ArnNotEquals", "arn:aws:iam::123456789012:role/other", True),
    ],
)
def test_arn_operators(operator: str, pattern: str, expected: bool) -> None:
    role = f"arn:aws:iam::{TEST_ACCOUNT_ID}:role/rayvision-ray"
    policy = allow(Action="*", Resource="*", Condition={operator: {"aws:PrincipalArn": pattern}})
    assert evaluate(policy, "s3:GetObject", "*", {"aws:PrincipalArn": role}).allowed is expected


def test_aws_example_stringlike_prefix_denies_a_listing_without_prefix() -> None:
    """AWS's S3 user guide example: ListBucket allowed only under a prefix; a request that
    sends no prefix has no s3:prefix key, so the condition is false and listing is denied."""
    policy = allow(
        Sid="ListHome",
        Action="s3:ListBucket",
        Resource=BUCKET_ARN,
        Condition={"StringLike": {"s3:prefix": ["home/*"]}},
    )
    assert evaluate(policy, "s3:ListBucket", BUCKET_ARN, {"s3:prefix": "home/alice/"}).allowed
    decision = evaluate(policy, "s3:ListBucket", BUCKET_ARN, {"s3:delimiter": "/"})
    assert (decision.allowed, decision.effect) == (False, "ImplicitDeny")
    assert "s3:prefix absent from the request" in decision.reason
    # And the Deny form of the same guide: StringNotEquals on a missing key is true, so the
    # Deny applies to a request without a prefix.
    deny = {
        "Sid": "DenyOutsideHome",
        "Effect": "Deny",
        "Action": "s3:ListBucket",
        "Resource": BUCKET_ARN,
        "Condition": {"StringNotEquals": {"s3:prefix": "home/"}},
    }
    both = {"Version": "2012-10-17", "Statement": [*policy["Statement"], deny]}
    assert evaluate(both, "s3:ListBucket", BUCKET_ARN, {}).effect == "ExplicitDeny"


def test_conditions_and_together_and_their_values_or() -> None:
    policy = allow(
        Action="s3:ListBucket",
        Resource=BUCKET_ARN,
        Condition={
            "StringLike": {"s3:prefix": ["ray/*", "mlflow/*"]},
            "StringEquals": {"s3:delimiter": "/"},
            "Bool": {"aws:SecureTransport": "true"},
        },
    )
    context = {"s3:prefix": "mlflow/1/", "s3:delimiter": "/", "aws:SecureTransport": "true"}
    assert evaluate(policy, "s3:ListBucket", BUCKET_ARN, context).allowed
    for key, value in (("s3:delimiter", "|"), ("aws:SecureTransport", "false")):
        assert not evaluate(policy, "s3:ListBucket", BUCKET_ARN, {**context, key: value}).allowed


def test_condition_keys_are_case_insensitive_their_values_are_not() -> None:
    policy = allow(
        Action="s3:ListBucket", Resource="*", Condition={"StringEquals": {"S3:Prefix": "ray/"}}
    )
    assert evaluate(policy, "s3:ListBucket", BUCKET_ARN, {"s3:prefix": "ray/"}).allowed
    assert not evaluate(policy, "s3:ListBucket", BUCKET_ARN, {"s3:prefix": "RAY/"}).allowed


@pytest.mark.parametrize(
    "policy",
    [
        allow(Action="*", Resource="*", Condition={"DateGreaterThan": {"aws:CurrentTime": "x"}}),
        allow(Action="*", Resource="*", Condition={"NullIfExists": {"s3:prefix": "true"}}),
        allow(Action="*", Resource="*", Condition={"ForSomeValues:StringEquals": {"k": "v"}}),
        allow(Action="*", Resource="*", Principal={"AWS": "*"}),
        allow(Action="*", NotAction="iam:*", Resource="*"),
        allow(Action="*"),
        allow(Action="*", Resource="arn:aws:s3:::b/${aws:username}/*"),
        allow(Action="*", Resource="arn:aws:s3*"),
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}],
        },
    ],
    ids=[
        "date-operator",
        "null-if-exists",
        "unknown-qualifier",
        "principal",
        "action-and-not-action",
        "no-resource",
        "policy-variable",
        "arn-of-five-parts",
        "bad-effect",
    ],
)
def test_what_the_evaluator_cannot_evaluate_faithfully_raises(policy: dict[str, Any]) -> None:
    with pytest.raises(PolicyError):
        evaluate(policy, "s3:GetObject", f"{BUCKET_ARN}/k", {"s3:prefix": "x"})


# ---------------------------------------------------------------------------------------------
# The policy documents from iam.tf


def test_the_policy_documents_are_iam_tf_with_the_test_values() -> None:
    documents = policy_documents()
    assert set(documents) == {"mlflow", "ray"}
    assert documents["ray"] == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListOwnPrefix",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": ["arn:aws:s3:::rayvision-artifacts-123456789012"],
                "Condition": {"StringLike": {"s3:prefix": ["ray/*", "ray/"]}},
            },
            {
                "Sid": "HeadBucketAndMissingKeys",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": ["arn:aws:s3:::rayvision-artifacts-123456789012"],
                "Condition": {"Null": {"s3:prefix": ["true"]}},
            },
            {
                "Sid": "ReadWriteOwnPrefix",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": ["arn:aws:s3:::rayvision-artifacts-123456789012/ray/*"],
            },
            {
                "Sid": "UseBucketKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": [TEST_KMS_KEY_ARN],
            },
        ],
    }
    mlflow = documents["mlflow"]["Statement"]
    assert mlflow[0]["Condition"] == {"StringLike": {"s3:prefix": ["mlflow/*", "mlflow/"]}}
    assert mlflow[2]["Resource"] == ["arn:aws:s3:::rayvision-artifacts-123456789012/mlflow/*"]


def test_the_bucket_arn_follows_s3_tf() -> None:
    documents = policy_documents(name="acme", account_id="999988887777")
    assert documents["ray"]["Statement"][2]["Resource"] == [
        "arn:aws:s3:::acme-artifacts-999988887777/ray/*"
    ]


def test_each_role_reads_and_writes_its_own_prefix_only() -> None:
    documents = policy_documents()
    for role, other in (("ray", "mlflow"), ("mlflow", "ray")):
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
            assert evaluate(documents[role], action, f"{BUCKET_ARN}/{role}/k", {}).allowed
            assert not evaluate(documents[role], action, f"{BUCKET_ARN}/{other}/k", {}).allowed
        listing = {"s3:prefix": f"{other}/"}
        assert not evaluate(documents[role], "s3:ListBucket", BUCKET_ARN, listing).allowed


REFERENCES = {"each.value": "ray", "aws_s3_bucket.artifacts.arn": BUCKET_ARN}


@pytest.mark.parametrize(
    "block",
    [
        {"statement": [{"actions": ["s3:*"], "resources": ["${aws_s3_bucket.other.arn}"]}]},
        {"statement": [{"actions": ["s3:*"], "resources": ["${lower(each.value)}"]}]},
        {"statement": [{"actions": "${local.actions}", "resources": ["*"]}]},
        {"statement": [{"actions": ["s3:*"], "resources": ["*"], "principals": [{}]}]},
        {"dynamic": {"statement": {}}},
        {
            "statement": [
                {
                    "actions": ["s3:ListBucket"],
                    "resources": ["*"],
                    "condition": [
                        {"test": "StringLike", "variable": "s3:prefix", "values": ["a"]},
                        {"test": "StringLike", "variable": "s3:prefix", "values": ["b"]},
                    ],
                }
            ]
        },
        {"statement": [{"actions": ["s3:*"], "resources": ["arn:aws:s3:::b/&{aws:username}"]}]},
    ],
    ids=[
        "unknown-reference",
        "function",
        "list-reference",
        "principals",
        "dynamic-block",
        "duplicate-condition",
        "policy-variable",
    ],
)
def test_the_policy_builder_raises_on_what_it_cannot_resolve(block: dict[str, Any]) -> None:
    with pytest.raises(UnresolvedReferenceError):
        policy_document(block, REFERENCES)


def test_the_policy_builder_keeps_deny_not_actions_and_several_conditions() -> None:
    block = {
        "statement": [
            {
                "effect": "Deny",
                "not_actions": ["s3:GetObject"],
                "resources": ["${aws_s3_bucket.artifacts.arn}/${each.value}/*"],
                "condition": [
                    {"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]},
                    {"test": "StringLike", "variable": "s3:prefix", "values": ["${each.value}/"]},
                ],
            }
        ]
    }
    assert policy_document(block, REFERENCES)["Statement"] == [
        {
            "Effect": "Deny",
            "NotAction": ["s3:GetObject"],
            "Resource": [f"{BUCKET_ARN}/ray/*"],
            "Condition": {
                "Bool": {"aws:SecureTransport": ["false"]},
                "StringLike": {"s3:prefix": ["ray/"]},
            },
        }
    ]


# ---------------------------------------------------------------------------------------------
# Recording a local S3 endpoint


@dataclass
class S3Endpoint:
    proxy: RecordingProxy
    admin: Any  # a boto3 client straight on moto: its calls are not recorded

    def client(self, key: str, **config: Any) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.proxy.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key="secret",  # noqa: S106
            region_name="us-east-1",
            config=Config(**config) if config else None,
        )

    def arrow(self, key: str) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=self.proxy.endpoint.removeprefix("http://"),
            scheme="http",
            access_key=key,
            secret_key="secret",  # noqa: S106
            region="us-east-1",
        )


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with RecordingProxy(f"http://{host}:{port}") as proxy:
            admin = boto3.client(
                "s3",
                endpoint_url=f"http://{host}:{port}",
                aws_access_key_id="admin",
                aws_secret_access_key="secret",  # noqa: S106
                region_name="us-east-1",
            )
            admin.create_bucket(Bucket=BUCKET)
            yield S3Endpoint(proxy, admin)
    finally:
        server.stop()


def operations(authorizations: list[Authorization]) -> list[tuple[str, tuple[Any, ...]]]:
    return [(auth.operation, auth.triple()) for auth in authorizations]


def test_the_proxy_passes_bodies_through_unchanged_and_keeps_only_small_ones(
    s3: S3Endpoint, tmp_path: Path
) -> None:
    """boto3's parallel multipart upload (Content-Length bodies) and pyarrow's uploads
    (chunked, aws-chunked bodies with a trailer) both arrive intact."""
    data = os.urandom(6 * 1024 * 1024)
    source = tmp_path / "big"
    source.write_bytes(data)
    client = s3.client(MLFLOW_KEY)
    parts = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    with s3.proxy.recording() as recorded:
        client.upload_file(str(source), BUCKET, "mlflow/big", Config=parts)
        arrow = s3.arrow(RAY_KEY)
        with arrow.open_output_stream(f"{BUCKET}/ray/big") as stream:
            stream.write(data)
    assert s3.admin.get_object(Bucket=BUCKET, Key="mlflow/big")["Body"].read() == data
    with arrow.open_input_stream(f"{BUCKET}/ray/big") as stream:
        assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(data).digest()
    uploads = [r for r in recorded if "partNumber" in r.query]
    assert len(uploads) >= 3
    assert all(r.body is None for r in uploads), "part bodies stream through, never kept"
    assert any(r.headers.get("transfer-encoding") == "chunked" for r in uploads)
    assert all(r.status == 200 for r in recorded)


def test_the_proxy_answers_502_when_the_endpoint_is_down() -> None:
    with RecordingProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        assert requests.get(f"{proxy.endpoint}/bucket/key?x=1", timeout=10).status_code == 502
        assert [(r.method, r.path, r.query, r.status) for r in proxy.requests] == [
            ("GET", "/bucket/key", "x=1", 502)
        ]


def test_boto3_calls_map_to_their_documented_actions(s3: S3Endpoint) -> None:
    client = s3.client(MLFLOW_KEY)
    with s3.proxy.recording() as recorded:
        client.put_object(Bucket=BUCKET, Key="mlflow/1/a.txt", Body=b"hello")
        client.get_object(Bucket=BUCKET, Key="mlflow/1/a.txt")["Body"].read()
        client.head_object(Bucket=BUCKET, Key="mlflow/1/a.txt")
        client.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/1/", Delimiter="/")
        client.list_objects_v2(Bucket=BUCKET)
        upload = client.create_multipart_upload(Bucket=BUCKET, Key="mlflow/1/big")["UploadId"]
        part = client.upload_part(
            Bucket=BUCKET, Key="mlflow/1/big", UploadId=upload, PartNumber=1, Body=b"x" * 100
        )
        client.list_parts(Bucket=BUCKET, Key="mlflow/1/big", UploadId=upload)
        client.complete_multipart_upload(
            Bucket=BUCKET,
            Key="mlflow/1/big",
            UploadId=upload,
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
        )
        client.copy_object(
            Bucket=BUCKET,
            Key="mlflow/1/b.txt",
            CopySource={"Bucket": BUCKET, "Key": "mlflow/1/a.txt"},
        )
        client.delete_objects(
            Bucket=BUCKET,
            Delete={"Objects": [{"Key": "mlflow/1/a.txt"}, {"Key": "mlflow/1/b.txt"}]},
        )
        with pytest.raises(ClientError):
            client.head_object(Bucket=BUCKET, Key="mlflow/1/gone.txt")
    authorizations = s3_requests_to_authorizations(recorded)
    assert {auth.principal for auth in authorizations} == {MLFLOW_KEY}
    a, b, big = (f"{BUCKET_ARN}/mlflow/1/{name}" for name in ("a.txt", "b.txt", "big"))
    assert operations(authorizations) == [
        ("PutObject", ("s3:PutObject", a, ())),
        ("GetObject", ("s3:GetObject", a, ())),
        ("HeadObject", ("s3:GetObject", a, ())),
        (
            "ListObjectsV2",
            ("s3:ListBucket", BUCKET_ARN, (("s3:delimiter", "/"), ("s3:prefix", "mlflow/1/"))),
        ),
        ("ListObjectsV2", ("s3:ListBucket", BUCKET_ARN, ())),  # no prefix: no s3:prefix key
        ("CreateMultipartUpload", ("s3:PutObject", big, ())),
        ("UploadPart", ("s3:PutObject", big, ())),
        ("ListParts", ("s3:ListMultipartUploadParts", big, ())),
        ("CompleteMultipartUpload", ("s3:PutObject", big, ())),
        (
            "CopyObject",
            ("s3:PutObject", b, (("s3:x-amz-copy-source", f"{BUCKET}/mlflow/1/a.txt"),)),
        ),
        ("CopyObject", ("s3:GetObject", a, ())),
        ("DeleteObjects", ("s3:DeleteObject", a, ())),
        ("DeleteObjects", ("s3:DeleteObject", b, ())),
        ("HeadObject", ("s3:GetObject", f"{BUCKET_ARN}/mlflow/1/gone.txt", ())),
        # A missing key is a 404 only with s3:ListBucket on the bucket; 403 otherwise.
        ("HeadObject (missing key)", ("s3:ListBucket", BUCKET_ARN, ())),
    ]
    first = authorizations[0].context
    assert first["aws:SecureTransport"] == "true"  # as on AWS, over HTTPS
    assert (first["s3:authType"], first["s3:signatureversion"]) == (
        "REST-HEADER",
        "AWS4-HMAC-SHA256",
    )


def test_more_boto3_operations_versions_tags_headers_and_bucket_calls(s3: S3Endpoint) -> None:
    s3.admin.put_bucket_versioning(
        Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}
    )  # not recorded: straight on moto
    client = s3.client(MLFLOW_KEY)
    key = f"{BUCKET_ARN}/mlflow/t.txt"
    with s3.proxy.recording() as recorded:
        version = client.put_object(
            Bucket=BUCKET, Key="mlflow/t.txt", Body=b"x", Tagging="team=ml", ACL="private"
        )["VersionId"]
        client.get_object(Bucket=BUCKET, Key="mlflow/t.txt", VersionId=version)
        client.put_object_tagging(
            Bucket=BUCKET, Key="mlflow/t.txt", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}
        )
        client.get_object_tagging(Bucket=BUCKET, Key="mlflow/t.txt")
        client.get_bucket_location(Bucket=BUCKET)
        client.get_bucket_versioning(Bucket=BUCKET)
        client.list_objects(Bucket=BUCKET, Prefix="", MaxKeys=10)
        client.list_object_versions(Bucket=BUCKET, Prefix="mlflow/")
        upload = client.create_multipart_upload(Bucket=BUCKET, Key="mlflow/c")["UploadId"]
        client.upload_part_copy(
            Bucket=BUCKET,
            Key="mlflow/c",
            UploadId=upload,
            PartNumber=1,
            CopySource={"Bucket": BUCKET, "Key": "mlflow/t.txt", "VersionId": version},
        )
        client.list_multipart_uploads(Bucket=BUCKET)
        client.abort_multipart_upload(Bucket=BUCKET, Key="mlflow/c", UploadId=upload)
        client.delete_object(Bucket=BUCKET, Key="mlflow/t.txt", VersionId=version)
        client.create_bucket(
            Bucket="another-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
    s3.admin.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"})
    versioned = (("s3:versionid", version),)
    assert operations(s3_requests_to_authorizations(recorded)) == [
        (
            "PutObject",
            (
                "s3:PutObject",
                key,
                (
                    ("s3:RequestObjectTag/team", "ml"),
                    ("s3:RequestObjectTagKeys", "team"),
                    ("s3:x-amz-acl", "private"),
                ),
            ),
        ),
        ("PutObject", ("s3:PutObjectAcl", key, ())),
        ("PutObject", ("s3:PutObjectTagging", key, ())),
        ("GetObject", ("s3:GetObjectVersion", key, versioned)),
        ("PutObjectTagging", ("s3:PutObjectTagging", key, ())),
        ("GetObjectTagging", ("s3:GetObjectTagging", key, ())),
        ("GetBucketLocation", ("s3:GetBucketLocation", BUCKET_ARN, ())),
        ("GetBucketVersioning", ("s3:GetBucketVersioning", BUCKET_ARN, ())),
        ("ListObjects", ("s3:ListBucket", BUCKET_ARN, (("s3:max-keys", "10"), ("s3:prefix", "")))),
        ("ListObjectVersions", ("s3:ListBucketVersions", BUCKET_ARN, (("s3:prefix", "mlflow/"),))),
        ("CreateMultipartUpload", ("s3:PutObject", f"{BUCKET_ARN}/mlflow/c", ())),
        (
            "UploadPartCopy",
            (
                "s3:PutObject",
                f"{BUCKET_ARN}/mlflow/c",
                (("s3:x-amz-copy-source", f"{BUCKET}/mlflow/t.txt"),),
            ),
        ),
        ("UploadPartCopy", ("s3:GetObjectVersion", key, versioned)),
        ("ListMultipartUploads", ("s3:ListBucketMultipartUploads", BUCKET_ARN, ())),
        ("AbortMultipartUpload", ("s3:AbortMultipartUpload", f"{BUCKET_ARN}/mlflow/c", ())),
        ("DeleteObject", ("s3:DeleteObjectVersion", key, versioned)),
        (
            "CreateBucket",
            (
                "s3:CreateBucket",
                "arn:aws:s3:::another-bucket",
                (("s3:LocationConstraint", "eu-west-1"),),
            ),
        ),
    ]


def test_presigned_urls_are_authorised_for_the_key_that_signed_them(s3: S3Endpoint) -> None:
    s3.admin.put_object(Bucket=BUCKET, Key="mlflow/p.txt", Body=b"p")
    with s3.proxy.recording() as recorded:
        for version in ("s3v4", "s3"):
            client = s3.client(MLFLOW_KEY, signature_version=version)
            params = {"Bucket": BUCKET, "Key": "mlflow/p.txt"}
            url = client.generate_presigned_url("get_object", Params=params)
            assert requests.get(url, timeout=10).content == b"p"
    v4, v2 = s3_requests_to_authorizations(recorded)
    for auth, signature in ((v4, "AWS4-HMAC-SHA256"), (v2, "AWS")):
        assert auth.principal == MLFLOW_KEY
        assert (auth.action, auth.resource) == ("s3:GetObject", f"{BUCKET_ARN}/mlflow/p.txt")
        assert (auth.context["s3:authType"], auth.context["s3:signatureversion"]) == (
            "REST-QUERY-STRING",
            signature,
        )


def test_a_request_the_mapper_does_not_know_raises(s3: S3Endpoint) -> None:
    with s3.proxy.recording() as recorded, pytest.raises(ClientError):
        s3.client(MLFLOW_KEY).get_bucket_website(Bucket=BUCKET)
    with pytest.raises(UnmappedRequestError, match="website"):
        s3_requests_to_authorizations(recorded)


def _record(method: str, path: str, query: str = "", **headers: str) -> RecordedRequest:
    signed = {"authorization": "AWS4-HMAC-SHA256 Credential=ray-pods/20260101/us-east-1/s3/x"}
    return RecordedRequest(method, path, query, {**signed, **headers})


@pytest.mark.parametrize(
    "record",
    [
        RecordedRequest("GET", f"/{BUCKET}/ray/k", "", {"host": "localhost"}),
        _record("POST", f"/{BUCKET}", "delete"),  # DeleteObjects without its body
        _record("POST", f"/{BUCKET}/ray/k", "select&select-type=2"),
        _record("POST", f"/{BUCKET}/ray/k", "restore"),
        _record("GET", f"/{BUCKET}", "list-type=3"),
        _record("PUT", "/k", host=f"{BUCKET}.s3-accesspoint.eu-west-1.amazonaws.com"),
        _record("DELETE", "/"),
    ],
    ids=[
        "unsigned",
        "delete-without-body",
        "select",
        "restore",
        "list-type",
        "access-point",
        "root",
    ],
)
def test_requests_that_cannot_be_mapped_faithfully_raise(record: RecordedRequest) -> None:
    with pytest.raises(UnmappedRequestError):
        s3_requests_to_authorizations([record])


def test_virtual_host_style_requests_take_the_bucket_from_the_host() -> None:
    local = _record("GET", "/ray/a%20b.txt", host=f"{BUCKET}.localhost:9000")
    aws = _record("HEAD", "/", host=f"{BUCKET}.s3.eu-west-1.amazonaws.com")
    path_style_on_aws = _record("GET", f"/{BUCKET}/ray/k", host="s3.eu-west-1.amazonaws.com")
    sigv2 = RecordedRequest("GET", f"/{BUCKET}/ray/k", "", {"authorization": "AWS ray-pods:sig"})
    authorizations = s3_requests_to_authorizations(
        [local, aws, path_style_on_aws, sigv2], endpoint_host="localhost"
    )
    assert [(a.operation, a.action, a.resource, a.principal) for a in authorizations] == [
        ("GetObject", "s3:GetObject", f"{BUCKET_ARN}/ray/a b.txt", RAY_KEY),
        ("HeadBucket", "s3:ListBucket", BUCKET_ARN, RAY_KEY),
        ("GetObject", "s3:GetObject", f"{BUCKET_ARN}/ray/k", RAY_KEY),
        ("GetObject", "s3:GetObject", f"{BUCKET_ARN}/ray/k", RAY_KEY),
    ]
    assert authorizations[-1].context["s3:signatureversion"] == "AWS"


def test_kms_checks_of_reads_and_writes_in_the_encrypted_bucket() -> None:
    records = [
        _record("PUT", f"/{BUCKET}/ray/k"),
        _record("GET", f"/{BUCKET}/ray/k"),
        _record("HEAD", f"/{BUCKET}/ray/k"),  # metadata only: no KMS
        _record("PUT", "/elsewhere/k"),  # not an SSE-KMS bucket of ours
    ]
    kms = [
        auth
        for auth in s3_requests_to_authorizations(
            records, kms_key_arn=TEST_KMS_KEY_ARN, kms_buckets=[BUCKET]
        )
        if auth.action.startswith("kms:")
    ]
    assert [(a.operation, a.action, a.resource) for a in kms] == [
        ("PutObject", "kms:GenerateDataKey", TEST_KMS_KEY_ARN),
        ("GetObject", "kms:Decrypt", TEST_KMS_KEY_ARN),
    ]
    assert kms[0].context["kms:ViaService"] == "s3.eu-west-1.amazonaws.com"
    assert kms[0].context["kms:EncryptionContext:aws:s3:arn"] == BUCKET_ARN
    policies = policies_by_key()
    assert all(decision.allowed for _, decision in decisions(kms, policies))


# ---------------------------------------------------------------------------------------------
# What Ray Train / Tune (pyarrow) and the MLflow server (boto3) do, against iam.tf


@pytest.fixture(scope="module")
def arrow_requests(s3: S3Endpoint) -> list[RecordedRequest]:
    """What Ray's storage layer does on ``s3://bucket/ray/...`` through pyarrow: create the
    experiment directory, write a checkpoint file, look it and its directory up (and a path
    that does not exist, as a restore check does), list, and delete a directory's contents."""
    arrow = s3.arrow(RAY_KEY)
    with s3.proxy.recording() as recorded:
        arrow.create_dir(f"{BUCKET}/ray/x", recursive=True)
        with arrow.open_output_stream(f"{BUCKET}/ray/x/f.bin") as stream:
            stream.write(b"a" * 100)
        arrow.get_file_info(f"{BUCKET}/ray/x/f.bin")
        arrow.get_file_info(f"{BUCKET}/ray/x")
        arrow.get_file_info(f"{BUCKET}/ray/nope")
        arrow.get_file_info(pafs.FileSelector(f"{BUCKET}/ray", recursive=True))
        arrow.delete_dir_contents(f"{BUCKET}/ray/x")
    return recorded


def test_what_pyarrow_sends_for_ray_storage(arrow_requests: list[RecordedRequest]) -> None:
    authorizations = s3_requests_to_authorizations(arrow_requests)
    assert {auth.principal for auth in authorizations} == {RAY_KEY}
    triples = {auth.triple() for auth in authorizations}
    f_bin = f"{BUCKET_ARN}/ray/x/f.bin"
    assert triples == {
        ("s3:ListBucket", ARROW_BACKEND_PROBE, ()),  # HeadBucket: which S3 implementation
        ("s3:ListBucket", BUCKET_ARN, ()),  # HeadBucket (create_dir), and a missing key's 404
        ("s3:PutObject", f"{BUCKET_ARN}/ray/", ()),  # directory markers
        ("s3:PutObject", f"{BUCKET_ARN}/ray/x/", ()),
        ("s3:PutObject", f_bin, ()),  # CreateMultipartUpload, UploadPart, Complete...
        ("s3:GetObject", f_bin, ()),  # HeadObject
        ("s3:GetObject", f"{BUCKET_ARN}/ray/x", ()),  # HeadObject of a "directory": 404
        ("s3:GetObject", f"{BUCKET_ARN}/ray/nope", ()),
        (
            "s3:ListBucket",
            BUCKET_ARN,
            (("s3:delimiter", "/"), ("s3:max-keys", "1"), ("s3:prefix", "ray/x/")),
        ),
        (
            "s3:ListBucket",
            BUCKET_ARN,
            (("s3:delimiter", "/"), ("s3:max-keys", "1"), ("s3:prefix", "ray/nope/")),
        ),
        ("s3:ListBucket", BUCKET_ARN, (("s3:max-keys", "1000"), ("s3:prefix", "ray/"))),
        ("s3:ListBucket", BUCKET_ARN, (("s3:max-keys", "1000"), ("s3:prefix", "ray/x/"))),
        ("s3:DeleteObject", f_bin, ()),  # DeleteObjects
    }
    head_buckets = [a for a in authorizations if a.operation == "HeadBucket"]
    assert [a.resource for a in head_buckets] == [ARROW_BACKEND_PROBE, BUCKET_ARN], (
        "pyarrow's create_dir(recursive=True) checks the bucket with HeadBucket"
    )
    assert {a.operation for a in authorizations} == {
        "HeadBucket",
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "HeadObject",
        "HeadObject (missing key)",
        "ListObjectsV2",
        "DeleteObjects",
    }


def _denied(authorizations: list[Authorization]) -> list[str]:
    return [
        f"{auth.operation} {auth.request_summary}: {decision.reason}"
        for auth, decision in decisions(authorizations, policies_by_key())
        if not decision.allowed
    ]


def test_the_ray_policy_allows_what_pyarrow_does_under_ray(
    arrow_requests: list[RecordedRequest],
) -> None:
    """HeadBucket (create_dir) and the 404 of a missing key carry no s3:prefix: allowed by
    HeadBucketAndMissingKeys, without which Ray Train's checkpoints to S3 fail. Arrow's backend
    probe (a HeadBucket of a bucket that cannot exist) is meant to fail, and is left out."""
    authorizations = [
        auth
        for auth in s3_requests_to_authorizations(
            arrow_requests, kms_key_arn=TEST_KMS_KEY_ARN, kms_buckets=[BUCKET]
        )
        if auth.resource != ARROW_BACKEND_PROBE
    ]
    assert _denied(authorizations) == []


def test_the_mlflow_policy_allows_what_the_mlflow_artifact_store_does(
    s3: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MLflow server's artifact proxying (S3ArtifactRepository: boto3) on the layout of
    --artifacts-destination s3://bucket/mlflow: log, list, download, delete a run's artifacts."""
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    for name, value in {
        "MLFLOW_S3_ENDPOINT_URL": s3.proxy.endpoint,
        "AWS_ACCESS_KEY_ID": MLFLOW_KEY,
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "metrics.json").write_text("{}")
    repo = S3ArtifactRepository(f"s3://{BUCKET}/mlflow/1/run-id/artifacts")
    with s3.proxy.recording() as recorded:
        repo.log_artifact(str(tmp_path / "metrics.json"))
        repo.log_artifacts(str(tmp_path / "model"), "model")
        assert {info.path for info in repo.list_artifacts()} == {"metrics.json", "model"}
        (tmp_path / "download").mkdir()
        repo.download_artifacts("model", str(tmp_path / "download"))
        repo.delete_artifacts("model")
    authorizations = s3_requests_to_authorizations(
        recorded, kms_key_arn=TEST_KMS_KEY_ARN, kms_buckets=[BUCKET]
    )
    assert {a.operation for a in authorizations} >= {
        "PutObject",
        "ListObjectsV2",
        "HeadObject",
        "GetObject",
        "DeleteObjects",
    }
    assert {a.principal for a in authorizations} == {MLFLOW_KEY}
    assert _denied(authorizations) == []
