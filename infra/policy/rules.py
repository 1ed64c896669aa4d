"""Policy rules for taskq's SAM template.

Each rule takes the parsed template (a dict, intrinsic functions as {"Ref": ...} / {"Fn::If": ...})
and returns a list of violations (strings). The rules say what a production deployment of taskq
needs; test_rules.py proves each one against the real template and against a broken copy.

Parsing uses cfn-lint's decoder (already a test tool), so short-form tags (!Ref, !If, !Sub) read
the same way CloudFormation reads them.
"""

from __future__ import annotations

import json
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


def _flatten(stmts: Any) -> list[dict]:
    """IAM statements with Fn::If branches flattened (both branches: either may be deployed)."""
    out: list[dict] = []

    def add(stmt: Any) -> None:
        if isinstance(stmt, dict) and "Fn::If" in stmt:
            for branch in stmt["Fn::If"][1:]:
                add(branch)
        elif isinstance(stmt, list):
            for s in stmt:
                add(s)
        elif isinstance(stmt, dict) and "Effect" in stmt:
            out.append(stmt)

    add(stmts or [])
    return out


def function_role(t: Template, fn: dict) -> tuple[str | None, dict | None]:
    """The logical id and resource of the stack role a function runs as (its Role property)."""
    roles = resources(t, "AWS::IAM::Role")
    for name in refs(props(fn).get("Role")):
        if name in roles:
            return name, roles[name]
    return None, None


def role_statements(role: dict | None) -> list[dict]:
    """Inline statements of a role (every policy in Policies)."""
    out: list[dict] = []
    for policy in props(role or {}).get("Policies", []) or []:
        if isinstance(policy, dict):
            out += _flatten(policy.get("PolicyDocument", {}).get("Statement"))
    return out


def sam_statements(fn: dict) -> list[dict]:
    """Statements in a function's SAM Policies property (none in taskq: its roles hold them)."""
    out: list[dict] = []
    for policy in props(fn).get("Policies", []) or []:
        if isinstance(policy, dict):
            out += _flatten(policy.get("Statement"))
    return out


def statements(t: Template, fn: dict) -> list[dict]:
    """Every inline IAM statement a function's code runs with: its role's, and SAM Policies if any."""
    return role_statements(function_role(t, fn)[1]) + sam_statements(fn)


def env(t: Template, fn: dict) -> dict:
    """A function's environment variables, Globals merged in (as SAM merges them)."""
    g = global_fn(t).get("Environment", {}).get("Variables", {}) or {}
    return {**g, **(props(fn).get("Environment", {}).get("Variables", {}) or {})}


def norm(value: Any) -> Any:
    """GetAtt in one spelling ("A.B" and ["A", "B"] both become ["A", "B"])."""
    if isinstance(value, dict):
        if "Fn::GetAtt" in value and isinstance(value["Fn::GetAtt"], str):
            return {"Fn::GetAtt": value["Fn::GetAtt"].split(".", 1)}
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [norm(v) for v in value]
    return value


def allows(stmts: list[dict], action: str, resource: Any) -> bool:
    """Some Allow statement names this action (exactly) on this resource (exactly, not "*")."""
    for s in stmts:
        if s.get("Effect") != "Allow" or action not in as_list(s.get("Action")):
            continue
        if any(norm(r) == norm(resource) for r in as_list(s.get("Resource"))):
            return True
    return False


# ------------------------------------------------------------------ parameter defaults

UNKNOWN = object()  # a value known only at deploy time (pseudo parameters, Fn::Sub, GetAtt, ...)


def evaluate(t: Template, value: Any, params: dict | None = None) -> Any:
    """A value as CloudFormation resolves it when every parameter keeps its default (or takes
    `params`): Ref to a parameter, Fn::If, Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition."""
    params = params or {}

    def param(name: str) -> Any:
        if name in params:
            return params[name]
        p = t.get("Parameters", {}).get(name)
        return UNKNOWN if p is None else p.get("Default", UNKNOWN)

    def cond(name: str) -> Any:
        return ev(t.get("Conditions", {}).get(name, UNKNOWN))

    def ev(v: Any) -> Any:
        if v is UNKNOWN:
            return UNKNOWN
        if isinstance(v, dict) and len(v) == 1:
            (k, a), = v.items()
            if k == "Ref":
                return param(a) if a in t.get("Parameters", {}) or a in params else UNKNOWN
            if k == "Condition":
                return cond(a)
            if k == "Fn::If":
                c = cond(a[0])
                return UNKNOWN if c is UNKNOWN else ev(a[1] if c else a[2])
            if k == "Fn::Equals":
                x, y = ev(a[0]), ev(a[1])
                return UNKNOWN if UNKNOWN in (x, y) else text(x) == text(y)
            if k == "Fn::Not":
                x = ev(a[0])
                return UNKNOWN if x is UNKNOWN else not x
            if k in ("Fn::And", "Fn::Or"):
                xs = [ev(x) for x in a]
                if k == "Fn::And" and False in xs or k == "Fn::Or" and True in xs:
                    return k == "Fn::Or"
                return UNKNOWN if UNKNOWN in xs else k == "Fn::And"
            if k.startswith("Fn::"):
                return UNKNOWN
        return v

    def text(x: Any) -> str:
        return str(x).lower() if isinstance(x, bool) else str(x)

    return ev(value)


def condition(t: Template, name: str | None, params: dict | None = None) -> Any:
    """A condition's value with default parameters; True for no condition."""
    return True if name is None else evaluate(t, {"Condition": name}, params)


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


