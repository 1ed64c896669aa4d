"""The policy rules hold for template.yaml, and each one catches a template broken on purpose.

Run: .tools/venv/bin/python -m unittest discover -s infra/policy -v   (scripts/test does)
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import unittest

import rules

TEMPLATE = rules.plain(rules.load())


def broken(mutate) -> dict:
    t = copy.deepcopy(TEMPLATE)
    mutate(t)
    return t


def res(t: dict, name: str) -> dict:
    return t["Resources"][name]["Properties"]


def role_stmts(t: dict, role: str) -> list:
    """The statement list of a role's (only) inline policy."""
    return res(t, role)["Policies"][0]["PolicyDocument"]["Statement"]


def stmt(t: dict, role: str, sid: str) -> dict:
    """A role statement by Sid (the deployed branch of an Fn::If)."""
    for s in role_stmts(t, role):
        s = s["Fn::If"][1] if "Fn::If" in s else s
        if s.get("Sid") == sid:
            return s
    raise KeyError(f"{role}/{sid}")


def drop_stmt(t: dict, role: str, sid: str) -> None:
    stmts = role_stmts(t, role)
    stmts[:] = [s for s in stmts if (s["Fn::If"][1] if "Fn::If" in s else s).get("Sid") != sid]


def waf_rule(t: dict, name: str) -> dict:
    return next(r for r in res(t, "WebAcl")["Rules"] if r["Name"] == name)


def api_origin(t: dict) -> dict:
    return next(o for o in res(t, "Distribution")["DistributionConfig"]["Origins"] if o["Id"] == "api")


def env_of(t: dict, fn: str) -> dict:
    return res(t, fn)["Environment"]["Variables"]


class TemplatePasses(unittest.TestCase):
    def test_every_rule_holds(self):
        for name, problems in rules.check(TEMPLATE).items():
            with self.subTest(rule=name):
                self.assertEqual(problems, [])

    def test_every_rule_has_a_breaking_test(self):
        tested = {n[len("test_") :].split("__")[0] for n in dir(RulesCatchBrokenTemplates) if n.startswith("test_")}
        self.assertEqual(set(rules.RULES) - tested, set())


class SamConfig(unittest.TestCase):
    """samconfig.toml's environments override only parameters that exist, with values they allow."""

    def test_overrides_are_valid_parameters(self):
        import tomllib

        config = tomllib.loads((rules.ROOT / "samconfig.toml").read_text())
        params = TEMPLATE["Parameters"]
        envs = [e for e in config if e != "version"]
        self.assertIn("dev", envs)
        self.assertIn("prod", envs)
        for env in envs:
            overrides = config[env].get("deploy", {}).get("parameters", {}).get("parameter_overrides", [])
            for item in overrides:
                key, _, value = item.partition("=")
                with self.subTest(env=env, parameter=key):
                    self.assertIn(key, params)
                    allowed = params[key].get("AllowedValues")
                    if allowed is not None:
                        self.assertIn(value, [str(a) for a in allowed])
                    if "MinValue" in params[key]:
                        self.assertGreaterEqual(float(value), float(params[key]["MinValue"]))


class BuildProfile(unittest.TestCase):
    """The release profile unwinds: cargo-lambda (sam build) adds panic = "abort" unless told."""

    def test_release_profile_unwinds(self):
        import tomllib

        cargo = tomllib.loads((rules.ROOT / "Cargo.toml").read_text())
        self.assertEqual(cargo["profile"]["release"].get("panic"), "unwind")


SAM_PYTHON = rules.ROOT / ".tools/sam/bin/python"

# Transforms a template (JSON on stdin) the way `sam deploy` has CloudFormation do it, offline.
# The managed-policy map only turns policy *names* in Policies into ARNs; taskq uses none.
TRANSFORM = r"""
import json, sys
from samtranslator.translator.transform import transform
tpl = json.load(sys.stdin)
for r in tpl["Resources"].values():
    if r.get("Type") == "AWS::Serverless::Function":
        r.setdefault("Properties", {})["CodeUri"] = "s3://bucket/key"
class NoNames:
    def load(self):
        return {}
json.dump(transform(tpl, {"AWS::Region": "us-east-1"}, NoNames()), sys.stdout)
"""


