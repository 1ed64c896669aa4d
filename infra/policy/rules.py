"""Policy rules for taskq's SAM template.

Each rule takes the parsed template (a dict, intrinsic functions as {"Ref": ...} / {"Fn::If": ...})
and returns a list of violations (strings). The rules say what a production deployment of taskq
needs; test_rules.py proves each one against the real template and against a broken copy.

Parsing uses cfn-lint's decoder (already a test tool), so short-form tags (!Ref, !If, !Sub) read
the same way CloudFormation reads them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

Template = dict[str, Any]
Rule = Callable[[Template], list[str]]

RULES: dict[str, Rule] = {}


def rule(fn: Rule) -> Rule:
    RULES[fn.__name__] = fn
    return fn


def load(path: Path = TEMPLATE) -> Template:
    return cfn_yaml.load(str(path))


def plain(value: Any) -> Any:
    """cfn-lint's nodes carry line numbers; turn them into plain dicts/lists/strs."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


# ------------------------------------------------------------------ helpers


def resources(t: Template, kind: str) -> dict[str, dict]:
    return {k: v for k, v in t["Resources"].items() if v.get("Type") == kind}


def props(res: dict) -> dict:
    return res.get("Properties", {}) or {}


def functions(t: Template) -> dict[str, dict]:
    return resources(t, "AWS::Serverless::Function")


def global_fn(t: Template) -> dict:
    return t.get("Globals", {}).get("Function", {})


def effective(t: Template, fn: dict, key: str) -> Any:
    """A function property, falling back to Globals (SAM's merge, for scalar/list keys)."""
    return props(fn).get(key, global_fn(t).get(key))


def refs(value: Any) -> set[str]:
    """Every logical id or parameter a value refers to (Ref, GetAtt, ${X} in Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref" and isinstance(v, str):
                found.add(v)
            elif k == "Fn::GetAtt":
                target = v[0] if isinstance(v, list) else str(v).split(".")[0]
                found.add(str(target))
            elif k == "Fn::Sub":
                text = v[0] if isinstance(v, list) else v
                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", str(text)))
                if isinstance(v, list):
                    found.update(refs(v[1:]))
            else:
                found.update(refs(v))
    elif isinstance(value, list):
        for v in value:
            found.update(refs(v))
    return found


def param_default(t: Template, value: Any) -> Any:
    """The default of a parameter a value refers to, or the value itself."""
    if isinstance(value, dict) and "Ref" in value:
        p = t.get("Parameters", {}).get(value["Ref"])
        return None if p is None else p.get("Default")
    return value


def sub_text(value: Any) -> str:
    """The text of a string or a !Sub string."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        v = value["Fn::Sub"]
        return str(v[0] if isinstance(v, list) else v)
    return str(value)


def is_param_ref(t: Template, value: Any) -> bool:
    return isinstance(value, dict) and value.get("Ref") in t.get("Parameters", {})


def source_queues(t: Template) -> dict[str, dict]:
    return {k: v for k, v in resources(t, "AWS::SQS::Queue").items() if "RedrivePolicy" in props(v)}


def dead_letter_queues(t: Template) -> dict[str, dict]:
    targets = set()
    for q in source_queues(t).values():
        targets |= refs(props(q)["RedrivePolicy"].get("deadLetterTargetArn"))
    return {k: v for k, v in resources(t, "AWS::SQS::Queue").items() if k in targets}


def largest_max_attempts() -> int:
    """The code's limit on a task's max_attempts (functions/core/src/limits.rs)."""
    src = (ROOT / "functions/core/src/limits.rs").read_text()
    m = re.search(r"pub const MAX_ATTEMPTS: u32 = (\d+);", src)
    if not m:
        raise AssertionError("MAX_ATTEMPTS not found in functions/core/src/limits.rs")
    return int(m.group(1))