def mappings(t: Template) -> dict[str, dict]:
    return resources(t, "AWS::Lambda::EventSourceMapping")


def sqs_mappings(t: Template) -> dict[str, dict]:
    queues = resources(t, "AWS::SQS::Queue")
    return {k: v for k, v in mappings(t).items() if refs(props(v).get("EventSourceArn")) & set(queues)}


@rule
def worker_sqs_events(t: Template) -> list[str]:
    """One event source mapping per priority queue: partial batch failures, concurrency cap, batch settings from parameters."""
    out = []
    sqs = sqs_mappings(t)
    covered = set()
    for where, m in sqs.items():
        p = props(m)
        covered |= refs(p.get("EventSourceArn"))
        if "ReportBatchItemFailures" not in (p.get("FunctionResponseTypes") or []):
            out.append(f"{where}: FunctionResponseTypes must include ReportBatchItemFailures")
        if not is_param_ref(t, (p.get("ScalingConfig") or {}).get("MaximumConcurrency")):
            out.append(f"{where}: ScalingConfig.MaximumConcurrency must come from a parameter")
        for key in ("BatchSize", "MaximumBatchingWindowInSeconds"):
            if not is_param_ref(t, p.get(key)):
                out.append(f"{where}: {key} must come from a parameter")
        if not refs(p.get("FunctionName")) & set(functions(t)):
            out.append(f"{where}: FunctionName must name a function of the stack")
    missing = set(source_queues(t)) - covered
    if missing:
        out.append(f"source queues without a worker event source mapping: {sorted(missing)}")
    # Weighted by priority: the defaults never give a lower priority more workers.
    caps = {}
    for where, m in sqs.items():
        p = props(m)
        for q in refs(p.get("EventSourceArn")):
            caps[q] = param_default(t, (p.get("ScalingConfig") or {}).get("MaximumConcurrency"))
    order = [q for q in ("HighQueue", "NormalQueue", "LowQueue") if q in caps]
    for hi, lo in zip(order, order[1:]):
        if caps[hi] is not None and caps[lo] is not None and int(caps[hi]) < int(caps[lo]):
            out.append(f"MaximumConcurrency default of {hi} ({caps[hi]}) is below {lo}'s ({caps[lo]})")
    return out


# What an event source mapping does with the function's role, per kind of source.
POLL_ACTIONS = {
    "Arn": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
    "StreamArn": ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"],
}


@rule
def event_sources_scoped(t: Template) -> list[str]:
    """Every event source mapping's function may poll exactly that source (no "*"), under the same Condition."""
    out = []
    fns = functions(t)
    for name, m in mappings(t).items():
        p = props(m)
        fn_names = refs(p.get("FunctionName")) & set(fns)
        if not fn_names:
            out.append(f"{name}: FunctionName must name a function of the stack")
            continue
        fn_name = fn_names.pop()
        fn = fns[fn_name]
        if m.get("Condition") != fn.get("Condition"):
            out.append(f"{name}: Condition {m.get('Condition')} differs from {fn_name}'s ({fn.get('Condition')})")
        source = norm(p.get("EventSourceArn"))
        attr = source.get("Fn::GetAtt", [None, None])[1] if isinstance(source, dict) else None
        if attr not in POLL_ACTIONS:
            out.append(f"{name}: EventSourceArn must be a queue's Arn or a table's StreamArn of the stack")
            continue
        stmts = statements(t, fn)
        for action in POLL_ACTIONS[attr]:
            if not allows(stmts, action, source):
                out.append(f"{name}: {fn_name}'s role must allow {action} on {source['Fn::GetAtt'][0]}.{attr} (exactly)")
        if attr == "StreamArn":
            table = source["Fn::GetAtt"][0]
            ok = any(
                s.get("Effect") == "Allow"
                and "dynamodb:ListStreams" in as_list(s.get("Action"))
                and any(sub_text(r) == f"${{{table}.Arn}}/stream/*" for r in as_list(s.get("Resource")))
                for s in stmts
            )
            if not ok:
                out.append(f"{name}: {fn_name}'s role must allow dynamodb:ListStreams on ${{{table}.Arn}}/stream/*")
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


@rule
def finished_tasks_expire(t: Template) -> list[str]:
    """Finished tasks expire: TTL on expires_at, a TaskRetentionDays parameter (1-3650 days), and
    every function that writes the table told it (TASKQ_RETENTION_DAYS); a writer without it
    would keep its default while the others follow the parameter."""
    out = []
    param = t.get("Parameters", {}).get("TaskRetentionDays")
    if param is None:
        out.append("a TaskRetentionDays parameter must set how long finished tasks are kept")
    else:
        default = param.get("Default")
        if not (isinstance(default, int) and 1 <= default <= 3650):
            out.append(f"TaskRetentionDays must default to 1-3650 days, not {default!r}")
    for name, table in resources(t, "AWS::DynamoDB::Table").items():
        ttl = props(table).get("TimeToLiveSpecification", {})
        if not ttl.get("Enabled") or ttl.get("AttributeName") != "expires_at":
            out.append(f"{name}: TTL must be on, on expires_at (finished tasks and idempotency records)")
        arn = {"Fn::GetAtt": [name, "Arn"]}
        for fname, fn in functions(t).items():
            stmts = statements(t, fn)
            if not any(allows(stmts, a, arn) for a in ("dynamodb:UpdateItem", "dynamodb:PutItem")):
                continue
            value = env(t, fn).get("TASKQ_RETENTION_DAYS")
            if "TaskRetentionDays" not in refs(value):
                out.append(f"{fname}: writes {name} but TASKQ_RETENTION_DAYS is not !Ref TaskRetentionDays")
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


