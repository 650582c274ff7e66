"""What the platform's IAM roles let its pods do on S3, checked without AWS.

Three parts, each usable on its own:

- ``policy_documents()``: the IAM JSON policies of the IRSA roles, built from the HCL of
  iam.tf (``data "aws_iam_policy_document" "bucket_prefix"``) with concrete test values for the
  Terraform references, so what is checked is what Terraform deploys.
- ``evaluate()``: a small IAM evaluator for identity policies (explicit Deny wins, else any
  Allow, else implicit deny; wildcards; NotAction / NotResource; the common condition operators
  with AWS's rules for keys missing from the request).
- ``RecordingProxy`` and ``s3_requests_to_authorizations()``: record the S3 HTTP requests a
  client really makes (pyarrow's S3 filesystem for Ray Train / Tune, boto3 for MLflow) against
  a local S3 endpoint, and turn each into the IAM action(s), resource ARN(s) and condition keys
  AWS authorises it with (AWS's "Required permissions for Amazon S3 API operations" and the
  Service Authorization Reference for S3).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.cluster.clusterlib import terraform_blocks

ContextValue = str | list[str]
Context = Mapping[str, ContextValue]

# Test values for what Terraform only knows at apply time.
TEST_ACCOUNT_ID = "123456789012"
TEST_REGION = "eu-west-1"
# Arrow's S3 filesystem sends a HeadBucket of a bucket that cannot exist to learn which S3 it
# talks to, and expects it to fail: a denial of it changes nothing.
ARROW_BACKEND_PROBE = "arn:aws:s3:::$extremelyunlikelytoexist$"
TEST_KMS_KEY_ARN = (
    f"arn:aws:kms:{TEST_REGION}:{TEST_ACCOUNT_ID}:key/0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
)


class UnresolvedReferenceError(ValueError):
    """A Terraform expression the policy builder cannot turn into a value: never guessed."""


class PolicyError(ValueError):
    """A policy the evaluator cannot evaluate faithfully (unknown element or operator)."""


class UnmappedRequestError(ValueError):
    """An S3 request the mapper does not know the IAM authorisation of: never skipped, so a
    new kind of call shows up as a failing test instead of an unchecked permission."""


# ---------------------------------------------------------------------------------------------
# Policy documents from iam.tf


_INTERPOLATION = re.compile(r"\$\{([^${}]*)\}")
_TOSET_LITERAL = re.compile(r"^\$\{toset\((\[.*\])\)\}$", re.DOTALL)
_STATEMENT_FIELDS = {
    "sid": "Sid",
    "effect": "Effect",
    "actions": "Action",
    "not_actions": "NotAction",
    "resources": "Resource",
    "not_resources": "NotResource",
    "condition": "Condition",
}
_CONDITION_FIELDS = {"test", "variable", "values"}


def _interpolate(text: Any, references: Mapping[str, str]) -> str:
    """A Terraform string with each ``${reference}`` replaced by its value; anything else that
    Terraform would evaluate (functions, unknown references, ``%{}`` directives, IAM ``&{}``
    policy variables) raises, since a guessed value would make the check meaningless."""
    if not isinstance(text, str):
        raise UnresolvedReferenceError(f"expected a string, got {text!r}")

    def resolve(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        if expression not in references:
            raise UnresolvedReferenceError(f"cannot resolve ${{{expression}}} in {text!r}")
        return references[expression]

    value = _INTERPOLATION.sub(resolve, text)
    for marker in ("${", "%{", "&{"):
        if marker in value:
            raise UnresolvedReferenceError(f"unsupported expression left in {text!r}")
    return value


def _strings(values: Any, references: Mapping[str, str], what: str) -> list[str]:
    """An HCL list of strings, interpolated; a bare reference to a list (``local.x``) raises."""
    if not isinstance(values, list):
        raise UnresolvedReferenceError(f"{what}: expected a list literal, got {values!r}")
    return [_interpolate(value, references) for value in values]


def for_each_keys(for_each: Any) -> list[str]:
    """The keys of ``for_each = toset([...])`` or ``for_each = [...]`` with string literals."""
    if isinstance(for_each, list) and all(isinstance(key, str) for key in for_each):
        return list(for_each)
    match = _TOSET_LITERAL.match(for_each) if isinstance(for_each, str) else None
    if match:
        keys = json.loads(match.group(1))
        if isinstance(keys, list) and all(isinstance(key, str) and "${" not in key for key in keys):
            return keys
    raise UnresolvedReferenceError(f"for_each {for_each!r} is not a set of string literals")


def _condition(blocks: Any, references: Mapping[str, str]) -> dict[str, dict[str, list[str]]]:
    """Condition blocks as IAM JSON: operator -> key -> values (values OR, blocks AND).

    Two blocks with the same test and variable raise: the AWS provider merges their values into
    one condition (OR), which is rarely what their author meant (AND)."""
    condition: dict[str, dict[str, list[str]]] = {}
    for block in blocks:
        if set(block) != _CONDITION_FIELDS:
            raise UnresolvedReferenceError(
                f"condition block {block!r}: expected test/variable/values"
            )
        test = _interpolate(block["test"], references)
        variable = _interpolate(block["variable"], references)
        if variable in condition.get(test, {}):
            raise UnresolvedReferenceError(f"two {test} conditions on {variable}")
        values = _strings(block["values"], references, f"condition {test} {variable}")
        condition.setdefault(test, {})[variable] = values
    return condition


def _statement(block: Mapping[str, Any], references: Mapping[str, str]) -> dict[str, Any]:
    """One ``statement {}`` block as an IAM JSON statement (Effect defaults to Allow)."""
    unknown = set(block) - set(_STATEMENT_FIELDS)
    if unknown:
        raise UnresolvedReferenceError(f"statement fields not supported: {sorted(unknown)}")
    statement: dict[str, Any] = {}
    if "sid" in block:
        statement["Sid"] = _interpolate(block["sid"], references)
    statement["Effect"] = _interpolate(block.get("effect", "Allow"), references)
    for name in ("actions", "not_actions", "resources", "not_resources"):
        if name in block:
            statement[_STATEMENT_FIELDS[name]] = _strings(block[name], references, name)
    if "condition" in block:
        statement["Condition"] = _condition(block["condition"], references)
    return statement


def policy_document(block: Mapping[str, Any], references: Mapping[str, str]) -> dict[str, Any]:
    """An ``aws_iam_policy_document`` body (one for_each instance) as IAM JSON."""
    unknown = set(block) - {"for_each", "statement"}
    if unknown:
        raise UnresolvedReferenceError(f"policy document fields not supported: {sorted(unknown)}")
    return {
        "Version": "2012-10-17",
        "Statement": [_statement(st, references) for st in block.get("statement", [])],
    }


def bucket_name(name: str | None = None, account_id: str = TEST_ACCOUNT_ID) -> str:
    """The artifacts bucket's name as s3.tf builds it (``var.name`` defaults to its default),
    so a rename there follows here."""
    default = terraform_blocks("variable")["name"]["default"]
    base = {"var.name": name if name is not None else default, "local.account_id": account_id}
    return _interpolate(terraform_blocks("resource")["aws_s3_bucket.artifacts"]["bucket"], base)


def policy_documents(
    name: str | None = None,
    account_id: str = TEST_ACCOUNT_ID,
    region: str = TEST_REGION,
    kms_key_arn: str = TEST_KMS_KEY_ARN,
) -> dict[str, dict[str, Any]]:
    """The IRSA roles' S3 policies (``bucket_prefix``) as IAM JSON, by role key ("mlflow",
    "ray"), for a test account: the bucket of s3.tf, ``kms_key_arn`` for ``aws_kms_key.main``."""
    bucket = bucket_name(name, account_id)
    references = {
        "var.name": name if name is not None else terraform_blocks("variable")["name"]["default"],
        "var.region": region,
        "local.account_id": account_id,
        "local.partition": "aws",
        "aws_s3_bucket.artifacts.arn": f"arn:aws:s3:::{bucket}",
        "aws_s3_bucket.artifacts.id": bucket,
        "aws_s3_bucket.artifacts.bucket": bucket,
        "aws_kms_key.main.arn": kms_key_arn,
    }
    block = terraform_blocks("data")["aws_iam_policy_document.bucket_prefix"]
    return {
        key: policy_document(block, {**references, "each.key": key, "each.value": key})
        for key in for_each_keys(block["for_each"])
    }


def role_policies(rds_secret_arn: str = "", **test_values: str) -> dict[str, dict[str, Any]]:
    """The whole policy of the "mlflow" and "ray" roles: ``policy_documents()``, plus for
    mlflow the statements of ``data "aws_iam_policy_document" "mlflow"``, whose only source
    document must be bucket_prefix["mlflow"]; ``rds_secret_arn`` stands for the RDS-managed
    secret's ARN."""
    documents = policy_documents(**test_values)
    block = dict(terraform_blocks("data")["aws_iam_policy_document.mlflow"])
    source = block.pop("source_policy_documents")
    if source != ['${data.aws_iam_policy_document.bucket_prefix["mlflow"].json}']:
        raise UnresolvedReferenceError(f"mlflow's source_policy_documents: {source!r}")
    references = {"aws_db_instance.mlflow.master_user_secret[0].secret_arn": rds_secret_arn}
    extra = policy_document(block, references)["Statement"]
    mlflow = documents["mlflow"]
    return {**documents, "mlflow": {**mlflow, "Statement": mlflow["Statement"] + extra}}