def statements(fn: dict) -> list[dict]:
    """Inline IAM statements of a function, with Fn::If branches flattened."""
    out: list[dict] = []

    def add(stmt: Any) -> None:
        if isinstance(stmt, dict) and "Fn::If" in stmt:
            for branch in stmt["Fn::If"][1:]:
                add(branch)
        elif isinstance(stmt, dict) and "Effect" in stmt:
            out.append(stmt)

    for policy in props(fn).get("Policies", []) or []:
        if isinstance(policy, dict):
            for stmt in policy.get("Statement", []) or []:
                add(stmt)
    return out


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def alarms(t: Template) -> dict[str, dict]:
    return resources(t, "AWS::CloudWatch::Alarm")


def alarm_on(t: Template, metric: str, target: str, dim: str) -> bool:
    for a in alarms(t).values():
        p = props(a)
        if p.get("MetricName") != metric:
            continue
        for d in p.get("Dimensions", []):
            if d.get("Name") == dim and target in refs(d.get("Value")):
                return True
    return False


# ------------------------------------------------------------------ rules: functions


@rule
def functions_arm64_al2023_cargolambda(t: Template) -> list[str]:
    """Every function: arm64, provided.al2023, built by cargo-lambda, X-Ray, JSON logs, retained logs."""
    out = []
    groups = resources(t, "AWS::Logs::LogGroup")
    g_logging = global_fn(t).get("LoggingConfig", {})
    for name, fn in functions(t).items():
        if effective(t, fn, "Architectures") != ["arm64"]:
            out.append(f"{name}: Architectures must be [arm64]")
        if effective(t, fn, "Runtime") != "provided.al2023":
            out.append(f"{name}: Runtime must be provided.al2023")
        if fn.get("Metadata", {}).get("BuildMethod") != "rust-cargolambda":
            out.append(f"{name}: Metadata.BuildMethod must be rust-cargolambda")
        if effective(t, fn, "Tracing") != "Active":
            out.append(f"{name}: Tracing must be Active (X-Ray)")
        logging = {**g_logging, **props(fn).get("LoggingConfig", {})}
        if logging.get("LogFormat") != "JSON":
            out.append(f"{name}: LoggingConfig.LogFormat must be JSON")
        group = refs(logging.get("LogGroup"))
        if not group or not all(g in groups and "RetentionInDays" in props(groups[g]) for g in group):
            out.append(f"{name}: LoggingConfig.LogGroup must be a log group of the stack with RetentionInDays")
    return out