ENI_ACTIONS = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}


@rule
def only_cache_users_in_vpc(t: Template) -> list[str]:
    """A function joins the VPC if and only if it talks to Redis; only those may manage network interfaces."""
    out = []
    for name, fn in functions(t).items():
        variables = props(fn).get("Environment", {}).get("Variables", {})
        uses_cache = "TASKQ_REDIS_URL" in variables
        in_vpc = "VpcConfig" in props(fn)
        if uses_cache and not in_vpc:
            out.append(f"{name}: uses the cache but is not in the VPC")
        if in_vpc and not uses_cache:
            out.append(f"{name}: is in the VPC but does not use the cache (keep it out)")
        granted = {a for s in statements(t, fn) if s.get("Effect") == "Allow" for a in as_list(s.get("Action"))}
        if in_vpc and "ec2:CreateNetworkInterface" not in granted:
            out.append(f"{name}: is in the VPC but its role may not create network interfaces (Lambda needs ec2:CreateNetworkInterface)")
        if not in_vpc and granted & ENI_ACTIONS:
            out.append(f"{name}: is not in the VPC but its role may manage network interfaces ({sorted(granted & ENI_ACTIONS)})")
    return out


# ------------------------------------------------------------------ rules: edge


@rule
def cloudfront_https_and_origins(t: Template) -> list[str]:
    """HTTPS only; /v1/* uncached with Host not forwarded; S3 through OAC; security headers; the WAF web ACL attached."""
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
            out.append(f"{name}: WebACLId must reference the stack's WAF web ACL")
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


MANAGED_RULE_GROUPS = [
    "AWSManagedRulesCommonRuleSet",
    "AWSManagedRulesKnownBadInputsRuleSet",
    "AWSManagedRulesAmazonIpReputationList",
]
# Rules of AWSManagedRulesCommonRuleSet that must only count, and why. Any other override needs a
# line here.
COMMON_RULES_COUNTED = {
    "SizeRestrictions_BODY": "it blocks bodies over 8 KB; a task payload may be 256 KiB",
}


@rule
def waf_on_by_default(t: Template) -> list[str]:
    """WAF by default: AWS managed groups, a rate rule that spares reads, logs kept; created only in us-east-1."""
    out = []
    acls = resources(t, "AWS::WAFv2::WebACL")
    if not acls:
        return ["no WAF web ACL"]
    log_groups = resources(t, "AWS::Logs::LogGroup")
    for name, acl in acls.items():
        if condition(t, acl.get("Condition")) is not True:
            out.append(f"{name}: must be created with the default parameters (Condition {acl.get('Condition')}; EnableWaf defaults to \"true\")")
        p = props(acl)
        if p.get("Scope") != "CLOUDFRONT":
            out.append(f"{name}: Scope must be CLOUDFRONT")
        rules_ = p.get("Rules", []) or []
        groups: dict[str, tuple[dict, dict]] = {}
        for r in rules_:
            g = (r.get("Statement") or {}).get("ManagedRuleGroupStatement")
            if g and g.get("VendorName") == "AWS":
                groups[g.get("Name")] = (r, g)
        for g in MANAGED_RULE_GROUPS:
            if g not in groups:
                out.append(f"{name}: AWS managed rule group {g} missing")
            elif "None" not in (groups[g][0].get("OverrideAction") or {}):
                out.append(f"{name}: {g} must act (OverrideAction None), not only count")
        if "AWSManagedRulesCommonRuleSet" in groups:
            overrides = {
                o.get("Name"): o.get("ActionToUse") or {}
                for o in groups["AWSManagedRulesCommonRuleSet"][1].get("RuleActionOverrides", []) or []
            }
            for rule_name, why in COMMON_RULES_COUNTED.items():
                if "Count" not in overrides.get(rule_name, {}):
                    out.append(f"{name}: AWSManagedRulesCommonRuleSet's {rule_name} must be overridden to Count ({why})")
            for rule_name, action in overrides.items():
                if rule_name not in COMMON_RULES_COUNTED and "Block" not in action:
                    out.append(f"{name}: common rule {rule_name} is overridden to {list(action)} (not in COMMON_RULES_COUNTED)")
        rate = [r for r in rules_ if "RateBasedStatement" in (r.get("Statement") or {})]
        if not rate:
            out.append(f"{name}: needs a rate-based rule")
        elif not any("ScopeDownStatement" in r["Statement"]["RateBasedStatement"] for r in rate):
            out.append(f"{name}: a rate-based rule must be scoped down (ScopeDownStatement), so reads such as a polling dashboard are not blocked")
        for r in rate:
            if "Block" not in (r.get("Action") or {}):
                out.append(f"{name}: rate-based rule {r.get('Name')} must Block")
            if not is_param_ref(t, r["Statement"]["RateBasedStatement"].get("Limit")):
                out.append(f"{name}: rate-based rule {r.get('Name')}: Limit must come from a parameter")
        logging = [
            (k, l) for k, l in resources(t, "AWS::WAFv2::LoggingConfiguration").items()
            if name in refs(props(l).get("ResourceArn"))
        ]
        if not logging:
            out.append(f"{name}: no WAF logging (AWS::WAFv2::LoggingConfiguration)")
        for k, l in logging:
            if l.get("Condition") != acl.get("Condition"):
                out.append(f"{k}: Condition must be the web ACL's ({acl.get('Condition')})")
            dests = [d for d in refs(props(l).get("LogDestinationConfigs")) if d in log_groups]
            if not dests:
                out.append(f"{k}: must log to a CloudWatch log group of the stack")
            for d in dests:
                gp = props(log_groups[d])
                if not sub_text(gp.get("LogGroupName", "")).startswith("aws-waf-logs-"):
                    out.append(f"{d}: WAF log group names must start with aws-waf-logs-")
                if "RetentionInDays" not in gp:
                    out.append(f"{d}: needs RetentionInDays")
    # CloudFront web ACLs exist only in us-east-1: a deploy that would create one elsewhere stops
    # at a template rule with a message, not half-way through with WAF's error.
    region_rule = False
    for r in (t.get("Rules") or {}).values():
        for a in r.get("Assertions", []) or []:
            assert_ = a.get("Assert") or {}
            eq = assert_.get("Fn::Equals") if isinstance(assert_, dict) else None
            if (
                eq
                and {"Ref": "AWS::Region"} in eq
                and "us-east-1" in eq
                and evaluate(t, r.get("RuleCondition", True)) is True
                and "us-east-1" in str(a.get("AssertDescription", ""))
            ):
                region_rule = True
    if not region_rule:
        out.append("Rules: no assertion (with an AssertDescription) that the stack is in us-east-1 when it creates the web ACL")
    return out


