"""The policy rules hold for template.yaml, and each one catches a template broken on purpose.

Run: .tools/venv/bin/python -m unittest discover -s infra/policy -v   (scripts/test does)
"""

from __future__ import annotations

import copy
import unittest

import rules

TEMPLATE = rules.plain(rules.load())


def broken(mutate) -> dict:
    t = copy.deepcopy(TEMPLATE)
    mutate(t)
    return t


def res(t: dict, name: str) -> dict:
    return t["Resources"][name]["Properties"]


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
        t = broken(lambda t: res(t, "WorkerFunction")["Events"]["Low"]["Properties"].pop("FunctionResponseTypes"))
        self.assertCaught("worker_sqs_events", t, "WorkerFunction.Low: FunctionResponseTypes")

    def test_worker_sqs_events__hard_coded_concurrency(self):
        t = broken(lambda t: res(t, "WorkerFunction")["Events"]["High"]["Properties"].__setitem__("ScalingConfig", {"MaximumConcurrency": 5}))
        self.assertCaught("worker_sqs_events", t, "WorkerFunction.High: ScalingConfig.MaximumConcurrency")

    def test_worker_sqs_events__queue_without_worker(self):
        t = broken(lambda t: res(t, "WorkerFunction")["Events"].pop("Normal"))
        self.assertCaught("worker_sqs_events", t, "NormalQueue")

    def test_worker_sqs_events__inverted_weights(self):
        t = broken(lambda t: t["Parameters"]["LowMaxConcurrency"].__setitem__("Default", 50))
        self.assertCaught("worker_sqs_events", t, "below LowQueue's")

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

    def test_cloudfront_https_and_origins__no_rate_rule(self):
        t = broken(lambda t: res(t, "WebAcl").__setitem__("Rules", []))
        self.assertCaught("cloudfront_https_and_origins", t, "rate-based rule")

    def test_cloudfront_https_and_origins__no_hsts(self):
        t = broken(lambda t: res(t, "SecurityHeaders")["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"].pop("StrictTransportSecurity"))
        self.assertCaught("cloudfront_https_and_origins", t, "StrictTransportSecurity")

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
        def widen(t):
            res(t, "WorkerFunction")["Policies"][0]["Statement"][0]["Resource"] = "*"

        self.assertCaught("least_privilege", broken(widen), "WorkerFunction/TaskStateChanges: Resource '*'")

    def test_least_privilege__wildcard_action(self):
        def widen(t):
            res(t, "SweeperFunction")["Policies"][0]["Statement"][2]["Action"] = "sqs:*"

        self.assertCaught("least_privilege", broken(widen), "SweeperFunction/Resend: wildcard action")

    def test_least_privilege__star_in_conditional_statement(self):
        def widen(t):
            stmts = res(t, "ApiFunction")["Policies"][0]["Statement"]
            conditional = next(s for s in stmts if "Fn::If" in s)
            conditional["Fn::If"][1]["Resource"] = "*"

        self.assertCaught("least_privilege", broken(widen), "ApiFunction/DescribeCache: Resource '*'")

    def test_least_privilege__full_access_policy(self):
        t = broken(lambda t: res(t, "WorkerFunction")["Policies"].append("AmazonDynamoDBFullAccess"))
        self.assertCaught("least_privilege", t, "AmazonDynamoDBFullAccess")

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