# ---------------------------------------------------------------------------------------------
# The evaluator


@dataclass(frozen=True)
class Decision:
    """The outcome for one request: which statement decided it, and why in words."""

    allowed: bool
    effect: Literal["Allow", "ExplicitDeny", "ImplicitDeny"]
    statement: str | None
    reason: str


_STATEMENT_ELEMENTS = {
    "Sid",
    "Effect",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
}


def _glob(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """IAM wildcards: ``*`` any run of characters, ``?`` one character, nothing else special
    (unlike fnmatch, brackets are literal)."""
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch(regex, value, flags) is not None


def _arn_match(pattern: str, arn: str) -> bool:
    """ArnLike / Resource matching: each of the six colon-separated parts on its own (the last
    one may hold colons), so a ``*`` cannot run from the service into the resource part."""
    if pattern == "*":
        return True
    pattern_parts, arn_parts = pattern.split(":", 5), arn.split(":", 5)
    if len(pattern_parts) != 6:
        raise PolicyError(f"{pattern!r} is neither * nor an ARN of six parts")
    if len(arn_parts) != 6:
        return False  # a request on "*" (ListAllMyBuckets) matches only "*"
    return all(_glob(p, a) for p, a in zip(pattern_parts, arn_parts, strict=True))


def _as_list(value: Any) -> list[str]:
    """A policy element that may be a string or a list, as strings (JSON true -> "true")."""
    values = value if isinstance(value, list) else [value]
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in values]


def _numbers(policy_value: str, request_value: str) -> tuple[float, float] | None:
    try:
        return float(policy_value), float(request_value)
    except ValueError:
        return None


def _numeric(compare: Callable[[float, float], bool]) -> Callable[[str, str], bool]:
    def match(policy_value: str, request_value: str) -> bool:
        numbers = _numbers(policy_value, request_value)
        return numbers is not None and compare(numbers[1], numbers[0])

    return match