ORIGIN_HEADER = "X-Taskq-Origin-Verify"
ORIGIN_ENV = "TASKQ_ORIGIN_VERIFY"


def resolved_secret(value: Any) -> str | None:
    """The logical id of the secret a "{{resolve:secretsmanager:${Secret}:SecretString}}" value reads."""
    m = re.fullmatch(r"\{\{resolve:secretsmanager:\$\{([A-Za-z0-9]+)\}:SecretString\}\}", sub_text(value))
    return m.group(1) if m else None


@rule
def api_only_through_cloudfront(t: Template) -> list[str]:
    """CloudFront sends a generated secret to the API origin; the API function gets the same one (it refuses requests without it)."""
    out = []
    secrets = resources(t, "AWS::SecretsManager::Secret")
    apis = set(resources(t, "AWS::Serverless::HttpApi"))
    sent: set[str] = set()
    for name, d in resources(t, "AWS::CloudFront::Distribution").items():
        for o in props(d).get("DistributionConfig", {}).get("Origins", []):
            if not refs(o.get("DomainName")) & apis:
                continue
            headers = {h.get("HeaderName", "").lower(): h.get("HeaderValue") for h in o.get("OriginCustomHeaders", []) or []}
            secret = resolved_secret(headers.get(ORIGIN_HEADER.lower(), ""))
            if secret is None:
                out.append(f"{name} origin {o.get('Id')}: OriginCustomHeaders must send {ORIGIN_HEADER} from a secret ({{{{resolve:secretsmanager:...}}}})")
            else:
                sent.add(secret)
    for s_name in sent:
        gen = props(secrets.get(s_name, {})).get("GenerateSecretString")
        if s_name not in secrets or not gen:
            out.append(f"{s_name}: must be a Secrets Manager secret of the stack with a generated value")
        elif int(gen.get("PasswordLength", 32)) < 32 or gen.get("ExcludePunctuation") is not True:
            out.append(f"{s_name}: at least 32 characters, no punctuation (it travels in a header)")
    api_fns = {
        n: fn for n, fn in functions(t).items()
        if any((ev.get("Type") == "HttpApi") for ev in (props(fn).get("Events") or {}).values())
    }
    for n, fn in api_fns.items():
        secret = resolved_secret(env(t, fn).get(ORIGIN_ENV, ""))
        if secret is None:
            out.append(f"{n}: environment variable {ORIGIN_ENV} must hold CloudFront's origin secret")
        elif secret not in sent:
            out.append(f"{n}: {ORIGIN_ENV} reads {secret}, but CloudFront sends {sorted(sent) or 'nothing'}")
    desc = str(t.get("Outputs", {}).get("ApiUrl", {}).get("Description", ""))
    if "403" not in desc or "CloudFrontUrl" not in desc:
        out.append("output ApiUrl: the description must say direct calls are refused (403) and clients use CloudFrontUrl")
    return out


# ------------------------------------------------------------------ rules: observability


@rule
def alarms_cover_the_failure_modes(t: Template) -> list[str]:
    """Age per queue, DLQ depth (visible + in flight) > 0, errors and throttles per function, stream iterator age, cache throttles, provisioned-concurrency spillover, API 5xx, DynamoDB throttles; all notify the topic."""
    out = []
    for q in source_queues(t):
        if not alarm_on(t, "ApproximateAgeOfOldestMessage", q, "QueueName"):
            out.append(f"{q}: no oldest-message-age alarm")
    for q in dead_letter_queues(t):
        if not depth_alarm_on(t, q):
            out.append(f"{q}: no alarm on dead-letter depth (visible + in flight) > 0")
    for m in stream_mappings(t).values():
        for fn in refs(props(m).get("FunctionName")):
            if not alarm_on(t, "IteratorAge", fn, "FunctionName"):
                out.append(f"{fn}: reads a stream and has no IteratorAge alarm")
    for cache in resources(t, "AWS::ElastiCache::ServerlessCache"):
        if not alarm_on(t, "ThrottledCmds", cache, "clusterId"):
            out.append(f"{cache}: no ThrottledCmds alarm")
    for name, fn in functions(t).items():
        if props(fn).get("ProvisionedConcurrencyConfig") and not alarm_on(
            t, "ProvisionedConcurrencySpilloverInvocations", name, "FunctionName"
        ):
            out.append(f"{name}: provisioned concurrency without a spillover alarm")
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