def sam_transform(t: dict) -> dict:
    done = subprocess.run(
        [str(SAM_PYTHON), "-c", TRANSFORM],
        input=json.dumps(t),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
    )
    if done.returncode != 0:
        raise AssertionError(f"SAM transform failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def managed_policies_of_function_roles(cfn: dict) -> dict[str, list]:
    """Role of each Lambda function in a transformed template -> its ManagedPolicyArns."""
    out = {}
    for name, r in cfn["Resources"].items():
        if r["Type"] == "AWS::Lambda::Function":
            role = rules.refs(r["Properties"]["Role"]).pop()
            out[f"{name} ({role})"] = cfn["Resources"][role]["Properties"].get("ManagedPolicyArns", [])
    return out


# Under CI (scripts/test installs .tools/sam first) a missing samtranslator fails instead of skipping.
@unittest.skipUnless(
    SAM_PYTHON.exists() or os.environ.get("CI"), "needs .tools/sam (scripts/requirements-build.txt) for samtranslator"
)
class SamTransform(unittest.TestCase):
    """What SAM really generates, not what the rules infer: no function role gets a managed policy."""

    def test_no_function_role_has_a_managed_policy(self):
        attached = managed_policies_of_function_roles(sam_transform(TEMPLATE))
        self.assertEqual(len(attached), len(rules.functions(TEMPLATE)))
        self.assertEqual({k: v for k, v in attached.items() if v}, {})

    def test_generated_names_are_unique_per_stack(self):
        cfn = sam_transform(TEMPLATE)
        schedules = rules.resources(cfn, "AWS::Scheduler::Schedule")
        self.assertEqual(len(schedules), 1, "the sweeper's schedule")
        self.assertEqual(rules.named_resources_unique_per_stack(cfn), [])

    def test_generated_names_without_the_stack_name_are_caught(self):
        # SAM's default: the schedule is named after the function and the event.
        t = broken(lambda t: res(t, "SweeperFunction")["Events"]["EveryMinute"]["Properties"].pop("Name"))
        problems = rules.named_resources_unique_per_stack(sam_transform(t))
        self.assertTrue(any("SweeperFunctionEveryMinute" in p for p in problems), problems)

    def test_a_sam_event_and_generated_role_would_attach_them(self):
        def mutate(t):
            worker = res(t, "WorkerFunction")
            worker.pop("Role")
            worker["Events"] = {"Low": {"Type": "SQS", "Properties": {"Queue": {"Fn::GetAtt": ["LowQueue", "Arn"]}}}}
            t["Resources"] = {k: v for k, v in t["Resources"].items() if not k.startswith("WorkerFunction") or k == "WorkerFunction"}

        attached = managed_policies_of_function_roles(sam_transform(broken(mutate)))
        worker = " ".join(next(v for k, v in attached.items() if k.startswith("WorkerFunction ")))
        for policy in ("AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess", "AWSLambdaSQSQueueExecutionRole"):
            self.assertIn(policy, worker)


class RulesCatchBrokenTemplates(unittest.TestCase):
    def assertCaught(self, rule: str, t: dict, fragment: str):
        problems = rules.RULES[rule](t)
        self.assertTrue(
            any(fragment in p for p in problems),
            f"{rule} did not report {fragment!r}; it reported {problems}",
        )

    # functions
    def test_functions_arm64_al2023_cargolambda__x86(self):
        t = broken(lambda t: res(t, "WorkerFunction").__setitem__("Architectures", ["x86_64"]))
        self.assertCaught("functions_arm64_al2023_cargolambda", t, "WorkerFunction: Architectures")

    def test_functions_arm64_al2023_cargolambda__build_method(self):
        t = broken(lambda t: t["Resources"]["SweeperFunction"]["Metadata"].pop("BuildMethod"))
        self.assertCaught("functions_arm64_al2023_cargolambda", t, "SweeperFunction: Metadata.BuildMethod")

    def test_functions_arm64_al2023_cargolambda__log_retention(self):
        t = broken(lambda t: res(t, "WorkerLogs").pop("RetentionInDays"))
        self.assertCaught("functions_arm64_al2023_cargolambda", t, "WorkerFunction: LoggingConfig.LogGroup")

    def test_functions_arm64_al2023_cargolambda__tracing(self):
        t = broken(lambda t: t["Globals"]["Function"].pop("Tracing"))
        self.assertCaught("functions_arm64_al2023_cargolambda", t, "Tracing must be Active")

    def test_api_alias_provisioned_concurrency_autoscaling__no_policy(self):
        t = broken(lambda t: t["Resources"].pop("ApiConcurrencyScalingPolicy"))
        self.assertCaught("api_alias_provisioned_concurrency_autoscaling", t, "no target-tracking policy")

    def test_api_alias_provisioned_concurrency_autoscaling__no_alias(self):
        t = broken(lambda t: res(t, "ApiFunction").pop("AutoPublishAlias"))
        self.assertCaught("api_alias_provisioned_concurrency_autoscaling", t, "AutoPublishAlias")

    def test_worker_sqs_events__no_partial_failures(self):
        t = broken(lambda t: res(t, "WorkerFunctionLow").pop("FunctionResponseTypes"))
        self.assertCaught("worker_sqs_events", t, "WorkerFunctionLow: FunctionResponseTypes")

    def test_worker_sqs_events__hard_coded_concurrency(self):
        t = broken(lambda t: res(t, "WorkerFunctionHigh").__setitem__("ScalingConfig", {"MaximumConcurrency": 5}))
        self.assertCaught("worker_sqs_events", t, "WorkerFunctionHigh: ScalingConfig.MaximumConcurrency")

    def test_worker_sqs_events__hard_coded_batch_size(self):
        t = broken(lambda t: res(t, "WorkerFunctionNormal").__setitem__("BatchSize", 10))
        self.assertCaught("worker_sqs_events", t, "WorkerFunctionNormal: BatchSize")

    def test_worker_sqs_events__queue_without_worker(self):
        t = broken(lambda t: t["Resources"].pop("WorkerFunctionNormal"))
        self.assertCaught("worker_sqs_events", t, "NormalQueue")

    def test_worker_sqs_events__inverted_weights(self):
        t = broken(lambda t: t["Parameters"]["LowMaxConcurrency"].__setitem__("Default", 50))
        self.assertCaught("worker_sqs_events", t, "below LowQueue's")

    def test_event_sources_scoped__queue_not_readable(self):
        t = broken(lambda t: drop_stmt(t, "WorkerFunctionRole", "ConsumeTasks"))
        self.assertCaught("event_sources_scoped", t, "WorkerFunctionHigh: WorkerFunction's role must allow sqs:ReceiveMessage on HighQueue.Arn")

    def test_event_sources_scoped__stream_only_on_star(self):
        t = broken(lambda t: stmt(t, "WebhookFunctionRole", "ReadTaskStream").__setitem__("Resource", "*"))
        self.assertCaught("event_sources_scoped", t, "WebhookFunction's role must allow dynamodb:GetRecords on TasksTable.StreamArn")

    def test_event_sources_scoped__list_streams_missing(self):
        t = broken(lambda t: drop_stmt(t, "StreamFunctionRole", "ListTaskStreams"))
        self.assertCaught("event_sources_scoped", t, "StreamFunctionTaskChanges: StreamFunction's role must allow dynamodb:ListStreams")

    def test_event_sources_scoped__condition_differs(self):
        t = broken(lambda t: t["Resources"]["StreamFunctionTaskChanges"].pop("Condition"))
        self.assertCaught("event_sources_scoped", t, "StreamFunctionTaskChanges: Condition None differs")

    # queues
    def test_queues_encrypted_and_sized__no_sse(self):
        t = broken(lambda t: res(t, "LowDeadLetterQueue").pop("SqsManagedSseEnabled"))
        self.assertCaught("queues_encrypted_and_sized", t, "LowDeadLetterQueue: server-side encryption")

    def test_queues_encrypted_and_sized__default_size(self):
        t = broken(lambda t: res(t, "HighQueue").pop("MaximumMessageSize"))
        self.assertCaught("queues_encrypted_and_sized", t, "HighQueue: MaximumMessageSize")

    def test_queues_visibility_and_redrive__short_visibility(self):
        t = broken(lambda t: t["Mappings"]["WorkerTimeouts"]["900"].__setitem__("QueueVisibility", 900))
        self.assertCaught("queues_visibility_and_redrive", t, "below 6x a worker timeout of 900")

    def test_queues_visibility_and_redrive__receive_count(self):
        t = broken(lambda t: t["Parameters"]["MaxReceiveCount"].__setitem__("MinValue", 5))
        self.assertCaught("queues_visibility_and_redrive", t, "not above the largest max_attempts")

    def test_queues_visibility_and_redrive__open_dlq(self):
        t = broken(lambda t: res(t, "NormalDeadLetterQueue").pop("RedriveAllowPolicy"))
        self.assertCaught("queues_visibility_and_redrive", t, "NormalDeadLetterQueue: RedriveAllowPolicy")

    # table
    def test_table_durable_and_scalable__no_pitr(self):
        t = broken(lambda t: res(t, "TasksTable").pop("PointInTimeRecoverySpecification"))
        self.assertCaught("table_durable_and_scalable", t, "point-in-time recovery")

    def test_table_durable_and_scalable__provisioned_default(self):
        t = broken(lambda t: t["Parameters"]["TableBillingMode"].__setitem__("Default", "PROVISIONED"))
        self.assertCaught("table_durable_and_scalable", t, "PAY_PER_REQUEST")

    def test_table_durable_and_scalable__index_not_scaled(self):
        t = broken(lambda t: t["Resources"].pop("ActiveWriteScalingPolicy"))
        self.assertCaught("table_durable_and_scalable", t, "WriteCapacityUnits of index active")

    def test_table_durable_and_scalable__no_stream(self):
        t = broken(lambda t: res(t, "TasksTable").pop("StreamSpecification"))
        self.assertCaught("table_durable_and_scalable", t, "a stream must be on")

    def test_finished_tasks_expire__ttl_off(self):
        t = broken(lambda t: res(t, "TasksTable")["TimeToLiveSpecification"].__setitem__("Enabled", False))
        self.assertCaught("finished_tasks_expire", t, "TTL must be on")

    def test_finished_tasks_expire__no_parameter(self):
        t = broken(lambda t: t["Parameters"].pop("TaskRetentionDays"))
        self.assertCaught("finished_tasks_expire", t, "TaskRetentionDays parameter")

    def test_finished_tasks_expire__writer_without_the_variable(self):
        def mutate(t):
            t["Globals"]["Function"]["Environment"]["Variables"].pop("TASKQ_RETENTION_DAYS")
            env_of(t, "ApiFunction")["TASKQ_RETENTION_DAYS"] = {"Ref": "TaskRetentionDays"}

        t = broken(mutate)
        self.assertCaught("finished_tasks_expire", t, "WorkerFunction: writes TasksTable")

    # task types and targets
    def test_task_types_and_targets__api_without_the_catalog(self):
        t = broken(lambda t: env_of(t, "ApiFunction").pop("TASKQ_TASK_TYPES"))
        self.assertCaught("task_types_and_targets", t, "ApiFunction: TASKQ_TASK_TYPES must be !Ref TaskTypes")

    def test_task_types_and_targets__worker_with_its_own_catalog(self):
        t = broken(lambda t: env_of(t, "WorkerFunction").__setitem__("TASKQ_TASK_TYPES", "{}"))
        self.assertCaught("task_types_and_targets", t, "WorkerFunction: TASKQ_TASK_TYPES must be !Ref TaskTypes")

    def test_task_types_and_targets__default_not_json(self):
        t = broken(lambda t: t["Parameters"]["TaskTypes"].__setitem__("Default", "echo,sleep"))
        self.assertCaught("task_types_and_targets", t, "TaskTypes must default to a JSON object")

    def test_task_types_and_targets__invoke_any_function(self):
        t = broken(lambda t: stmt(t, "WorkerFunctionRole", "InvokeTaskTargets").__setitem__("Resource", "arn:aws:lambda:*:*:function:*"))
        self.assertCaught("task_types_and_targets", t, "Resource must be !Ref TargetFunctionArns")

    def test_task_types_and_targets__api_may_invoke(self):
        t = broken(lambda t: role_stmts(t, "ApiFunctionRole").append(copy.deepcopy(stmt(t, "WorkerFunctionRole", "InvokeTaskTargets"))))
        self.assertCaught("task_types_and_targets", t, "ApiFunction: only the worker invokes task targets")

    def test_task_types_and_targets__unconditional_invoke(self):
        def mutate(t):
            s = copy.deepcopy(stmt(t, "WorkerFunctionRole", "InvokeTaskTargets"))
            drop_stmt(t, "WorkerFunctionRole", "InvokeTaskTargets")
            role_stmts(t, "WorkerFunctionRole").append(s)

        t = broken(mutate)
        self.assertCaught("task_types_and_targets", t, "must sit in !If [HasTargetFunctions")

    def test_task_types_and_targets__more_lambda_actions(self):
        t = broken(lambda t: stmt(t, "WorkerFunctionRole", "InvokeTaskTargets").__setitem__("Action", ["lambda:InvokeFunction", "lambda:UpdateFunctionCode"]))
        self.assertCaught("task_types_and_targets", t, "lambda:InvokeFunction only")

    # cache and network
    def test_cache_private_and_optional__open_ingress(self):
        t = broken(
            lambda t: res(t, "CacheSecurityGroup")["SecurityGroupIngress"].append(
                {"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379, "CidrIp": "0.0.0.0/0"}
            )
        )
        self.assertCaught("cache_private_and_optional", t, "cache ingress must come from a security group")

    def test_cache_private_and_optional__one_az(self):
        t = broken(lambda t: res(t, "PrivateSubnetB").__setitem__("AvailabilityZone", res(t, "PrivateSubnetA")["AvailabilityZone"]))
        self.assertCaught("cache_private_and_optional", t, "different AZs")

    def test_cache_private_and_optional__always_on(self):
        t = broken(lambda t: t["Resources"]["StatusCache"].pop("Condition"))
        self.assertCaught("cache_private_and_optional", t, "must have a Condition")

    def test_cache_private_and_optional__no_sqs_endpoint(self):
        t = broken(lambda t: t["Resources"].pop("SqsEndpoint"))
        self.assertCaught("cache_private_and_optional", t, "SQS interface endpoint")

    def test_only_cache_users_in_vpc__worker_in_vpc(self):
        t = broken(lambda t: res(t, "WorkerFunction").__setitem__("VpcConfig", res(t, "StreamFunction")["VpcConfig"]))
        self.assertCaught("only_cache_users_in_vpc", t, "WorkerFunction: is in the VPC")

    def test_only_cache_users_in_vpc__api_outside(self):
        t = broken(lambda t: res(t, "ApiFunction").pop("VpcConfig"))
        self.assertCaught("only_cache_users_in_vpc", t, "ApiFunction: uses the cache")

    def test_only_cache_users_in_vpc__eni_rights_outside_vpc(self):
        t = broken(lambda t: role_stmts(t, "WorkerFunctionRole").append(copy.deepcopy(stmt(t, "StreamFunctionRole", "VpcNetworkInterfaces"))))
        self.assertCaught("only_cache_users_in_vpc", t, "WorkerFunction: is not in the VPC but its role may manage network interfaces")

    def test_only_cache_users_in_vpc__vpc_without_eni_rights(self):
        t = broken(lambda t: drop_stmt(t, "StreamFunctionRole", "VpcNetworkInterfaces"))
        self.assertCaught("only_cache_users_in_vpc", t, "StreamFunction: is in the VPC but its role may not create network interfaces")

    # edge
    def test_cloudfront_https_and_origins__http_allowed(self):
        t = broken(
            lambda t: res(t, "Distribution")["DistributionConfig"]["DefaultCacheBehavior"].__setitem__(
                "ViewerProtocolPolicy", "allow-all"
            )
        )
        self.assertCaught("cloudfront_https_and_origins", t, "ViewerProtocolPolicy")

    def test_cloudfront_https_and_origins__api_cached(self):
        t = broken(
            lambda t: res(t, "Distribution")["DistributionConfig"]["CacheBehaviors"][0].__setitem__(
                "CachePolicyId", "658327ea-f89d-4fab-a63d-7e88639e58f6"
            )
        )
        self.assertCaught("cloudfront_https_and_origins", t, "CachingDisabled")

    def test_cloudfront_https_and_origins__host_forwarded(self):
        t = broken(
            lambda t: res(t, "Distribution")["DistributionConfig"]["CacheBehaviors"][0].__setitem__(
                "OriginRequestPolicyId", "216adef6-5c7f-47e4-b989-5492eafa07d3"
            )
        )
        self.assertCaught("cloudfront_https_and_origins", t, "AllViewerExceptHostHeader")

    def test_cloudfront_https_and_origins__s3_without_oac(self):
        t = broken(lambda t: res(t, "Distribution")["DistributionConfig"]["Origins"][1].pop("OriginAccessControlId"))
        self.assertCaught("cloudfront_https_and_origins", t, "origin access control")

    def test_cloudfront_https_and_origins__public_bucket(self):
        t = broken(lambda t: res(t, "StaticBucket")["PublicAccessBlockConfiguration"].__setitem__("BlockPublicPolicy", False))
        self.assertCaught("cloudfront_https_and_origins", t, "public access must be blocked")

    def test_cloudfront_https_and_origins__no_web_acl(self):
        t = broken(lambda t: res(t, "Distribution")["DistributionConfig"].pop("WebACLId"))
        self.assertCaught("cloudfront_https_and_origins", t, "WebACLId")

    def test_cloudfront_https_and_origins__no_hsts(self):
        t = broken(lambda t: res(t, "SecurityHeaders")["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"].pop("StrictTransportSecurity"))
        self.assertCaught("cloudfront_https_and_origins", t, "StrictTransportSecurity")

    def test_waf_on_by_default__off_by_default(self):
        t = broken(lambda t: t["Parameters"]["EnableWaf"].__setitem__("Default", "false"))
        self.assertCaught("waf_on_by_default", t, "WebAcl: must be created with the default parameters")

    def test_waf_on_by_default__managed_group_missing(self):
        t = broken(lambda t: res(t, "WebAcl")["Rules"].remove(waf_rule(t, "known-bad-inputs")))
        self.assertCaught("waf_on_by_default", t, "AWSManagedRulesKnownBadInputsRuleSet missing")

    def test_waf_on_by_default__group_only_counts(self):
        t = broken(lambda t: waf_rule(t, "ip-reputation").__setitem__("OverrideAction", {"Count": {}}))
        self.assertCaught("waf_on_by_default", t, "AWSManagedRulesAmazonIpReputationList must act")

    def test_waf_on_by_default__large_bodies_blocked(self):
        t = broken(lambda t: waf_rule(t, "common-rules")["Statement"]["ManagedRuleGroupStatement"].pop("RuleActionOverrides"))
        self.assertCaught("waf_on_by_default", t, "SizeRestrictions_BODY must be overridden to Count")

    def test_waf_on_by_default__common_rule_quietly_off(self):
        def mutate(t):
            g = waf_rule(t, "common-rules")["Statement"]["ManagedRuleGroupStatement"]
            g["RuleActionOverrides"].append({"Name": "CrossSiteScripting_BODY", "ActionToUse": {"Count": {}}})

        self.assertCaught("waf_on_by_default", broken(mutate), "CrossSiteScripting_BODY is overridden")

    def test_waf_on_by_default__no_rate_rule(self):
        def mutate(t):
            res(t, "WebAcl")["Rules"] = [r for r in res(t, "WebAcl")["Rules"] if "RateBasedStatement" not in r["Statement"]]

        self.assertCaught("waf_on_by_default", broken(mutate), "needs a rate-based rule")

    def test_waf_on_by_default__rate_rule_counts_reads(self):
        t = broken(lambda t: waf_rule(t, "writes-per-ip")["Statement"]["RateBasedStatement"].pop("ScopeDownStatement"))
        self.assertCaught("waf_on_by_default", t, "must be scoped down")

    def test_waf_on_by_default__no_logging(self):
        t = broken(lambda t: t["Resources"].pop("WafLogging"))
        self.assertCaught("waf_on_by_default", t, "no WAF logging")

    def test_waf_on_by_default__log_group_name(self):
        t = broken(lambda t: res(t, "WafLogs").__setitem__("LogGroupName", "/taskq/waf"))
        self.assertCaught("waf_on_by_default", t, "WafLogs: WAF log group names must start with aws-waf-logs-")

    def test_waf_on_by_default__logs_kept_forever(self):
        t = broken(lambda t: res(t, "WafLogs").pop("RetentionInDays"))
        self.assertCaught("waf_on_by_default", t, "WafLogs: needs RetentionInDays")

    def test_waf_on_by_default__no_region_assertion(self):
        t = broken(lambda t: t.pop("Rules"))
        self.assertCaught("waf_on_by_default", t, "us-east-1")

    def test_api_only_through_cloudfront__no_origin_header(self):
        t = broken(lambda t: api_origin(t).pop("OriginCustomHeaders"))
        self.assertCaught("api_only_through_cloudfront", t, "origin api: OriginCustomHeaders must send X-Taskq-Origin-Verify")

    def test_api_only_through_cloudfront__literal_header(self):
        t = broken(lambda t: api_origin(t)["OriginCustomHeaders"][0].__setitem__("HeaderValue", "hunter2"))
        self.assertCaught("api_only_through_cloudfront", t, "OriginCustomHeaders must send X-Taskq-Origin-Verify from a secret")

    def test_api_only_through_cloudfront__no_env(self):
        t = broken(lambda t: env_of(t, "ApiFunction").pop("TASKQ_ORIGIN_VERIFY"))
        self.assertCaught("api_only_through_cloudfront", t, "ApiFunction: environment variable TASKQ_ORIGIN_VERIFY")

    def test_api_only_through_cloudfront__different_secrets(self):
        t = broken(
            lambda t: env_of(t, "ApiFunction").__setitem__(
                "TASKQ_ORIGIN_VERIFY", {"Fn::Sub": "{{resolve:secretsmanager:${WebhookSecret}:SecretString}}"}
            )
        )
        self.assertCaught("api_only_through_cloudfront", t, "reads WebhookSecret, but CloudFront sends ['OriginVerifySecret']")

    def test_api_only_through_cloudfront__short_secret(self):
        t = broken(lambda t: res(t, "OriginVerifySecret")["GenerateSecretString"].__setitem__("PasswordLength", 16))
        self.assertCaught("api_only_through_cloudfront", t, "OriginVerifySecret: at least 32 characters")

    def test_api_only_through_cloudfront__api_url_invites_direct_calls(self):
        t = broken(lambda t: t["Outputs"]["ApiUrl"].__setitem__("Description", "Base URL of the HTTP API (direct)"))
        self.assertCaught("api_only_through_cloudfront", t, "output ApiUrl")

    # deploying twice in one account
    def test_named_resources_unique_per_stack__fixed_schedule_name(self):
        t = broken(lambda t: res(t, "SweeperFunction")["Events"]["EveryMinute"]["Properties"].pop("Name"))
        self.assertCaught("named_resources_unique_per_stack", t, "SweeperFunction/EveryMinute")

    def test_named_resources_unique_per_stack__literal_queue_name(self):
        t = broken(lambda t: res(t, "HighQueue").__setitem__("QueueName", "taskq-high"))
        self.assertCaught("named_resources_unique_per_stack", t, "HighQueue: the name 'taskq-high'")

    def test_stack_name_length_stated__longer_suffix(self):
        t = broken(lambda t: res(t, "StatusCache").__setitem__("ServerlessCacheName", {"Fn::Sub": "${AWS::StackName}-status-cache"}))
        self.assertCaught("stack_name_length_stated", t, "StatusCache's name allows a stack name of 27 characters")

    def test_stack_name_length_stated__not_stated(self):
        t = broken(lambda t: t["Metadata"].pop("taskq"))
        self.assertCaught("stack_name_length_stated", t, "MaxStackNameLength is None")

    def test_vpc_cidr_fits_its_subnets__small_vpc_allowed(self):
        t = broken(lambda t: t["Parameters"]["VpcCidr"].__setitem__("AllowedPattern", r"^(\d{1,3}\.){3}\d{1,3}/(1[6-9]|2[0-4])$"))
        self.assertCaught("vpc_cidr_fits_its_subnets", t, "allows /19, but 4 subnets of /20 need /18")

    def test_availability_zones_chosen__index_only(self):
        t = broken(lambda t: res(t, "PrivateSubnetB").__setitem__("AvailabilityZone", {"Fn::Select": [1, {"Fn::GetAZs": ""}]}))
        self.assertCaught("availability_zones_chosen", t, "PrivateSubnetB: AvailabilityZone")

    def test_contradictions_fail_early__issuer_without_audience(self):
        t = broken(lambda t: t["Rules"].pop("AudienceWithIssuer"))
        self.assertCaught("contradictions_fail_early", t, "no Rule requires JwtAudience")

    def test_contradictions_fail_early__az_list_unchecked(self):
        t = broken(lambda t: t["Rules"].pop("TwoAvailabilityZones"))
        self.assertCaught("contradictions_fail_early", t, "AvailabilityZones")

    def test_stream_failures_recorded__no_destination(self):
        t = broken(lambda t: res(t, "WebhookFunctionFinishedTasks").pop("DestinationConfig"))
        self.assertCaught("stream_failures_recorded", t, "WebhookFunctionFinishedTasks: no on-failure destination")

    def test_stream_failures_recorded__role_cannot_send(self):
        t = broken(lambda t: drop_stmt(t, "StreamFunctionRole", "RecordFailedBatches"))
        self.assertCaught("stream_failures_recorded", t, "StreamFunction's role may not sqs:SendMessage")

    def test_stream_failures_recorded__unwatched(self):
        t = broken(lambda t: t["Resources"].pop("StreamFailuresAlarm"))
        self.assertCaught("stream_failures_recorded", t, "StreamFailureQueue: no alarm")

    def test_scheduled_functions_never_overlap__no_reservation(self):
        t = broken(lambda t: res(t, "SweeperFunction").pop("ReservedConcurrentExecutions"))
        self.assertCaught("scheduled_functions_never_overlap", t, "SweeperFunction: runs on a schedule")

    def test_alarms_cover_the_failure_modes__dlq_counts_only_visible(self):
        def mutate(t):
            metrics = res(t, "HighDeadLettersAlarm")["Metrics"]
            metrics[:] = [m for m in metrics if m["Id"] != "inflight"]
            metrics[-1]["Expression"] = "visible"

        self.assertCaught("alarms_cover_the_failure_modes", broken(mutate), "HighDeadLetterQueue: no alarm on dead-letter depth")

    def test_alarms_cover_the_failure_modes__no_iterator_age(self):
        t = broken(lambda t: t["Resources"].pop("WebhookIteratorAgeAlarm"))
        self.assertCaught("alarms_cover_the_failure_modes", t, "WebhookFunction: reads a stream and has no IteratorAge alarm")

    def test_alarms_cover_the_failure_modes__no_cache_throttles(self):
        t = broken(lambda t: t["Resources"].pop("CacheThrottlesAlarm"))
        self.assertCaught("alarms_cover_the_failure_modes", t, "StatusCache: no ThrottledCmds alarm")

    def test_alarms_cover_the_failure_modes__no_spillover(self):
        t = broken(lambda t: t["Resources"].pop("ApiSpilloverAlarm"))
        self.assertCaught("alarms_cover_the_failure_modes", t, "ApiFunction: provisioned concurrency without a spillover alarm")

    # observability
    def test_alarms_cover_the_failure_modes__no_dlq_alarm(self):
        t = broken(lambda t: t["Resources"].pop("NormalDeadLettersAlarm"))
        self.assertCaught("alarms_cover_the_failure_modes", t, "NormalDeadLetterQueue: no alarm on dead-letter depth")

    def test_alarms_cover_the_failure_modes__no_age_alarm(self):
        t = broken(lambda t: t["Resources"].pop("LowQueueAgeAlarm"))
        self.assertCaught("alarms_cover_the_failure_modes", t, "LowQueue: no oldest-message-age alarm")

    def test_alarms_cover_the_failure_modes__no_throttle_alarm(self):
        t = broken(lambda t: t["Resources"].pop("WorkerThrottlesAlarm"))
        self.assertCaught("alarms_cover_the_failure_modes", t, "WorkerFunction: no Throttles alarm")

    def test_alarms_cover_the_failure_modes__no_5xx_alarm(self):
        t = broken(lambda t: t["Resources"].pop("Api5xxAlarm"))
        self.assertCaught("alarms_cover_the_failure_modes", t, "HttpApi: no 5xx alarm")

    def test_alarms_cover_the_failure_modes__silent_alarm(self):
        t = broken(lambda t: res(t, "TableWriteThrottlesAlarm").pop("AlarmActions"))
        self.assertCaught("alarms_cover_the_failure_modes", t, "TableWriteThrottlesAlarm: AlarmActions")

    def test_alarms_cover_the_failure_modes__new_function_unwatched(self):
        def add(t):
            t["Resources"]["ExtraFunction"] = copy.deepcopy(t["Resources"]["SweeperFunction"])

        self.assertCaught("alarms_cover_the_failure_modes", broken(add), "ExtraFunction: no Errors alarm")

    # IAM
    def test_least_privilege__star_resource(self):
        t = broken(lambda t: stmt(t, "WorkerFunctionRole", "TaskStateChanges").__setitem__("Resource", "*"))
        self.assertCaught("least_privilege", t, "WorkerFunctionRole/TaskStateChanges: Resource '*' for ['dynamodb:UpdateItem', 'dynamodb:GetItem']")

    def test_least_privilege__star_beside_an_allowed_action(self):
        t = broken(lambda t: stmt(t, "SweeperFunctionRole", "Tracing")["Action"].append("sqs:SendMessage"))
        self.assertCaught("least_privilege", t, "SweeperFunctionRole/Tracing: Resource '*' for ['sqs:SendMessage']")

    def test_least_privilege__wildcard_action(self):
        t = broken(lambda t: stmt(t, "SweeperFunctionRole", "Resend").__setitem__("Action", "sqs:*"))
        self.assertCaught("least_privilege", t, "SweeperFunctionRole/Resend: wildcard action")

    def test_least_privilege__star_in_conditional_statement(self):
        t = broken(lambda t: stmt(t, "ApiFunctionRole", "DescribeCache").__setitem__("Resource", "*"))
        self.assertCaught("least_privilege", t, "ApiFunctionRole/DescribeCache: Resource '*'")

    def test_least_privilege__eni_rights_without_vpc_condition(self):
        t = broken(lambda t: stmt(t, "StreamFunctionRole", "VpcNetworkInterfaces").pop("Condition"))
        self.assertCaught("least_privilege", t, "StreamFunctionRole/VpcNetworkInterfaces: ['ec2:CreateNetworkInterface'")

    def test_least_privilege__full_access_policy(self):
        t = broken(lambda t: res(t, "WorkerFunctionRole").__setitem__("ManagedPolicyArns", ["arn:aws:iam::aws:policy/AmazonDynamoDBFullAccess"]))
        self.assertCaught("least_privilege", t, "WorkerFunctionRole: managed policy arn:aws:iam::aws:policy/AmazonDynamoDBFullAccess")

    def test_least_privilege__generated_role(self):
        t = broken(lambda t: res(t, "SweeperFunction").pop("Role"))
        self.assertCaught("least_privilege", t, "SweeperFunction: needs Role")

    def test_least_privilege__sam_sqs_event(self):
        def mutate(t):
            res(t, "WorkerFunction")["Events"] = {"Low": {"Type": "SQS", "Properties": {"Queue": {"Fn::GetAtt": ["LowQueue", "Arn"]}}}}

        self.assertCaught("least_privilege", broken(mutate), "WorkerFunction.Low: a SAM SQS event (SAM attaches AWSLambdaSQSQueueExecutionRole")

    def test_least_privilege__sam_dynamodb_event(self):
        def mutate(t):
            res(t, "WebhookFunction")["Events"] = {
                "FinishedTasks": {
                    "Type": "DynamoDB",
                    "Properties": {"Stream": {"Fn::GetAtt": ["TasksTable", "StreamArn"]}, "StartingPosition": "LATEST"},
                }
            }

        self.assertCaught("least_privilege", broken(mutate), "AWSLambdaDynamoDBExecutionRole")

    def test_least_privilege__sam_policies(self):
        t = broken(lambda t: res(t, "SweeperFunction").__setitem__("Policies", ["AWSLambdaBasicExecutionRole"]))
        self.assertCaught("least_privilege", t, "SweeperFunction: Policies")

    # closed by default
    def test_cognito_closed_by_default__self_sign_up_by_default(self):
        t = broken(lambda t: t["Parameters"]["AllowSelfSignUp"].__setitem__("Default", "true"))
        self.assertCaught("cognito_closed_by_default", t, "UserPool: self sign-up must be off by default")

    def test_cognito_closed_by_default__sign_up_config_missing(self):
        t = broken(lambda t: res(t, "UserPool").pop("AdminCreateUserConfig"))
        self.assertCaught("cognito_closed_by_default", t, "UserPool: self sign-up must be off by default")

    def test_cognito_closed_by_default__no_deletion_protection(self):
        t = broken(lambda t: res(t, "UserPool").pop("DeletionProtection"))
        self.assertCaught("cognito_closed_by_default", t, "UserPool: DeletionProtection")

    def test_cognito_closed_by_default__deletion_protection_off_by_default(self):
        t = broken(lambda t: t["Parameters"]["UserPoolDeletionProtection"].__setitem__("Default", "INACTIVE"))
        self.assertCaught("cognito_closed_by_default", t, "UserPool: DeletionProtection")

    def test_cognito_closed_by_default__default_role_submits_high(self):
        t = broken(lambda t: t["Parameters"]["MaxPriority"].__setitem__("Default", '{"default":"high"}'))
        self.assertCaught("cognito_closed_by_default", t, "ApiFunction: TASKQ_MAX_PRIORITY's default lets callers without a role submit 'high'")

    def test_cognito_closed_by_default__no_default_entry(self):
        t = broken(lambda t: t["Parameters"]["MaxPriority"].__setitem__("Default", '{"admin":"high"}'))
        self.assertCaught("cognito_closed_by_default", t, "submit None")

    def test_secrets_not_in_environment__webhook_secret_in_env(self):
        t = broken(
            lambda t: env_of(t, "WebhookFunction").__setitem__(
                "TASKQ_WEBHOOK_SECRET", {"Fn::Sub": "{{resolve:secretsmanager:${WebhookSecret}:SecretString}}"}
            )
        )
        self.assertCaught("secrets_not_in_environment", t, "WebhookFunction: TASKQ_WEBHOOK_SECRET puts the signing secret")

    def test_secrets_not_in_environment__secret_resolved_into_env(self):
        t = broken(
            lambda t: env_of(t, "SweeperFunction").__setitem__(
                "TASKQ_SIGNING_KEY", {"Fn::Sub": "{{resolve:secretsmanager:${WebhookSecret}:SecretString}}"}
            )
        )
        self.assertCaught("secrets_not_in_environment", t, "SweeperFunction: TASKQ_SIGNING_KEY resolves a secret")

    def test_secrets_not_in_environment__arn_missing(self):
        t = broken(lambda t: env_of(t, "WebhookFunction").pop("TASKQ_WEBHOOK_SECRET_ARN"))
        self.assertCaught("secrets_not_in_environment", t, "TASKQ_WEBHOOK_SECRET_ARN must name")

    def test_secrets_not_in_environment__secret_not_readable(self):
        t = broken(lambda t: drop_stmt(t, "WebhookFunctionRole", "ReadSigningSecret"))
        self.assertCaught("secrets_not_in_environment", t, "names WebhookSecret, but its role may not read it")

    def test_secrets_not_in_environment__reads_any_secret(self):
        t = broken(lambda t: stmt(t, "WebhookFunctionRole", "ReadSigningSecret").__setitem__("Resource", "*"))
        self.assertCaught("secrets_not_in_environment", t, "WebhookFunction/ReadSigningSecret: Secrets Manager access only")

    def test_secrets_not_in_environment__reads_the_origin_secret(self):
        t = broken(lambda t: stmt(t, "WebhookFunctionRole", "ReadSigningSecret").__setitem__("Resource", [{"Ref": "WebhookSecret"}, {"Ref": "OriginVerifySecret"}]))
        self.assertCaught("secrets_not_in_environment", t, "not {'Ref': 'OriginVerifySecret'}")

    # API, parameters, outputs
    def test_api_auth_throttling_logs__public_route(self):
        t = broken(
            lambda t: res(t, "ApiFunction")["Events"]["Tasks"]["Properties"].__setitem__("Auth", {"Authorizer": "NONE"})
        )
        self.assertCaught("api_auth_throttling_logs", t, "/v1/{proxy+} must not be public")

    def test_api_auth_throttling_logs__no_access_logs(self):
        t = broken(lambda t: res(t, "HttpApi").pop("AccessLogSettings"))
        self.assertCaught("api_auth_throttling_logs", t, "AccessLogSettings")

    def test_api_auth_throttling_logs__no_throttling(self):
        t = broken(lambda t: res(t, "HttpApi").pop("DefaultRouteSettings"))
        self.assertCaught("api_auth_throttling_logs", t, "stage throttling")

    def test_parameters_documented__no_description(self):
        t = broken(lambda t: t["Parameters"]["RetryBaseMs"].pop("Description"))
        self.assertCaught("parameters_documented", t, "RetryBaseMs: no Description")

    def test_outputs_present__missing(self):
        t = broken(lambda t: t["Outputs"].pop("CloudFrontUrl"))
        self.assertCaught("outputs_present", t, "CloudFrontUrl")


if __name__ == "__main__":
    unittest.main()