# Positive matchers (policy value, request value); a negated operator is "no value matches".
_MATCHERS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda p, r: p == r,
    "StringEqualsIgnoreCase": lambda p, r: p.casefold() == r.casefold(),
    "StringLike": _glob,
    "Bool": lambda p, r: p.casefold() == r.casefold(),
    "ArnEquals": _arn_match,
    "ArnLike": _arn_match,
    "NumericEquals": _numeric(lambda r, p: r == p),
    "NumericLessThan": _numeric(lambda r, p: r < p),
    "NumericLessThanEquals": _numeric(lambda r, p: r <= p),
    "NumericGreaterThan": _numeric(lambda r, p: r > p),
    "NumericGreaterThanEquals": _numeric(lambda r, p: r >= p),
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
    "NumericNotEquals": "NumericEquals",
}


def _context_values(context: Context, key: str) -> list[str] | None:
    """The request's values for a key (keys are case-insensitive); None when absent. An empty
    list counts as absent, as AWS treats an empty multivalued key."""
    for name, value in context.items():
        if name.lower() == key.lower():
            values = value if isinstance(value, list) else [value]
            return values or None
    return None


def _condition_holds(operator: str, key: str, policy_values: list[str], context: Context) -> bool:
    """One operator on one key. AWS's rules: a key missing from the request makes a positive
    operator false and a negated one (StringNotEquals, ...) true; ``...IfExists`` makes a missing
    key true; ``ForAllValues:`` is true on a missing key, ``ForAnyValue:`` false."""
    qualifier, _, base = operator.rpartition(":")
    if qualifier not in ("", "ForAnyValue", "ForAllValues"):
        raise PolicyError(f"unknown set qualifier in {operator}")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    request_values = _context_values(context, key)

    if base == "Null":
        if qualifier or if_exists:
            raise PolicyError(f"{operator} is not a valid operator")
        return any((v.casefold() == "true") == (request_values is None) for v in policy_values)
    negated = base in _NEGATED
    matcher = _MATCHERS.get(_NEGATED.get(base, base))
    if matcher is None:
        raise PolicyError(f"condition operator {operator} is not supported")

    if request_values is None:
        if if_exists:
            return True
        if qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return negated

    def satisfied(request_value: str) -> bool:
        matched = any(matcher(p, request_value) for p in policy_values)
        return not matched if negated else matched

    if qualifier == "ForAllValues":
        return all(satisfied(v) for v in request_values)
    if qualifier == "ForAnyValue" or not negated:
        return any(satisfied(v) for v in request_values)
    # A negated operator without qualifier on a multivalued key: no request value may match.
    return all(satisfied(v) for v in request_values)


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The policy's statements, validated: identity policies only, every element known."""
    unknown = set(policy) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyError(f"policy elements not supported: {sorted(unknown)}")
    statements = policy["Statement"]
    statements = [statements] if isinstance(statements, Mapping) else list(statements)
    for statement in statements:
        extra = set(statement) - _STATEMENT_ELEMENTS
        if extra:
            raise PolicyError(f"statement elements not supported in an identity policy: {extra}")
        if statement.get("Effect") not in ("Allow", "Deny"):
            raise PolicyError(f"statement without a valid Effect: {statement}")
        if ("Action" in statement) == ("NotAction" in statement):
            raise PolicyError(f"statement needs exactly one of Action/NotAction: {statement}")
        if ("Resource" in statement) == ("NotResource" in statement):
            raise PolicyError(f"statement needs exactly one of Resource/NotResource: {statement}")
        for values in (statement.get("Resource"), statement.get("NotResource")):
            if values is not None and any("${" in v for v in _as_list(values)):
                raise PolicyError(f"policy variables are not supported: {values}")
    return statements


def _why_not(
    statement: Mapping[str, Any], action: str, resource: str, context: Context
) -> str | None:
    """None when the statement applies to the request, else the first reason it does not."""
    if "Action" in statement:
        if not any(_glob(p, action, ignore_case=True) for p in _as_list(statement["Action"])):
            return f"Action does not match {action}"
    elif any(_glob(p, action, ignore_case=True) for p in _as_list(statement["NotAction"])):
        return f"NotAction matches {action}"
    if "Resource" in statement:
        if not any(_arn_match(p, resource) for p in _as_list(statement["Resource"])):
            return f"Resource does not match {resource}"
    elif any(_arn_match(p, resource) for p in _as_list(statement["NotResource"])):
        return f"NotResource matches {resource}"
    for operator, keys in statement.get("Condition", {}).items():
        for key, values in keys.items():
            if not _condition_holds(operator, key, _as_list(values), context):
                present = _context_values(context, key)
                seen = "absent from the request" if present is None else f"is {present}"
                return f"condition {operator} {key} {_as_list(values)} is false ({key} {seen})"
    return None


def evaluate(policy: Mapping[str, Any], action: str, resource: str, context: Context) -> Decision:
    """An identity policy's decision on one (action, resource, context): an applicable Deny
    statement wins, else an applicable Allow, else the implicit deny."""
    allowed_by: str | None = None
    misses: list[str] = []
    for index, statement in enumerate(_statements(policy)):
        label = statement.get("Sid") or f"Statement[{index}]"
        why_not = _why_not(statement, action, resource, context)
        if why_not is not None:
            misses.append(f"{label}: {why_not}")
        elif statement["Effect"] == "Deny":
            return Decision(False, "ExplicitDeny", label, f"{label} denies {action} on {resource}")
        elif allowed_by is None:
            allowed_by = label
    if allowed_by is not None:
        return Decision(True, "Allow", allowed_by, f"{allowed_by} allows {action} on {resource}")
    reason = f"no statement allows {action} on {resource}: " + "; ".join(misses)
    return Decision(False, "ImplicitDeny", None, reason)