# The only actions a statement may grant on Resource "*": AWS has no resource-level permission for
# them. X-Ray's trace upload (what AWSXrayWriteOnlyAccess gave every function), and the network
# interface actions Lambda performs with the role of a VPC function (AWSLambdaVPCAccessExecutionRole
# without its logs actions; only_cache_users_in_vpc keeps them to VPC functions).
WILDCARD_ACTIONS = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
} | ENI_ACTIONS
# Of those, the ones EC2 evaluates the ec2:Vpc condition key for: granted on "*" only with a
# condition on it (the stack's VPC). The Describe calls accept no condition at all.
WILDCARD_NEEDS_VPC_CONDITION = {
    "ec2:CreateNetworkInterface",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}
# SAM events that add an AWS managed policy with Resource "*" to the function's generated role
# (samtranslator/model/eventsources/pull.py). taskq's event sources are explicit mappings.
PULL_EVENTS = {
    "SQS": "AWSLambdaSQSQueueExecutionRole",
    "DynamoDB": "AWSLambdaDynamoDBExecutionRole",
    "Kinesis": "AWSLambdaKinesisExecutionRole",
    "MSK": "AWSLambdaMSKExecutionRole",
}


def _condition_keys(cond: Any) -> set[str]:
    return {k for ops in (cond or {}).values() if isinstance(ops, dict) for k in ops}


@rule
def least_privilege(t: Template) -> list[str]:
    """Each function runs as a stack role with inline statements only: no managed policies (SAM's grant "*"), no wildcard actions, "*" only for WILDCARD_ACTIONS."""
    out = []
    roles = resources(t, "AWS::IAM::Role")
    fn_roles: set[str] = set()
    for name, fn in functions(t).items():
        role_name, _ = function_role(t, fn)
        if role_name is None:
            out.append(
                f"{name}: needs Role (a role of the stack): the role SAM generates carries "
                "AWSLambdaBasicExecutionRole and AWSXrayWriteOnlyAccess, both Resource '*'"
            )
        else:
            fn_roles.add(role_name)
        if props(fn).get("Policies"):
            out.append(f"{name}: Policies: put the statements in its role")
        for ev_name, ev in (props(fn).get("Events") or {}).items():
            if ev.get("Type") in PULL_EVENTS:
                out.append(
                    f"{name}.{ev_name}: a SAM {ev.get('Type')} event (SAM attaches {PULL_EVENTS[ev['Type']]}, "
                    "Resource '*'): use an AWS::Lambda::EventSourceMapping"
                )
    for r in sorted(fn_roles):
        rp = props(roles[r])
        for arn in rp.get("ManagedPolicyArns", []) or []:
            out.append(f"{r}: managed policy {plain(arn)}: inline statements only (AWS managed policies grant Resource '*')")
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for k, pol in resources(t, kind).items():
            if refs(props(pol).get("Roles")) & fn_roles:
                out.append(f"{k}: keep function permissions inline in the role")
    checked = [(r, role_statements(roles[r])) for r in sorted(fn_roles)]
    checked += [(n, sam_statements(fn)) for n, fn in functions(t).items()]
    for where, stmts in checked:
        for s in stmts:
            sid = s.get("Sid", "?")
            if "NotAction" in s or "NotResource" in s:
                out.append(f"{where}/{sid}: NotAction/NotResource grant more than they name")
            if s.get("Effect") != "Allow":
                continue
            actions = as_list(s.get("Action"))
            for action in actions:
                if not isinstance(action, str) or "*" in action:
                    out.append(f"{where}/{sid}: wildcard action {action!r}")
            if "*" in as_list(s.get("Resource")):
                extra = [a for a in actions if a not in WILDCARD_ACTIONS]
                if extra:
                    out.append(f"{where}/{sid}: Resource '*' for {extra} (only {sorted(WILDCARD_ACTIONS)} may have it)")
                needs = [a for a in actions if a in WILDCARD_NEEDS_VPC_CONDITION]
                if needs and "ec2:Vpc" not in _condition_keys(s.get("Condition")):
                    out.append(f"{where}/{sid}: {needs} on Resource '*' need a Condition on ec2:Vpc (the stack's VPC)")
    return out


# ------------------------------------------------------------------ rules: closed by default


@rule
def cognito_closed_by_default(t: Template) -> list[str]:
    """By default: only admins create users, the user pool cannot be deleted, and callers without a role cannot submit high priority."""
    out = []
    for name, pool in resources(t, "AWS::Cognito::UserPool").items():
        p = props(pool)
        admin_only = evaluate(t, (p.get("AdminCreateUserConfig") or {}).get("AllowAdminCreateUserOnly", False))
        if admin_only is not True:
            out.append(f"{name}: self sign-up must be off by default (AdminCreateUserConfig.AllowAdminCreateUserOnly true)")
        if evaluate(t, p.get("DeletionProtection", "INACTIVE")) != "ACTIVE":
            out.append(f"{name}: DeletionProtection must be ACTIVE by default")
    limits = [(n, env(t, fn).get("TASKQ_MAX_PRIORITY")) for n, fn in functions(t).items() if "TASKQ_MAX_PRIORITY" in env(t, fn)]
    if not limits:
        out.append("no function sets TASKQ_MAX_PRIORITY (without it every caller may submit high)")
    for n, value in limits:
        text = evaluate(t, value)
        try:
            table = json.loads(text)
        except (TypeError, ValueError):
            out.append(f"{n}: TASKQ_MAX_PRIORITY must default to a JSON object, not {text!r}")
            continue
        if table.get("default") not in ("normal", "low"):
            out.append(f"{n}: TASKQ_MAX_PRIORITY's default lets callers without a role submit {table.get('default')!r} (normal at most)")
    return out