@rule
def api_alias_provisioned_concurrency_autoscaling(t: Template) -> list[str]:
    """The API runs on an alias whose provisioned concurrency is driven by target tracking."""
    out = []
    api = functions(t).get("ApiFunction")
    if api is None:
        return ["ApiFunction is missing"]
    alias = props(api).get("AutoPublishAlias")
    if not alias:
        return ["ApiFunction: AutoPublishAlias must be set (routes and provisioned concurrency use the alias)"]
    if "ProvisionedConcurrencyConfig" not in props(api):
        out.append("ApiFunction: ProvisionedConcurrencyConfig must be set (from a parameter)")
    targets = {
        k: v
        for k, v in resources(t, "AWS::ApplicationAutoScaling::ScalableTarget").items()
        if props(v).get("ScalableDimension") == "lambda:function:ProvisionedConcurrency"
        and "ApiFunction" in refs(props(v).get("ResourceId"))
        and f":{alias}" in str(props(v).get("ResourceId"))
    }
    if not targets:
        out.append("no ScalableTarget for the API alias' provisioned concurrency")
    for k, v in targets.items():
        if not (is_param_ref(t, props(v).get("MinCapacity")) and is_param_ref(t, props(v).get("MaxCapacity"))):
            out.append(f"{k}: MinCapacity and MaxCapacity must come from parameters")
    policies = [
        p
        for p in resources(t, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
        if refs(props(p).get("ScalingTargetId")) & set(targets)
        and props(p).get("PolicyType") == "TargetTrackingScaling"
        and props(p).get("TargetTrackingScalingPolicyConfiguration", {})
        .get("PredefinedMetricSpecification", {})
        .get("PredefinedMetricType")
        == "LambdaProvisionedConcurrencyUtilization"
    ]
    if targets and not policies:
        out.append("no target-tracking policy on LambdaProvisionedConcurrencyUtilization for the API alias")
    return out


@rule
def worker_sqs_events(t: Template) -> list[str]:
    """One SQS event per priority queue: partial batch failures, concurrency cap, batch settings from parameters."""
    out = []
    sqs_events = []
    for name, fn in functions(t).items():
        for ev_name, ev in (props(fn).get("Events") or {}).items():
            if ev.get("Type") == "SQS":
                sqs_events.append((f"{name}.{ev_name}", props(ev)))
    covered = set()
    for where, p in sqs_events:
        covered |= refs(p.get("Queue"))
        if "ReportBatchItemFailures" not in (p.get("FunctionResponseTypes") or []):
            out.append(f"{where}: FunctionResponseTypes must include ReportBatchItemFailures")
        if not is_param_ref(t, p.get("ScalingConfig", {}).get("MaximumConcurrency")):
            out.append(f"{where}: ScalingConfig.MaximumConcurrency must come from a parameter")
        for key in ("BatchSize", "MaximumBatchingWindowInSeconds"):
            if not is_param_ref(t, p.get(key)):
                out.append(f"{where}: {key} must come from a parameter")
    missing = set(source_queues(t)) - covered
    if missing:
        out.append(f"source queues without a worker event: {sorted(missing)}")
    # Weighted by priority: the defaults never give a lower priority more workers.
    caps = {}
    for where, p in sqs_events:
        for q in refs(p.get("Queue")):
            caps[q] = param_default(t, p.get("ScalingConfig", {}).get("MaximumConcurrency"))
    order = [q for q in ("HighQueue", "NormalQueue", "LowQueue") if q in caps]
    for hi, lo in zip(order, order[1:]):
        if caps[hi] is not None and caps[lo] is not None and int(caps[hi]) < int(caps[lo]):
            out.append(f"MaximumConcurrency default of {hi} ({caps[hi]}) is below {lo}'s ({caps[lo]})")
    return out


# ------------------------------------------------------------------ rules: queues


@rule
def queues_encrypted_and_sized(t: Template) -> list[str]:
    """Every queue: SSE on, MaximumMessageSize set explicitly to 1 MiB."""
    out = []
    for name, q in resources(t, "AWS::SQS::Queue").items():
        p = props(q)
        if p.get("SqsManagedSseEnabled") is not True and "KmsMasterKeyId" not in p:
            out.append(f"{name}: server-side encryption must be on")
        if p.get("MaximumMessageSize") != 1048576:
            out.append(f"{name}: MaximumMessageSize must be 1048576 (1 MiB)")
    return out


@rule
def queues_visibility_and_redrive(t: Template) -> list[str]:
    """Visibility >= 6x the worker timeout; maxReceiveCount above the largest max_attempts; DLQs allow only their sources."""
    out = []
    worker = functions(t).get("WorkerFunction", {})
    timeout = props(worker).get("Timeout")
    if is_param_ref(t, timeout):
        param = t["Parameters"][timeout["Ref"]]
        timeouts = [int(v) for v in param.get("AllowedValues", [param.get("Default")])]
    else:
        timeouts = [int(timeout or 3)]
    mappings = t.get("Mappings", {})
    for name, q in source_queues(t).items():
        vis = props(q).get("VisibilityTimeout")
        for wt in timeouts:
            if isinstance(vis, dict) and "Fn::FindInMap" in vis:
                m, _key, attr = vis["Fn::FindInMap"]
                value = mappings.get(m, {}).get(str(wt), {}).get(attr)
            else:
                value = vis
            if value is None or int(value) < 6 * wt:
                out.append(f"{name}: VisibilityTimeout {value} is below 6x a worker timeout of {wt} s")
        mrc = props(q)["RedrivePolicy"].get("maxReceiveCount")
        limit = largest_max_attempts()
        if is_param_ref(t, mrc):
            p = t["Parameters"][mrc["Ref"]]
            low = p.get("MinValue", p.get("Default"))
        else:
            low = mrc
        if low is None or int(low) <= limit:
            out.append(f"{name}: maxReceiveCount may be {low}, not above the largest max_attempts ({limit})")
    for name, dlq in dead_letter_queues(t).items():
        allow = props(dlq).get("RedriveAllowPolicy")
        if not allow or allow.get("redrivePermission") != "byQueue" or not allow.get("sourceQueueArns"):
            out.append(f"{name}: RedriveAllowPolicy must allow only its source queues (byQueue)")
        if int(props(dlq).get("MessageRetentionPeriod", 0)) < 1209600:
            out.append(f"{name}: dead letters must be kept 14 days (MessageRetentionPeriod 1209600)")
    return out


# ------------------------------------------------------------------ rules: table


@rule
def table_durable_and_scalable(t: Template) -> list[str]:
    """On-demand by default, PITR, SSE, TTL, a stream; provisioned mode autoscales the table and every index."""
    out = []
    tables = resources(t, "AWS::DynamoDB::Table")
    if not tables:
        return ["no DynamoDB table"]
    targets = resources(t, "AWS::ApplicationAutoScaling::ScalableTarget")
    policies = resources(t, "AWS::ApplicationAutoScaling::ScalingPolicy")
    for name, table in tables.items():
        p = props(table)
        if param_default(t, p.get("BillingMode")) != "PAY_PER_REQUEST":
            out.append(f"{name}: BillingMode must default to PAY_PER_REQUEST")
        if not p.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled"):
            out.append(f"{name}: point-in-time recovery must be on")
        if not p.get("SSESpecification", {}).get("SSEEnabled"):
            out.append(f"{name}: SSE must be on")
        if not p.get("TimeToLiveSpecification", {}).get("Enabled"):
            out.append(f"{name}: TTL must be on")
        if not p.get("StreamSpecification", {}).get("StreamViewType"):
            out.append(f"{name}: a stream must be on (the stream consumer reads it)")
        if table.get("DeletionPolicy") != "Retain":
            out.append(f"{name}: DeletionPolicy must be Retain (tasks outlive a stack)")
        if is_param_ref(t, p.get("BillingMode")):
            scaled = set()
            for k, v in targets.items():
                tp = props(v)
                if tp.get("ServiceNamespace") == "dynamodb" and name in refs(tp.get("ResourceId")):
                    has_policy = any(
                        k in refs(props(pol).get("ScalingTargetId"))
                        and props(pol).get("PolicyType") == "TargetTrackingScaling"
                        for pol in policies.values()
                    )
                    if has_policy:
                        rid = str(plain(tp.get("ResourceId")))
                        index = re.search(r"/index/([A-Za-z0-9_.-]+)", rid)
                        scaled.add((index.group(1) if index else "", tp.get("ScalableDimension", "").split(":")[-1]))
            wanted = [""] + [g["IndexName"] for g in p.get("GlobalSecondaryIndexes", [])]
            for index in wanted:
                for dim in ("ReadCapacityUnits", "WriteCapacityUnits"):
                    if (index, dim) not in scaled:
                        what = f"index {index}" if index else "the table"
                        out.append(f"{name}: provisioned mode must autoscale {dim} of {what} (target tracking)")
    return out


# ------------------------------------------------------------------ rules: cache and network


@rule
def cache_private_and_optional(t: Template) -> list[str]:
    """The cache: serverless, 2 AZs, usage limits, reachable only from the functions' security group, behind a switch."""
    out = []
    caches = resources(t, "AWS::ElastiCache::ServerlessCache")
    if not caches:
        return ["no ElastiCache Serverless cache"]
    for name, c in caches.items():
        p = props(c)
        if "Condition" not in c:
            out.append(f"{name}: must have a Condition (a parameter turns the cache off)")
        if p.get("Engine") not in ("valkey", "redis"):
            out.append(f"{name}: Engine must be valkey or redis")
        subnets = p.get("SubnetIds", [])
        if len(subnets) < 2:
            out.append(f"{name}: needs subnets in two AZs")
        azs = []
        for s in subnets:
            for sid in refs(s):
                sub = t["Resources"].get(sid, {})
                azs.append(str(plain(props(sub).get("AvailabilityZone"))))
        if len(set(azs)) < 2:
            out.append(f"{name}: its subnets must be in different AZs")
        limits = p.get("CacheUsageLimits", {})
        if "ECPUPerSecond" not in limits or "DataStorage" not in limits:
            out.append(f"{name}: CacheUsageLimits must cap ECPUPerSecond and DataStorage")
        for sg in refs(p.get("SecurityGroupIds")):
            for rule_ in props(t["Resources"].get(sg, {})).get("SecurityGroupIngress", []):
                if "SourceSecurityGroupId" not in rule_:
                    out.append(f"{sg}: cache ingress must come from a security group, not {plain(rule_)}")
    endpoints = {
        (sub_text(props(e).get("ServiceName")).rsplit(".", 1)[-1], props(e).get("VpcEndpointType"))
        for e in resources(t, "AWS::EC2::VPCEndpoint").values()
    }
    if ("dynamodb", "Gateway") not in endpoints:
        out.append("a DynamoDB gateway endpoint is needed (no NAT)")
    if ("sqs", "Interface") not in endpoints:
        out.append("an SQS interface endpoint is needed (no NAT)")
    if resources(t, "AWS::EC2::NatGateway") or resources(t, "AWS::EC2::InternetGateway"):
        out.append("the VPC must have no NAT or internet gateway")
    return out


@rule
def only_cache_users_in_vpc(t: Template) -> list[str]:
    """A function joins the VPC if and only if it talks to Redis; the rest stay outside (internet reach, no ENIs)."""
    out = []
    for name, fn in functions(t).items():
        env = props(fn).get("Environment", {}).get("Variables", {})
        uses_cache = "TASKQ_REDIS_URL" in env
        in_vpc = "VpcConfig" in props(fn)
        if uses_cache and not in_vpc:
            out.append(f"{name}: uses the cache but is not in the VPC")
        if in_vpc and not uses_cache:
            out.append(f"{name}: is in the VPC but does not use the cache (keep it out)")
    return out


# ------------------------------------------------------------------ rules: edge


@rule
def cloudfront_https_and_origins(t: Template) -> list[str]:
    """HTTPS only; /v1/* uncached with Host not forwarded; S3 through OAC; security headers; optional rate-based WAF."""
    out = []
    dists = resources(t, "AWS::CloudFront::Distribution")
    if not dists:
        return ["no CloudFront distribution"]
    managed = t.get("Mappings", {}).get("CloudFrontPolicies", {}).get("Managed", {})

    def resolve(v: Any) -> Any:
        if isinstance(v, dict) and "Fn::FindInMap" in v:
            m, k, a = v["Fn::FindInMap"]
            return t.get("Mappings", {}).get(m, {}).get(k, {}).get(a)
        return v

    for name, d in dists.items():
        cfg = props(d).get("DistributionConfig", {})
        behaviours = [cfg.get("DefaultCacheBehavior", {})] + list(cfg.get("CacheBehaviors", []))
        for b in behaviours:
            where = b.get("PathPattern", "default")
            if b.get("ViewerProtocolPolicy") not in ("https-only", "redirect-to-https"):
                out.append(f"{name} {where}: ViewerProtocolPolicy must be https-only or redirect-to-https")
            if "ResponseHeadersPolicyId" not in b:
                out.append(f"{name} {where}: needs a response headers policy")
        api = [b for b in behaviours if b.get("PathPattern") == "/v1/*"]
        if not api:
            out.append(f"{name}: no /v1/* behaviour for the API")
        for b in api:
            if resolve(b.get("CachePolicyId")) != managed.get("CachingDisabled", "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"):
                out.append(f"{name} /v1/*: must use the managed CachingDisabled policy")
            if resolve(b.get("OriginRequestPolicyId")) != "b689b0a8-53d0-40ab-baf2-68738e2966ac":
                out.append(f"{name} /v1/*: must use AllViewerExceptHostHeader (Host not forwarded)")
        for o in cfg.get("Origins", []):
            if "S3OriginConfig" in o and "OriginAccessControlId" not in o:
                out.append(f"{name} origin {o.get('Id')}: S3 origins need origin access control")
            if "CustomOriginConfig" in o and o["CustomOriginConfig"].get("OriginProtocolPolicy") != "https-only":
                out.append(f"{name} origin {o.get('Id')}: custom origins must be reached over HTTPS only")
        waf = cfg.get("WebACLId")
        acls = [a for a in refs(waf) if a in resources(t, "AWS::WAFv2::WebACL")]
        if not acls:
            out.append(f"{name}: WebACLId must reference the stack's (optional) WAF web ACL")
        for a in acls:
            rules_ = props(t["Resources"][a]).get("Rules", [])
            if not any("RateBasedStatement" in r.get("Statement", {}) for r in rules_):
                out.append(f"{a}: needs a rate-based rule")
    for name, b in resources(t, "AWS::S3::Bucket").items():
        pab = props(b).get("PublicAccessBlockConfiguration", {})
        if not all(pab.get(k) is True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")):
            out.append(f"{name}: public access must be blocked")
    for name, hp in resources(t, "AWS::CloudFront::ResponseHeadersPolicy").items():
        sec = props(hp).get("ResponseHeadersPolicyConfig", {}).get("SecurityHeadersConfig", {})
        for h in ("StrictTransportSecurity", "ContentTypeOptions", "FrameOptions", "ContentSecurityPolicy"):
            if h not in sec:
                out.append(f"{name}: security header {h} missing")
    return out


# ------------------------------------------------------------------ rules: observability


@rule
def alarms_cover_the_failure_modes(t: Template) -> list[str]:
    """Age per queue, DLQ depth > 0, errors and throttles per function, API 5xx, DynamoDB throttles; all notify the topic."""
    out = []
    for q in source_queues(t):
        if not alarm_on(t, "ApproximateAgeOfOldestMessage", q, "QueueName"):
            out.append(f"{q}: no oldest-message-age alarm")
    for q in dead_letter_queues(t):
        ok = any(
            props(a).get("MetricName") == "ApproximateNumberOfMessagesVisible"
            and any(q in refs(d.get("Value")) for d in props(a).get("Dimensions", []))
            and props(a).get("Threshold") == 0
            and props(a).get("ComparisonOperator") == "GreaterThanThreshold"
            for a in alarms(t).values()
        )
        if not ok:
            out.append(f"{q}: no alarm on dead-letter depth > 0")
    for fn in functions(t):
        for metric in ("Errors", "Throttles"):
            if not alarm_on(t, metric, fn, "FunctionName"):
                out.append(f"{fn}: no {metric} alarm")
    for api in resources(t, "AWS::Serverless::HttpApi"):
        if not alarm_on(t, "5xx", api, "ApiId"):
            out.append(f"{api}: no 5xx alarm")
    for table in resources(t, "AWS::DynamoDB::Table"):
        for metric in ("ReadThrottleEvents", "WriteThrottleEvents"):
            if not alarm_on(t, metric, table, "TableName"):
                out.append(f"{table}: no {metric} alarm")
    for name, a in alarms(t).items():
        if "AlarmTopicArn" not in refs(props(a).get("AlarmActions")):
            out.append(f"{name}: AlarmActions must notify the AlarmTopicArn parameter's topic")
    dashboards = resources(t, "AWS::CloudWatch::Dashboard")
    if not dashboards:
        out.append("no CloudWatch dashboard")
    for name, d in dashboards.items():
        body = refs(props(d).get("DashboardBody"))
        for q in list(source_queues(t)) + list(dead_letter_queues(t)):
            if q not in body:
                out.append(f"{name}: the dashboard does not show {q}")
    return out


# ------------------------------------------------------------------ rules: IAM


# Where AWS itself requires "*" (none in our inline statements today; SAM's managed policies add
# X-Ray's PutTraceSegments and the VPC ENI actions with "*", which have no resource-level form).
WILDCARD_ALLOWED: set[tuple[str, str]] = set()


@rule
def least_privilege(t: Template) -> list[str]:
    """Inline statements only: no wildcard actions, no Resource "*" unless listed, no *FullAccess managed policies."""
    out = []
    for name, fn in functions(t).items():
        for policy in props(fn).get("Policies", []) or []:
            if isinstance(policy, str) and ("FullAccess" in policy or policy.endswith("AdministratorAccess")):
                out.append(f"{name}: managed policy {policy} grants far more than taskq uses")
            elif isinstance(policy, dict) and "Statement" not in policy:
                out.append(f"{name}: use inline statements, not SAM policy templates ({list(policy)})")
        for s in statements(fn):
            sid = s.get("Sid", "?")
            if s.get("Effect") != "Allow":
                continue
            for action in as_list(s.get("Action")):
                if not isinstance(action, str) or action == "*" or action.endswith(":*"):
                    out.append(f"{name}/{sid}: wildcard action {action!r}")
            for res in as_list(s.get("Resource")):
                if res == "*" and (name, sid) not in WILDCARD_ALLOWED:
                    out.append(f"{name}/{sid}: Resource '*'")
    return out


# ------------------------------------------------------------------ rules: API, parameters, outputs


@rule
def api_auth_throttling_logs(t: Template) -> list[str]:
    """JWT by default (Cognito or an external issuer), stage throttling, access logs; only health and the spec are public."""
    out = []
    for name, api in resources(t, "AWS::Serverless::HttpApi").items():
        p = props(api)
        auth = p.get("Auth", {})
        default = auth.get("DefaultAuthorizer")
        if not default or "JwtConfiguration" not in auth.get("Authorizers", {}).get(default, {}):
            out.append(f"{name}: the default authorizer must be a JWT authorizer")
        else:
            issuer = auth["Authorizers"][default]["JwtConfiguration"].get("issuer")
            if not (isinstance(issuer, dict) and "Fn::If" in issuer and "JwtIssuer" in refs(issuer)):
                out.append(f"{name}: the issuer must be Cognito or the JwtIssuer parameter")
        route = p.get("DefaultRouteSettings", {})
        if "ThrottlingRateLimit" not in route or "ThrottlingBurstLimit" not in route:
            out.append(f"{name}: DefaultRouteSettings must set stage throttling")
        if "DestinationArn" not in p.get("AccessLogSettings", {}):
            out.append(f"{name}: AccessLogSettings must send access logs to a log group")
    public = {"/v1/health", "/v1/openapi.json"}
    for fname, fn in functions(t).items():
        for ev_name, ev in (props(fn).get("Events") or {}).items():
            if ev.get("Type") != "HttpApi":
                continue
            ep = props(ev)
            if ep.get("Auth", {}).get("Authorizer") == "NONE" and ep.get("Path") not in public:
                out.append(f"{fname}.{ev_name}: {ep.get('Path')} must not be public")
    return out


@rule
def parameters_documented(t: Template) -> list[str]:
    """Every parameter has a description and a default (a first deploy needs no overrides)."""
    out = []
    for name, p in t.get("Parameters", {}).items():
        if not str(p.get("Description", "")).strip():
            out.append(f"parameter {name}: no Description")
        if "Default" not in p:
            out.append(f"parameter {name}: no Default")
    return out


REQUIRED_OUTPUTS = [
    "ApiUrl",
    "CloudFrontUrl",
    "HighQueueUrl",
    "NormalQueueUrl",
    "LowQueueUrl",
    "TableName",
    "UserPoolId",
    "UserPoolClientId",
]


@rule
def outputs_present(t: Template) -> list[str]:
    """The outputs a user needs after a deploy."""
    have = set(t.get("Outputs", {}))
    return [f"output {o} missing" for o in REQUIRED_OUTPUTS if o not in have]


def check(t: Template) -> dict[str, list[str]]:
    return {name: fn(t) for name, fn in RULES.items()}


if __name__ == "__main__":
    import sys

    results = check(load())
    failed = False
    for name, problems in results.items():
        print(f"{'ok  ' if not problems else 'FAIL'} {name}")
        for p in problems:
            failed = True
            print(f"     - {p}")
    sys.exit(1 if failed else 0)