# ---------------------------------------------------------------------------------------------
# Recording S3 requests


@dataclass
class RecordedRequest:
    """One HTTP request as the client sent it. ``headers`` have lower-case names; ``body`` is
    kept only for small bodies (S3's XML requests, e.g. DeleteObjects' key list), None else;
    ``status`` is the endpoint's answer, once it came."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes | None = None
    status: int | None = None


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_COPY_CHUNK = 64 * 1024


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: RecordingProxy  # set on the subclass each proxy makes

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

    def _forward(self) -> None:
        split = urlsplit(self.path)
        headers = [(name, value) for name, value in self.headers.items()]
        length = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        record = RecordedRequest(
            self.command, split.path, split.query, {n.lower(): v for n, v in headers}
        )
        if length is not None and int(length) <= self.proxy.max_body:
            record.body = self.rfile.read(int(length))
        self.proxy.add(record)

        upstream = http.client.HTTPConnection(
            self.proxy.upstream_host, self.proxy.upstream_port, timeout=60
        )
        try:
            # The Host header and every other header go upstream untouched: they are signed.
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                upstream.putheader(name, value)
            upstream.endheaders()
            if record.body is not None:
                upstream.send(record.body)
            elif length is not None:
                self._copy_exactly(int(length), upstream)
            elif chunked:
                self._copy_chunked(upstream)
            response = upstream.getresponse()
        except OSError:
            record.status = 502  # the endpoint is down: say so instead of hanging the client
            self.send_error(502, "S3 endpoint unreachable")
            upstream.close()
            return
        try:
            record.status = response.status
            self._relay(response)
        finally:
            upstream.close()

    def _copy_exactly(self, remaining: int, upstream: http.client.HTTPConnection) -> None:
        while remaining > 0:
            data = self.rfile.read(min(remaining, _COPY_CHUNK))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            upstream.send(data)
            remaining -= len(data)

    def _copy_chunked(self, upstream: http.client.HTTPConnection) -> None:
        """Relays a chunked body as it comes, framing included (the payload may itself be
        aws-chunked, with signatures or trailers the endpoint checks)."""
        while True:
            size_line = self.rfile.readline()
            upstream.send(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailer fields, up to the empty line
                    line = self.rfile.readline()
                    upstream.send(line)
                    if line in (b"\r\n", b"\n", b""):
                        return
            self._copy_exactly(size + 2, upstream)  # the chunk and its CRLF

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        no_body = self.command == "HEAD" or response.status in (204, 304)
        if no_body:
            self.end_headers()
            return
        if response.getheader("Content-Length") is not None:
            self.end_headers()
            while data := response.read(_COPY_CHUNK):
                self.wfile.write(data)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while data := response.read(_COPY_CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")


class RecordingProxy:
    """A reverse proxy in front of an S3 endpoint that records every request a client makes.

    Why not moto's own recorder (``moto.moto_api._internal.recorder``): it is one process-wide
    object whose file is fixed when moto is imported (``MOTO_RECORDER_FILEPATH``, by default
    ``moto_recording`` in the working directory) and whose switch affects every moto server and
    ``mock_aws`` of the process; it base64-encodes every body it reads into that file; and it
    appends each entry with two writes, so concurrent requests with bodies over 8 KiB (boto3's
    parallel multipart uploads, as MLflow makes) interleave into lines that do not parse. Here
    each proxy has its own list, behind a lock; bodies stream through (only those up to
    ``max_body`` bytes are kept, which covers S3's XML requests such as DeleteObjects); and it
    works in front of any endpoint (a ThreadedMotoServer, a ``moto_server`` process, MinIO).

    Everything goes upstream byte for byte (the Host header included, so SigV4 signatures stay
    valid for an endpoint that checks them); chunked request bodies are relayed with their
    framing, and ``Expect: 100-continue`` is answered here before the body is read.
    """

    def __init__(self, upstream: str, max_body: int = 64 * 1024) -> None:
        parsed = urlsplit(upstream)
        if parsed.scheme != "http" or parsed.hostname is None or parsed.port is None:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream_host, self.upstream_port = parsed.hostname, parsed.port
        self.max_body = max_body
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The URL clients use instead of the upstream's."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests so far, in the order they arrived."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    @contextmanager
    def recording(self) -> Iterator[list[RecordedRequest]]:
        """Collects the requests made inside the ``with`` block into the yielded list (filled
        when the block ends)."""
        start = len(self.requests)
        collected: list[RecordedRequest] = []
        try:
            yield collected
        finally:
            collected.extend(self.requests[start:])

    def start(self) -> RecordingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# From S3 requests to IAM authorisations


@dataclass(frozen=True)
class Authorization:
    """One IAM check AWS makes for a request: who, which action, on what, with which keys."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(hash=False)
    request_summary: str
    operation: str

    def triple(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """(action, resource, the request-specific condition keys and values): what a test
        compares; the keys every signed request carries (COMMON_CONTEXT_KEYS) are left out."""
        specific = sorted(
            (key, ",".join(value) if isinstance(value, list) else value)
            for key, value in self.context.items()
            if key not in COMMON_CONTEXT_KEYS
        )
        return self.action, self.resource, tuple(specific)


COMMON_CONTEXT_KEYS = frozenset(
    {"aws:SecureTransport", "s3:authType", "s3:signatureversion", "s3:x-amz-content-sha256"}
)

# Query parameters that select an S3 operation (a "subresource") ...
_SELECTORS = frozenset(
    {
        "acl", "attributes", "delete", "encryption", "lifecycle", "list-type", "location",
        "ownershipControls", "policy", "publicAccessBlock", "tagging", "uploadId", "uploads",
        "versioning", "versions",
    }
)  # fmt: skip
# ... and those that only shape one, and change no authorisation (versionId does: see below).
_MODIFIERS = frozenset(
    {
        "continuation-token", "delimiter", "encoding-type", "fetch-owner", "key-marker",
        "marker", "max-keys", "max-parts", "max-uploads", "part-number-marker", "partNumber",
        "prefix", "start-after", "upload-id-marker", "version-id-marker", "versionId", "x-id",
        "response-cache-control", "response-content-disposition", "response-content-encoding",
        "response-content-language", "response-content-type", "response-expires",
        "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
        "X-Amz-Security-Token", "X-Amz-Signature", "X-Amz-SignedHeaders",
    }
)  # fmt: skip


def _operations(table: str) -> dict[tuple[str, frozenset[str]], tuple[str, str, str | None]]:
    """A whitespace table: method, selector (``-``: none), operation, s3 action, the s3 action
    instead when the request names a versionId (``-``: none)."""
    operations = {}
    for line in table.strip().splitlines():
        method, selector, operation, action, version_action = line.split()
        selectors = frozenset() if selector == "-" else frozenset({selector})
        version = None if version_action == "-" else version_action
        operations[(method, selectors)] = (operation, f"s3:{action}", version and f"s3:{version}")
    return operations


# Bucket operations (ARN arn:aws:s3:::bucket). CreateBucket and DeleteObjects have their own
# functions below; DeleteBucketTagging is authorised as s3:PutBucketTagging.
_BUCKET_OPERATIONS = _operations(
    """
    HEAD   -                 HeadBucket           ListBucket                 -
    GET    -                 ListObjects          ListBucket                 -
    GET    list-type         ListObjectsV2        ListBucket                 -
    GET    versions          ListObjectVersions   ListBucketVersions         -
    GET    uploads           ListMultipartUploads ListBucketMultipartUploads -
    GET    location          GetBucketLocation    GetBucketLocation          -
    GET    versioning        GetBucketVersioning  GetBucketVersioning        -
    PUT    versioning        PutBucketVersioning  PutBucketVersioning        -
    GET    tagging           GetBucketTagging     GetBucketTagging           -
    PUT    tagging           PutBucketTagging     PutBucketTagging           -
    DELETE tagging           DeleteBucketTagging  PutBucketTagging           -
    GET    policy            GetBucketPolicy      GetBucketPolicy            -
    PUT    policy            PutBucketPolicy      PutBucketPolicy            -
    DELETE policy            DeleteBucketPolicy   DeleteBucketPolicy         -
    GET    acl               GetBucketAcl         GetBucketAcl               -
    PUT    acl               PutBucketAcl         PutBucketAcl               -
    GET    encryption        GetBucketEncryption  GetEncryptionConfiguration -
    GET    lifecycle         GetBucketLifecycle   GetLifecycleConfiguration  -
    GET    ownershipControls GetBucketOwnership   GetBucketOwnershipControls -
    GET    publicAccessBlock GetPublicAccessBlock GetBucketPublicAccessBlock -
    PUT    -                 CreateBucket         CreateBucket               -
    DELETE -                 DeleteBucket         DeleteBucket               -
    POST   delete            DeleteObjects        DeleteObject               -
    """
)
# Object operations (ARN arn:aws:s3:::bucket/key). The writes (PutObject, CopyObject,
# CreateMultipartUpload, UploadPart, UploadPartCopy) have their own function below.
_OBJECT_OPERATIONS = _operations(
    """
    GET    -          GetObject               GetObject                GetObjectVersion
    HEAD   -          HeadObject              GetObject                GetObjectVersion
    DELETE -          DeleteObject            DeleteObject             DeleteObjectVersion
    POST   uploadId   CompleteMultipartUpload PutObject                -
    DELETE uploadId   AbortMultipartUpload    AbortMultipartUpload     -
    GET    uploadId   ListParts               ListMultipartUploadParts -
    GET    tagging    GetObjectTagging        GetObjectTagging         GetObjectVersionTagging
    PUT    tagging    PutObjectTagging        PutObjectTagging         PutObjectVersionTagging
    DELETE tagging    DeleteObjectTagging     DeleteObjectTagging      DeleteObjectVersionTagging
    GET    acl        GetObjectAcl            GetObjectAcl             GetObjectVersionAcl
    PUT    acl        PutObjectAcl            PutObjectAcl             PutObjectVersionAcl
    GET    attributes GetObjectAttributes     GetObjectAttributes      GetObjectVersionAttributes
    """
)
# Headers of an object write that become condition keys, and those that need another action.
_WRITE_HEADER_KEYS = {
    "x-amz-acl": "s3:x-amz-acl",
    "x-amz-server-side-encryption": "s3:x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id": "s3:x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-storage-class": "s3:x-amz-storage-class",
    "x-amz-grant-read": "s3:x-amz-grant-read",
    "x-amz-grant-write": "s3:x-amz-grant-write",
    "x-amz-grant-read-acp": "s3:x-amz-grant-read-acp",
    "x-amz-grant-write-acp": "s3:x-amz-grant-write-acp",
    "x-amz-grant-full-control": "s3:x-amz-grant-full-control",
    "x-amz-object-lock-mode": "s3:object-lock-mode",
    "x-amz-object-lock-retain-until-date": "s3:object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold": "s3:object-lock-legal-hold",
}
_WRITE_HEADER_ACTIONS = {
    "x-amz-acl": "s3:PutObjectAcl",
    "x-amz-grant-read": "s3:PutObjectAcl",
    "x-amz-grant-write": "s3:PutObjectAcl",
    "x-amz-grant-read-acp": "s3:PutObjectAcl",
    "x-amz-grant-write-acp": "s3:PutObjectAcl",
    "x-amz-grant-full-control": "s3:PutObjectAcl",
    "x-amz-tagging": "s3:PutObjectTagging",
    "x-amz-object-lock-mode": "s3:PutObjectRetention",
    "x-amz-object-lock-retain-until-date": "s3:PutObjectRetention",
    "x-amz-object-lock-legal-hold": "s3:PutObjectLegalHold",
}
_AWS_VIRTUAL_HOST = re.compile(r"^(?P<bucket>.+)\.s3(?:[.-][a-z0-9-]+)*\.amazonaws\.com$")


@dataclass(frozen=True)
class _Request:
    """A recorded request, parsed once: who sent it, to which bucket and key, with what."""

    record: RecordedRequest
    principal: str
    common: dict[str, ContextValue]
    bucket: str | None
    key: str | None
    params: dict[str, str]
    partition: str

    @property
    def summary(self) -> str:
        query = f"?{self.record.query}" if self.record.query else ""
        status = f" -> {self.record.status}" if self.record.status is not None else ""
        return f"{self.record.method} {self.record.path}{query}{status}"

    def header(self, name: str) -> str | None:
        return self.record.headers.get(name.lower())

    def arn(self, bucket: str, key: str | None = None) -> str:
        suffix = "" if key is None else f"/{key}"
        return f"arn:{self.partition}:s3:::{bucket}{suffix}"


def _signature(record: RecordedRequest, params: Mapping[str, str]) -> tuple[str, str, str]:
    """(access key id, s3:authType, s3:signatureversion) of a signed request: SigV4 in the
    Authorization header or in a presigned URL's query, or SigV2."""
    authorization = record.headers.get("authorization", "")
    if match := re.match(r"AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/", authorization):
        return match.group(1), "REST-HEADER", "AWS4-HMAC-SHA256"
    if match := re.match(r"AWS\s+([^:\s]+):", authorization):
        return match.group(1), "REST-HEADER", "AWS"
    if "X-Amz-Credential" in params:
        return params["X-Amz-Credential"].split("/", 1)[0], "REST-QUERY-STRING", "AWS4-HMAC-SHA256"
    if "AWSAccessKeyId" in params:
        return params["AWSAccessKeyId"], "REST-QUERY-STRING", "AWS"
    raise UnmappedRequestError(f"unsigned request: {record.method} {record.path}")


def _bucket_and_key(
    record: RecordedRequest, endpoint_host: str | None
) -> tuple[str | None, str | None]:
    """Bucket and key from virtual-host style (``bucket.<endpoint>``) or path style."""
    host = record.headers.get("host", "").rsplit(":", 1)[0].lower()
    if any(kind in host for kind in ("s3-accesspoint", "s3-object-lambda", "s3express")):
        raise UnmappedRequestError(f"access points and directory buckets are not mapped: {host}")
    bucket: str | None = None
    if endpoint_host and host.endswith(f".{endpoint_host.lower()}"):
        bucket = host[: -len(endpoint_host) - 1]
    elif match := _AWS_VIRTUAL_HOST.match(host):
        bucket = match.group("bucket")
    path = record.path.lstrip("/")
    if bucket is None:
        first, _, rest = path.partition("/")
        bucket, path = (unquote(first) or None), rest
    key = unquote(path) if path else None
    return bucket, key


def _parse(
    record: RecordedRequest, endpoint_host: str | None, secure: bool, partition: str
) -> _Request:
    params = dict(parse_qsl(record.query, keep_blank_values=True))
    principal, auth_type, signature_version = _signature(record, params)
    if "AWSAccessKeyId" in params:
        params = {
            k: v for k, v in params.items() if k not in ("AWSAccessKeyId", "Signature", "Expires")
        }
    common: dict[str, ContextValue] = {
        "aws:SecureTransport": "true" if secure else "false",
        "s3:authType": auth_type,
        "s3:signatureversion": signature_version,
    }
    if sha := record.headers.get("x-amz-content-sha256"):
        common["s3:x-amz-content-sha256"] = sha
    bucket, key = _bucket_and_key(record, endpoint_host)
    return _Request(record, principal, common, bucket, key, params, partition)


def _selectors(request: _Request) -> frozenset[str]:
    unknown = set(request.params) - _SELECTORS - _MODIFIERS
    if unknown:
        raise UnmappedRequestError(f"unknown query parameters {sorted(unknown)}: {request.summary}")
    return frozenset(request.params) & _SELECTORS


def _list_keys(request: _Request) -> dict[str, ContextValue]:
    """s3:prefix / s3:delimiter / s3:max-keys, each only when the request has the parameter (an
    empty ``prefix=`` is the key with an empty value)."""
    return {
        f"s3:{name}": request.params[name]
        for name in ("prefix", "delimiter", "max-keys")
        if name in request.params
    }


def _write_keys(request: _Request) -> tuple[dict[str, ContextValue], list[str]]:
    """An object write's condition keys from its headers, and the further actions they need
    (an ACL needs s3:PutObjectAcl, tags s3:PutObjectTagging, Object Lock its own)."""
    keys: dict[str, ContextValue] = {}
    actions: list[str] = []
    for header, key in _WRITE_HEADER_KEYS.items():
        if (value := request.header(header)) is not None:
            keys[key] = value
    if (tagging := request.header("x-amz-tagging")) is not None:
        tags = dict(parse_qsl(tagging, keep_blank_values=True))
        keys["s3:RequestObjectTagKeys"] = sorted(tags)
        keys.update({f"s3:RequestObjectTag/{k}": v for k, v in tags.items()})
    for header, action in _WRITE_HEADER_ACTIONS.items():
        if request.header(header) is not None and action not in actions:
            actions.append(action)
    return keys, actions


def _copy_source(request: _Request) -> tuple[str, str, str | None]:
    """(bucket, key, versionId) of ``x-amz-copy-source`` (``/bucket/key?versionId=v``)."""
    source = request.header("x-amz-copy-source") or ""
    path, _, query = source.lstrip("/").partition("?")
    bucket, _, key = unquote(path).partition("/")
    if not bucket or not key:
        raise UnmappedRequestError(f"bad x-amz-copy-source {source!r}: {request.summary}")
    version = dict(parse_qsl(query)).get("versionId")
    return bucket, key, version


@dataclass(frozen=True)
class _Check:
    """An authorisation before the request's principal and common keys are added."""

    operation: str
    action: str
    resource: str
    context: dict[str, ContextValue] = field(default_factory=dict)


def _delete_objects(request: _Request, bucket: str) -> list[_Check]:
    """DeleteObjects: s3:DeleteObject (or s3:DeleteObjectVersion) for each key of the body."""
    if request.record.body is None:
        raise UnmappedRequestError(f"DeleteObjects without its recorded body: {request.summary}")
    root = ET.fromstring(request.record.body)  # noqa: S314  (a body our own client sent)
    checks = []
    for item in root.iter():
        if not item.tag.endswith("Object"):
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in item}
        version = fields.get("VersionId")
        action = "s3:DeleteObjectVersion" if version else "s3:DeleteObject"
        context: dict[str, ContextValue] = {"s3:versionid": version} if version else {}
        checks.append(_Check("DeleteObjects", action, request.arn(bucket, fields["Key"]), context))
    if not checks:
        raise UnmappedRequestError(f"DeleteObjects with no key in its body: {request.summary}")
    return checks


def _create_bucket(request: _Request, bucket: str) -> list[_Check]:
    """CreateBucket: s3:CreateBucket with s3:LocationConstraint from the body, and the
    actions its ACL / Object Ownership / Object Lock headers need."""
    context: dict[str, ContextValue] = {}
    body = request.record.body
    if body is None and request.header("content-length") not in (None, "0"):
        raise UnmappedRequestError(f"CreateBucket without its recorded body: {request.summary}")
    if body:
        for item in ET.fromstring(body).iter():  # noqa: S314  (a body our own client sent)
            if item.tag.endswith("LocationConstraint") and item.text:
                context["s3:LocationConstraint"] = item.text
    for header in ("x-amz-acl", "x-amz-object-ownership"):
        if (value := request.header(header)) is not None:
            context[f"s3:{header}"] = value
    checks = [_Check("CreateBucket", "s3:CreateBucket", request.arn(bucket), context)]
    extra = []
    if request.header("x-amz-acl") or any(
        h.startswith("x-amz-grant-") for h in request.record.headers
    ):
        extra.append("s3:PutBucketAcl")
    if request.header("x-amz-object-ownership"):
        extra.append("s3:PutBucketOwnershipControls")
    if (request.header("x-amz-bucket-object-lock-enabled") or "").lower() == "true":
        extra += ["s3:PutBucketObjectLockConfiguration", "s3:PutBucketVersioning"]
    checks += [_Check("CreateBucket", action, request.arn(bucket)) for action in extra]
    return checks


def _bucket_checks(request: _Request, bucket: str) -> list[_Check]:
    selectors = _selectors(request)
    entry = _BUCKET_OPERATIONS.get((request.record.method, selectors))
    if entry is None:
        raise UnmappedRequestError(f"no mapping for bucket request {request.summary}")
    operation, action, _ = entry
    if operation == "DeleteObjects":
        return _delete_objects(request, bucket)
    if operation == "CreateBucket":
        return _create_bucket(request, bucket)
    if operation == "ListObjectsV2" and request.params["list-type"] != "2":
        raise UnmappedRequestError(f"unknown list-type: {request.summary}")
    listing = operation in ("ListObjects", "ListObjectsV2", "ListObjectVersions")
    context = _list_keys(request) if listing else {}
    return [_Check(operation, action, request.arn(bucket), context)]


def _object_write(request: _Request, operation: str, bucket: str, key: str) -> list[_Check]:
    """PutObject, CreateMultipartUpload, UploadPart, CopyObject, UploadPartCopy: s3:PutObject
    on the key (plus what its headers need) and, for a copy, s3:GetObject on the source."""
    copying = request.header("x-amz-copy-source") is not None
    keys, actions = _write_keys(request) if operation != "UploadPart" else ({}, [])
    if copying:
        operation = {"PutObject": "CopyObject", "UploadPart": "UploadPartCopy"}[operation]
        source_bucket, source_key, source_version = _copy_source(request)
        keys["s3:x-amz-copy-source"] = f"{source_bucket}/{source_key}"
        if (directive := request.header("x-amz-metadata-directive")) is not None:
            keys["s3:x-amz-metadata-directive"] = directive
    checks = [_Check(operation, "s3:PutObject", request.arn(bucket, key), keys)]
    checks += [_Check(operation, action, request.arn(bucket, key)) for action in actions]
    if copying:
        read = "s3:GetObjectVersion" if source_version else "s3:GetObject"
        source_context: dict[str, ContextValue] = (
            {"s3:versionid": source_version} if source_version else {}
        )
        checks.append(
            _Check(operation, read, request.arn(source_bucket, source_key), source_context)
        )
    return checks


def _object_checks(request: _Request, bucket: str, key: str) -> list[_Check]:
    selectors = _selectors(request)
    method = request.record.method
    if (method, selectors) == ("PUT", frozenset()):
        return _object_write(request, "PutObject", bucket, key)
    if (method, selectors) == ("POST", frozenset({"uploads"})):
        return _object_write(request, "CreateMultipartUpload", bucket, key)
    if (method, selectors) == ("PUT", frozenset({"uploadId"})) and "partNumber" in request.params:
        return _object_write(request, "UploadPart", bucket, key)
    entry = _OBJECT_OPERATIONS.get((method, selectors))
    if entry is None:
        raise UnmappedRequestError(f"no mapping for object request {request.summary}")
    operation, action, version_action = entry
    version = request.params.get("versionId")
    context: dict[str, ContextValue] = {}
    if version is not None:
        if version_action is None:
            raise UnmappedRequestError(f"versionId on {operation}: {request.summary}")
        action, context = version_action, {"s3:versionid": version}
    checks = [_Check(operation, action, request.arn(bucket, key), context)]
    if operation in ("GetObject", "HeadObject") and request.record.status == 404:
        # A missing key answers 404 only with s3:ListBucket on the bucket, else 403 (AWS's
        # GetObject / HeadObject permissions); the request has no list parameters.
        checks.append(_Check(f"{operation} (missing key)", "s3:ListBucket", request.arn(bucket)))
    return checks


def _kms_checks(checks: list[_Check], key_arn: str, bucket_arns: set[str]) -> list[_Check]:
    """The KMS calls S3 makes for the principal on an SSE-KMS bucket with an S3 Bucket Key:
    kms:GenerateDataKey to write, kms:Decrypt to read (a copy's source, a multipart
    completion), with kms:ViaService and the bucket ARN as encryption context."""
    region = key_arn.split(":")[3]
    writes = {"PutObject", "CreateMultipartUpload", "UploadPart", "CopyObject", "UploadPartCopy"}
    reads = {"GetObject", "CopyObject", "UploadPartCopy"}
    kms = []
    for check in checks:
        bucket_arn = check.resource.split("/", 1)[0]
        if bucket_arn not in bucket_arns:
            continue
        if check.action == "s3:PutObject" and check.operation in writes:
            action = "kms:GenerateDataKey"
        elif check.operation in reads and check.action in ("s3:GetObject", "s3:GetObjectVersion"):
            action = "kms:Decrypt"
        elif check.operation == "CompleteMultipartUpload":
            action = "kms:Decrypt"  # S3 reads the encrypted parts to complete the upload
        else:
            continue
        context: dict[str, ContextValue] = {
            "kms:ViaService": f"s3.{region}.amazonaws.com",
            "kms:EncryptionContext:aws:s3:arn": bucket_arn,
        }
        kms.append(_Check(check.operation, action, key_arn, context))
    return kms


def s3_requests_to_authorizations(
    requests: Iterable[RecordedRequest],
    endpoint_host: str | None = None,
    secure_transport: bool = True,
    partition: str = "aws",
    kms_key_arn: str | None = None,
    kms_buckets: Iterable[str] = (),
) -> list[Authorization]:
    """Every IAM check AWS makes for the recorded requests, in request order.

    ``endpoint_host``: the endpoint's host name, to recognise virtual-host style requests
    (``bucket.<endpoint_host>``); path style is assumed otherwise. ``secure_transport``: the
    value of aws:SecureTransport (True: the pods reach S3 over HTTPS, whatever the recording
    used). ``kms_key_arn`` with ``kms_buckets``: add the KMS checks of object reads and writes
    in those SSE-KMS buckets. Raises UnmappedRequestError on any request it cannot map.
    """
    authorizations: list[Authorization] = []
    for record in requests:
        request = _parse(record, endpoint_host, secure_transport, partition)
        if request.bucket is None:
            if (record.method, _selectors(request)) != ("GET", frozenset()):
                raise UnmappedRequestError(f"no mapping for service request {request.summary}")
            checks = [_Check("ListBuckets", "s3:ListAllMyBuckets", "*")]
        elif request.key is None:
            checks = _bucket_checks(request, request.bucket)
        else:
            checks = _object_checks(request, request.bucket, request.key)
        if kms_key_arn is not None:
            bucket_arns = {request.arn(bucket) for bucket in kms_buckets}
            checks += _kms_checks(checks, kms_key_arn, bucket_arns)
        authorizations += [
            Authorization(
                principal=request.principal,
                action=check.action,
                resource=check.resource,
                context={**request.common, **check.context},
                request_summary=request.summary,
                operation=check.operation,
            )
            for check in checks
        ]
    return authorizations


def is_s3(record: RecordedRequest) -> bool:
    """S3's REST API, as opposed to the JSON APIs (X-Amz-Target) that share a moto endpoint."""
    return "x-amz-target" not in record.headers


def json_api_authorizations(requests: Iterable[RecordedRequest]) -> list[Authorization]:
    """The IAM checks of AWS JSON API calls (``X-Amz-Target: secretsmanager.GetSecretValue``):
    the action is the target; the resource, the SecretId of its body. Other services raise."""
    authorizations = []
    for record in requests:
        service, _, operation = record.headers["x-amz-target"].partition(".")
        if service != "secretsmanager" or record.body is None:
            raise UnmappedRequestError(f"no mapping for {service}.{operation}")
        principal = _signature(record, {})[0]
        secret = json.loads(record.body)["SecretId"]
        authorizations.append(
            Authorization(
                principal=principal,
                action=f"secretsmanager:{operation}",
                resource=secret,
                context={"aws:SecureTransport": "true"},
                request_summary=f"{record.method} {service}.{operation} {secret}",
                operation=operation,
            )
        )
    return authorizations


def decisions(
    authorizations: Iterable[Authorization], policies: Mapping[str, Mapping[str, Any]]
) -> list[tuple[Authorization, Decision]]:
    """Each authorisation with the decision of its principal's policy (``policies`` by access
    key id); a principal without a policy raises KeyError rather than passing unchecked."""
    return [
        (auth, evaluate(policies[auth.principal], auth.action, auth.resource, auth.context))
        for auth in authorizations
    ]