# The functions that read the task type catalog: the API checks submissions against it, the
# worker takes its targets from it. One parameter feeds both, so they cannot disagree.
CATALOG_READERS = ("taskq-api", "taskq-worker")


def binary(fn: dict) -> str | None:
    return (fn.get("Metadata") or {}).get("BuildProperties", {}).get("Binary")


@rule
def task_types_and_targets(t: Template) -> list[str]:
    """One TaskTypes parameter (a JSON object) feeds TASKQ_TASK_TYPES of the API and the worker; only the worker may invoke Lambda, exactly the TargetFunctionArns, and only when some are given."""
    out = []
    param = t.get("Parameters", {}).get("TaskTypes")
    if param is None:
        out.append("a TaskTypes parameter must configure the accepted task types")
    else:
        try:
            if not isinstance(json.loads(param.get("Default", "")), dict):
                raise ValueError
        except ValueError:
            out.append(f"TaskTypes must default to a JSON object, not {param.get('Default')!r}")
    if "TargetFunctionArns" not in t.get("Parameters", {}):
        out.append("a TargetFunctionArns parameter must list the functions lambda targets may invoke")
    for name, fn in functions(t).items():
        if binary(fn) in CATALOG_READERS and "TaskTypes" not in refs(env(t, fn).get("TASKQ_TASK_TYPES")):
            out.append(f"{name}: TASKQ_TASK_TYPES must be !Ref TaskTypes (the API and the worker read one catalog)")
        role_name, role = function_role(t, fn)
        invokes = [s for s in statements(t, fn) if s.get("Effect") == "Allow" and any(str(a).startswith("lambda:") for a in as_list(s.get("Action")))]
        if not invokes:
            continue
        if binary(fn) != "taskq-worker":
            out.append(f"{name}: only the worker invokes task targets; {[s.get('Sid', '?') for s in invokes]} grant Lambda actions")
            continue
        for s in invokes:
            sid = s.get("Sid", "?")
            if as_list(s.get("Action")) != ["lambda:InvokeFunction"]:
                out.append(f"{name}/{sid}: lambda:InvokeFunction only, not {as_list(s.get('Action'))}")
            if s.get("Resource") != {"Ref": "TargetFunctionArns"}:
                out.append(f"{name}/{sid}: Resource must be !Ref TargetFunctionArns, not {plain(s.get('Resource'))!r}")
        # An empty list would make the statement invalid: it exists only under HasTargetFunctions.
        raw = [x for p in props(role or {}).get("Policies", []) for x in p["PolicyDocument"]["Statement"]]
        for x in raw:
            if isinstance(x, dict) and "Effect" in x and any(str(a).startswith("lambda:") for a in as_list(x.get("Action"))):
                out.append(f"{role_name}/{x.get('Sid', '?')}: must sit in !If [HasTargetFunctions, ..., !Ref AWS::NoValue]")
            if isinstance(x, dict) and "Fn::If" in x and x["Fn::If"][0] != "HasTargetFunctions":
                branch = x["Fn::If"][1]
                if any(str(a).startswith("lambda:") for a in as_list(branch.get("Action"))):
                    out.append(f"{role_name}/{branch.get('Sid', '?')}: under {x['Fn::If'][0]}, not HasTargetFunctions")
    return out


# Environment variables that may hold a resolved secret, and why: CloudFront's origin secret is
# readable in the distribution's configuration anyway (see template.yaml, ApiFunction).
ENV_SECRETS_ALLOWED = {ORIGIN_ENV}


@rule
def secrets_not_in_environment(t: Template) -> list[str]:
    """No secret value in a function's configuration (but ENV_SECRETS_ALLOWED): functions get a secret's ARN and read it, on that secret only."""
    out = []
    secrets = resources(t, "AWS::SecretsManager::Secret")
    for name, fn in functions(t).items():
        variables = env(t, fn)
        if "TASKQ_WEBHOOK_SECRET" in variables:
            out.append(f"{name}: TASKQ_WEBHOOK_SECRET puts the signing secret in the configuration: pass TASKQ_WEBHOOK_SECRET_ARN")
        for var, value in variables.items():
            if "{{resolve:" in json.dumps(plain(value)) and var not in ENV_SECRETS_ALLOWED:
                out.append(f"{name}: {var} resolves a secret into the environment (readable with lambda:GetFunctionConfiguration)")
        named = {var: refs(v) & set(secrets) for var, v in variables.items() if var.endswith("_SECRET_ARN")}
        stmts = statements(t, fn)
        for var, ids in named.items():
            if not ids:
                out.append(f"{name}: {var} must be !Ref of a secret of the stack")
            for sid in ids:
                if not allows(stmts, "secretsmanager:GetSecretValue", {"Ref": sid}):
                    out.append(f"{name}: {var} names {sid}, but its role may not read it (secretsmanager:GetSecretValue on !Ref {sid})")
        readable = set().union(*named.values()) if named else set()
        for s in stmts:
            if s.get("Effect") == "Allow" and any(str(a).startswith("secretsmanager:") for a in as_list(s.get("Action"))):
                for r in as_list(s.get("Resource")):
                    if not (isinstance(r, dict) and r.get("Ref") in readable):
                        out.append(f"{name}/{s.get('Sid', '?')}: Secrets Manager access only on the secrets its *_SECRET_ARN variables name, not {plain(r)!r}")
    webhook = functions(t).get("WebhookFunction")
    if webhook is not None and "TASKQ_WEBHOOK_SECRET_ARN" not in env(t, webhook):
        out.append("WebhookFunction: TASKQ_WEBHOOK_SECRET_ARN must name the signing secret")
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


# ------------------------------------------------------------------ rules: deploying twice in one account


# Properties that name a resource in the account and region (two stacks giving the same name
# collide), with the longest name AWS accepts. Names scoped to a parent (IAM inline policies,
# WAF rules, Cognito groups) are not here.
NAMES: dict[str, tuple[tuple[str, ...], int]] = {
    "AWS::SQS::Queue": (("QueueName",), 80),
    "AWS::DynamoDB::Table": (("TableName",), 255),
    "AWS::Logs::LogGroup": (("LogGroupName",), 512),
    "AWS::CloudWatch::Dashboard": (("DashboardName",), 255),
    "AWS::CloudWatch::Alarm": (("AlarmName",), 255),
    "AWS::ApplicationAutoScaling::ScalingPolicy": (("PolicyName",), 256),
    "AWS::ElastiCache::ServerlessCache": (("ServerlessCacheName",), 40),
    "AWS::Cognito::UserPool": (("UserPoolName",), 128),
    "AWS::CloudFront::OriginAccessControl": (("OriginAccessControlConfig", "Name"), 64),
    "AWS::CloudFront::ResponseHeadersPolicy": (("ResponseHeadersPolicyConfig", "Name"), 128),
    "AWS::CloudFront::CachePolicy": (("CachePolicyConfig", "Name"), 128),
    "AWS::WAFv2::WebACL": (("Name",), 128),
    "AWS::Scheduler::Schedule": (("Name",), 64),
    "AWS::Events::Rule": (("Name",), 64),
    "AWS::Lambda::Function": (("FunctionName",), 64),
    "AWS::Serverless::Function": (("FunctionName",), 64),
    "AWS::IAM::Role": (("RoleName",), 64),
    "AWS::SecretsManager::Secret": (("Name",), 512),
    "AWS::SNS::Topic": (("TopicName",), 256),
    "AWS::S3::Bucket": (("BucketName",), 63),
}
STACK = "${AWS::StackName}"


def named(t: Template) -> list[tuple[str, Any, int]]:
    """(where, name value, limit) for every account-wide name the template sets, SAM ScheduleV2
    events included (SAM names their schedules after the event's logical id when not told)."""
    out = []
    for rid, r in t.get("Resources", {}).items():
        spec = NAMES.get(r.get("Type"))
        if spec:
            path, limit = spec
            value: Any = props(r)
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                out.append((rid, value, limit))
        if r.get("Type") == "AWS::Serverless::Function":
            for ev, e in (props(r).get("Events") or {}).items():
                if e.get("Type") == "ScheduleV2":
                    out.append((f"{rid}/{ev}", (e.get("Properties") or {}).get("Name", f"{rid}{ev}"), 64))
    return out


def stack_name_room(value: Any, limit: int) -> int | None:
    """The longest stack name this name fits with; None when it does not include the stack name."""
    text = sub_text(value)
    if STACK not in text or not isinstance(value, dict):
        return None
    fixed = re.sub(r"\$\{[^}]+\}", "", text)
    if re.sub(r"\$\{AWS::StackName\}", "", text) != fixed:
        return None  # other substitutions of unknown length: not checked here
    return limit - len(fixed)


@rule
def named_resources_unique_per_stack(t: Template) -> list[str]:
    """Every account-wide name includes the stack name (a second stack in the account and region deploys beside the first)."""
    return [
        f"{where}: the name {sub_text(value)!r} does not include ${{AWS::StackName}} (a second stack would collide)"
        for where, value, _ in named(t)
        if STACK not in sub_text(value) or not isinstance(value, dict)
    ]


def max_stack_name(t: Template) -> int | None:
    return (t.get("Metadata", {}).get("taskq") or {}).get("MaxStackNameLength")


@rule
def stack_name_length_stated(t: Template) -> list[str]:
    """Metadata.taskq.MaxStackNameLength is the longest stack name every named resource accepts, and the configured stacks fit it."""
    rooms = [(stack_name_room(v, limit), where) for where, v, limit in named(t)]
    rooms = [(r, w) for r, w in rooms if r is not None]
    if not rooms:
        return []
    room, where = min(rooms)
    stated = max_stack_name(t)
    out = []
    if stated != room:
        out.append(f"Metadata.taskq.MaxStackNameLength is {stated}, but {where}'s name allows a stack name of {room} characters at most")
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for env, sections in config.items():
        if not isinstance(sections, dict):
            continue
        for section in sections.values():
            name = (section.get("parameters") or {}).get("stack_name") if isinstance(section, dict) else None
            if name and len(name) > room:
                out.append(f"samconfig.toml [{env}]: stack_name {name!r} is longer than {room} characters")
    return out


def cidr_prefix_allowed(pattern: str, prefix: int) -> bool:
    return re.fullmatch(pattern, f"10.0.0.0/{prefix}") is not None


def _cidrs(value: Any) -> list[list]:
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Fn::Cidr":
                found.append(v)
            found.extend(_cidrs(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(_cidrs(v))
    return found


@rule
def vpc_cidr_fits_its_subnets(t: Template) -> list[str]:
    """A CIDR parameter cut with Fn::Cidr allows only prefixes that hold every subnet cut from it."""
    out = []
    params = t.get("Parameters", {})
    for cidr in _cidrs(t.get("Resources", {})):
        block, count, bits = cidr
        name = block.get("Ref") if isinstance(block, dict) else None
        if name not in params:
            continue
        pattern = params[name].get("AllowedPattern")
        if not pattern:
            out.append(f"parameter {name}: no AllowedPattern (it is cut into {count} /{32 - int(bits)} subnets)")
            continue
        largest = 32 - int(bits) - (int(count) - 1).bit_length()
        too_small = [p for p in range(8, 29) if p > largest and cidr_prefix_allowed(pattern, p)]
        if too_small:
            out.append(
                f"parameter {name} allows /{too_small[0]}, but {count} subnets of /{32 - int(bits)} need /{largest} or larger"
            )
    return out


@rule
def availability_zones_chosen(t: Template) -> list[str]:
    """Subnets take their AZ from the AvailabilityZones parameter when it is set (some AZs refuse Lambda networking or endpoints), else from GetAZs."""
    out = []
    if "AvailabilityZones" not in t.get("Parameters", {}):
        out.append("no AvailabilityZones parameter")
    for name, sn in resources(t, "AWS::EC2::Subnet").items():
        az = props(sn).get("AvailabilityZone")
        chosen = isinstance(az, dict) and "Fn::If" in az and "AvailabilityZones" in refs(az["Fn::If"][1])
        if not chosen:
            out.append(f"{name}: AvailabilityZone does not come from the AvailabilityZones parameter when it is set")
    return out


def _rule_refs(t: Template) -> list[tuple[set[str], set[str]]]:
    return [(refs(r.get("RuleCondition")), refs(r.get("Assertions"))) for r in (t.get("Rules") or {}).values()]


@rule
def contradictions_fail_early(t: Template) -> list[str]:
    """Template Rules refuse parameter values that contradict each other before any resource is made."""
    out = []
    rules_ = _rule_refs(t)
    if not any("JwtIssuer" in cond and "JwtAudience" in asserts for cond, asserts in rules_):
        out.append("no Rule requires JwtAudience when JwtIssuer is set")
    if not any("AvailabilityZones" in cond | asserts for cond, asserts in rules_):
        out.append("no Rule checks the AvailabilityZones list")
    return out


def alarm_metrics(a: dict) -> list[tuple[str, list]]:
    """(metric name, dimensions) of an alarm, single metric or metric math."""
    p = props(a)
    if p.get("MetricName"):
        return [(p["MetricName"], p.get("Dimensions", []))]
    out = []
    for m in p.get("Metrics", []) or []:
        metric = ((m.get("MetricStat") or {}).get("Metric")) or {}
        if metric.get("MetricName"):
            out.append((metric["MetricName"], metric.get("Dimensions", [])))
    return out


def depth_alarm_on(t: Template, queue: str) -> bool:
    """An alarm on visible + in-flight messages of a queue, above 0."""
    for a in alarms(t).values():
        p = props(a)
        seen = {m for m, dims in alarm_metrics(a) if any(queue in refs(d.get("Value")) for d in dims)}
        summed = any("+" in str(m.get("Expression", "")) and m.get("ReturnData") for m in p.get("Metrics", []) or [])
        if (
            {"ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible"} <= seen
            and summed
            and p.get("Threshold") == 0
            and p.get("ComparisonOperator") == "GreaterThanThreshold"
        ):
            return True
    return False


def stream_mappings(t: Template) -> dict[str, dict]:
    return {
        k: v
        for k, v in resources(t, "AWS::Lambda::EventSourceMapping").items()
        if "StreamArn" in json.dumps(props(v).get("EventSourceArn"))
    }


@rule
def stream_failures_recorded(t: Template) -> list[str]:
    """Stream event sources send batches they give up on to a queue the function may write, and an alarm watches it."""
    out = []
    for name, m in stream_mappings(t).items():
        dest = ((props(m).get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        queues = [q for q in refs(dest) if q in resources(t, "AWS::SQS::Queue")]
        if not queues:
            out.append(f"{name}: no on-failure destination queue (a batch given up on leaves no trace)")
            continue
        fn = next(iter(refs(props(m).get("FunctionName"))), None)
        fn_res = t["Resources"].get(fn or "", {})
        if not allows(statements(t, fn_res), "sqs:SendMessage", {"Fn::GetAtt": [queues[0], "Arn"]}):
            out.append(f"{name}: {fn}'s role may not sqs:SendMessage to {queues[0]}")
        if not depth_alarm_on(t, queues[0]):
            out.append(f"{queues[0]}: no alarm on its depth (visible + in flight) > 0")
    return out


@rule
def scheduled_functions_never_overlap(t: Template) -> list[str]:
    """A function run on a schedule has reserved concurrency 1: a run that outlasts its interval does not race the next."""
    out = []
    for name, fn in functions(t).items():
        events = props(fn).get("Events") or {}
        if any(e.get("Type") in ("Schedule", "ScheduleV2") for e in events.values()):
            if props(fn).get("ReservedConcurrentExecutions") != 1:
                out.append(f"{name}: runs on a schedule without ReservedConcurrentExecutions: 1")
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
