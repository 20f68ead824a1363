//! The Terraform in `terraform/`, parsed (providers cannot be downloaded here, so no
//! `terraform validate`): the wiring that matters for relay, asserted on the HCL itself. Names
//! must be the ones relay derives from `--stack`, and the outputs what `--stack-outputs` reads.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use hcl::{Block, Body};
use relay_aws::Stack;

/// The stack's Lambda functions, as `lambdas/` holds them.
const FUNCTIONS: [&str; 4] = ["authorizer", "receiver", "forwarder", "dispatcher"];

fn terraform_dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../terraform")
        .join(rel)
}

/// Every top-level block of every `.tf` file in `dir`.
fn load(dir: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(terraform_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tf"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .tf files in {dir}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let body = hcl::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        blocks.extend(body.into_blocks());
    }
    blocks
}

fn labels(block: &Block) -> Vec<&str> {
    block.labels().iter().map(|l| l.as_str()).collect()
}

/// `resource "<ty>" "<name>"` (or `data`) blocks: (name, body).
fn of_type<'a>(blocks: &'a [Block], kind: &str, ty: &str) -> Vec<(&'a str, &'a Body)> {
    blocks
        .iter()
        .filter(|b| b.identifier() == kind && labels(b).first() == Some(&ty))
        .map(|b| (b.labels()[1].as_str(), b.body()))
        .collect()
}

fn resource<'a>(blocks: &'a [Block], ty: &str, name: &str) -> &'a Body {
    of_type(blocks, "resource", ty)
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("resource {ty}.{name} is missing"))
        .1
}

/// An attribute's expression as HCL text, on one line (`["arm64"]`).
fn attr(body: &Body, key: &str) -> Option<String> {
    body.attributes().find(|a| a.key() == key).map(|a| {
        hcl::format::to_string(a.expr())
            .unwrap()
            .lines()
            .map(str::trim)
            .collect()
    })
}

fn nested<'a>(body: &'a Body, ident: &str) -> Option<&'a Body> {
    body.blocks()
        .find(|b| b.identifier() == ident)
        .map(Block::body)
}

/// A whole body as HCL text, for "mentions" checks.
fn text(body: &Body) -> String {
    hcl::format::to_string(body).unwrap()
}

fn locals(blocks: &[Block], key: &str) -> String {
    blocks
        .iter()
        .filter(|b| b.identifier() == "locals")
        .find_map(|b| attr(b.body(), key))
        .unwrap_or_else(|| panic!("local.{key} is missing"))
}

#[test]
fn names_are_the_ones_relay_derives_from_the_stack() {
    let module = load("modules/relay");
    let names = locals(&module, "names");
    // `Stack::named` applied to Terraform's own interpolation gives the same templates.
    let stack = Stack::named("${var.stack}");
    for (key, name) in [
        ("events_table", &stack.events_table),
        ("control_table", &stack.control_table),
        ("queue", &stack.queue),
        ("dlq", &stack.dlq),
        ("archive_bucket", &stack.archive_bucket),
    ] {
        assert!(
            names.contains(&format!("{key} = \"{name}\"")),
            "local.names.{key} must be \"{name}\": {names}"
        );
    }
    let wired = [
        ("aws_dynamodb_table", "events", "local.names.events_table"),
        ("aws_dynamodb_table", "control", "local.names.control_table"),
        ("aws_sqs_queue", "work", "local.names.queue"),
        ("aws_sqs_queue", "dlq", "local.names.dlq"),
    ];
    for (ty, name, expected) in wired {
        assert_eq!(
            attr(resource(&module, ty, name), "name").as_deref(),
            Some(expected)
        );
    }
    assert_eq!(
        attr(resource(&module, "aws_s3_bucket", "archive"), "bucket").as_deref(),
        Some("local.names.archive_bucket")
    );
}

#[test]
fn outputs_are_what_stack_outputs_reads_in_the_module_and_every_environment() {
    // What `Stack::from_outputs` reads, proven by reading a file with exactly these keys.
    let keys = [
        "events_table",
        "control_table",
        "queue_name",
        "dlq_name",
        "archive_bucket",
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outputs.json");
    let json: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| {
            (
                (*k).to_owned(),
                serde_json::json!({ "value": format!("x-{k}") }),
            )
        })
        .collect();
    std::fs::write(&file, serde_json::Value::Object(json).to_string()).unwrap();
    let stack = Stack::from_outputs(&file).unwrap();
    assert_eq!(stack.queue, "x-queue_name");

    for dir in ["modules/relay", "environments/dev", "environments/prod"] {
        let blocks = load(dir);
        let outputs: Vec<&str> = blocks
            .iter()
            .filter(|b| b.identifier() == "output")
            .map(|b| b.labels()[0].as_str())
            .collect();
        for key in keys {
            assert!(outputs.contains(&key), "{dir} has no output {key}");
        }
    }
}

#[test]
fn every_environment_keeps_state_in_s3_with_locking_and_uses_the_module() {
    for env in ["dev", "prod"] {
        let blocks = load(&format!("environments/{env}"));
        let terraform = blocks
            .iter()
            .find(|b| b.identifier() == "terraform")
            .unwrap()
            .body();
        let backend = terraform
            .blocks()
            .find(|b| b.identifier() == "backend")
            .unwrap();
        assert_eq!(labels(backend), ["s3"], "{env}");
        assert_eq!(
            attr(backend.body(), "use_lockfile").as_deref(),
            Some("true")
        );
        assert_eq!(attr(backend.body(), "encrypt").as_deref(), Some("true"));
        let module = blocks.iter().find(|b| b.identifier() == "module").unwrap();
        assert_eq!(
            attr(module.body(), "source").as_deref(),
            Some("\"../../modules/relay\"")
        );
    }
}

#[test]
fn every_queue_has_encryption_and_a_dead_letter_path() {
    let module = load("modules/relay");
    let queues = of_type(&module, "resource", "aws_sqs_queue");
    assert!(queues.len() >= 2);
    let all = module
        .iter()
        .map(|b| text(b.body()))
        .collect::<Vec<_>>()
        .join("\n");
    for (name, body) in &queues {
        assert!(
            attr(body, "kms_master_key_id").is_some()
                || attr(body, "sqs_managed_sse_enabled").is_some(),
            "queue {name} is not encrypted"
        );
        // A queue either sends its failures somewhere, or is itself where failures go.
        let has_dlq =
            attr(body, "redrive_policy").is_some_and(|p| p.contains("deadLetterTargetArn"));
        let is_dlq = all.contains(&format!("deadLetterTargetArn = aws_sqs_queue.{name}.arn"))
            || all.contains(&format!("destination_arn = aws_sqs_queue.{name}.arn"));
        assert!(has_dlq || is_dlq, "queue {name} has no dead-letter path");
    }
    let work = resource(&module, "aws_sqs_queue", "work");
    assert_eq!(
        attr(work, "visibility_timeout_seconds").as_deref(),
        Some("6 * var.dispatcher_timeout"),
        "visibility ≥ 6 × the dispatcher's timeout"
    );
    let dlq = resource(&module, "aws_sqs_queue", "dlq");
    assert_eq!(
        attr(dlq, "message_retention_seconds").as_deref(),
        Some("14 * 24 * 3600")
    );
}

#[test]
fn every_function_is_traced_on_arm64_with_its_own_role_and_no_wildcard_actions() {
    let module = load("modules/relay");
    let functions = of_type(&module, "resource", "aws_lambda_function");
    assert_eq!(
        functions.len(),
        1,
        "one for_each resource for the three functions"
    );
    let body = functions[0].1;
    assert_eq!(
        attr(nested(body, "tracing_config").unwrap(), "mode").as_deref(),
        Some("\"Active\"")
    );
    assert_eq!(attr(body, "architectures").as_deref(), Some("[\"arm64\"]"));
    assert_eq!(
        attr(body, "role").as_deref(),
        Some("aws_iam_role.function[each.key].arn")
    );
    let names = locals(&module, "functions");
    for f in FUNCTIONS {
        assert!(names.contains(f), "{names}");
    }
    assert_eq!(
        attr(body, "reserved_concurrent_executions").as_deref(),
        Some("lookup(local.reserved_concurrency, each.key, -1)")
    );
    let reserved: String = locals(&module, "reserved_concurrency")
        .split_whitespace()
        .collect();
    for capped in [
        "authorizer=var.authorizer_reserved_concurrency",
        "receiver=var.receiver_reserved_concurrency",
    ] {
        assert!(
            reserved.contains(capped),
            "the edge's functions are capped: {reserved}"
        );
    }
    // Every statement of the functions' policies names its actions: no `*` in any of them.
    let documents = of_type(&module, "data", "aws_iam_policy_document");
    let mut checked = 0;
    for (name, doc) in documents.iter().filter(|(n, _)| *n != "kms") {
        for statement in doc.blocks().filter(|b| b.identifier() == "statement") {
            let actions = attr(statement.body(), "actions").unwrap();
            assert!(
                !actions.contains('*'),
                "policy {name} has a wildcard action: {actions}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} statements");
    let policies = locals(&module, "policies");
    for f in FUNCTIONS {
        assert!(
            policies.contains(&format!("data.aws_iam_policy_document.{f}.json")),
            "{policies}"
        );
    }
}

#[test]
fn the_mappings_report_item_failures_cap_concurrency_and_filter_inserts() {
    let module = load("modules/relay");
    let work = resource(&module, "aws_lambda_event_source_mapping", "work");
    assert!(
        attr(work, "event_source_arn")
            .unwrap()
            .contains("aws_sqs_queue.work")
    );
    assert_eq!(
        attr(work, "function_response_types").as_deref(),
        Some("[\"ReportBatchItemFailures\"]")
    );
    assert_eq!(
        attr(
            nested(work, "scaling_config").unwrap(),
            "maximum_concurrency"
        )
        .as_deref(),
        Some("var.dispatcher_max_concurrency")
    );
    let outbox = resource(&module, "aws_lambda_event_source_mapping", "outbox");
    assert!(
        attr(outbox, "event_source_arn")
            .unwrap()
            .contains("stream_arn")
    );
    assert_eq!(
        attr(outbox, "bisect_batch_on_function_error").as_deref(),
        Some("true")
    );
    assert!(text(outbox).contains("INSERT"), "an INSERT filter");
    let on_failure = nested(nested(outbox, "destination_config").unwrap(), "on_failure");
    assert!(on_failure.is_some(), "an on-failure destination");
}

#[test]
fn every_data_store_is_encrypted_and_the_bucket_private() {
    let module = load("modules/relay");
    for (name, table) in of_type(&module, "resource", "aws_dynamodb_table") {
        let sse = nested(table, "server_side_encryption").unwrap();
        assert_eq!(attr(sse, "enabled").as_deref(), Some("true"), "{name}");
        assert!(attr(sse, "kms_key_arn").is_some(), "{name}: a customer key");
        let pitr = nested(table, "point_in_time_recovery").unwrap();
        assert_eq!(attr(pitr, "enabled").as_deref(), Some("true"), "{name}");
    }
    let events = resource(&module, "aws_dynamodb_table", "events");
    assert_eq!(
        attr(events, "stream_view_type").as_deref(),
        Some("\"NEW_IMAGE\"")
    );
    assert_eq!(
        attr(nested(events, "ttl").unwrap(), "attribute_name").as_deref(),
        Some("\"expires_at\""),
        "the attribute relay writes"
    );
    let sse = resource(
        &module,
        "aws_s3_bucket_server_side_encryption_configuration",
        "archive",
    );
    assert!(text(sse).contains("aws:kms"));
    let public = resource(&module, "aws_s3_bucket_public_access_block", "archive");
    for key in [
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ] {
        assert_eq!(attr(public, key).as_deref(), Some("true"), "{key}");
    }
    assert!(!of_type(&module, "resource", "aws_s3_bucket_lifecycle_configuration").is_empty());
    for (name, secret) in of_type(&module, "resource", "aws_secretsmanager_secret") {
        assert!(attr(secret, "kms_key_id").is_some(), "secret {name}");
    }
    for (name, topic) in of_type(&module, "resource", "aws_sns_topic") {
        assert!(attr(topic, "kms_master_key_id").is_some(), "topic {name}");
    }
    for (name, group) in of_type(&module, "resource", "aws_cloudwatch_log_group") {
        assert!(attr(group, "kms_key_id").is_some(), "log group {name}");
        assert!(
            attr(group, "retention_in_days").is_some(),
            "log group {name}"
        );
    }
}

#[test]
fn the_api_stage_is_traced_and_logged_and_the_alarms_cover_the_dlq_and_queue_age() {
    let module = load("modules/relay");
    let stage = resource(&module, "aws_api_gateway_stage", "live");
    assert_eq!(attr(stage, "xray_tracing_enabled").as_deref(), Some("true"));
    let logs = nested(stage, "access_log_settings").unwrap();
    assert!(
        attr(logs, "destination_arn")
            .unwrap()
            .contains("aws_cloudwatch_log_group.access")
    );
    let api = resource(&module, "aws_api_gateway_rest_api", "ingest");
    assert!(text(api).contains("REGIONAL"));
    let sampling = resource(&module, "aws_xray_sampling_rule", "events");
    assert_eq!(
        attr(sampling, "fixed_rate").as_deref(),
        Some("var.xray_sampling_rate")
    );

    let alarms = locals(&module, "alarms");
    let dlq = alarms.split("dlq-not-empty").nth(1).unwrap();
    assert!(
        dlq.contains("ApproximateNumberOfMessagesVisible")
            && dlq.contains("aws_sqs_queue.dlq.name")
    );
    let age = alarms.split("queue-age").nth(1).unwrap();
    assert!(
        age.contains("ApproximateAgeOfOldestMessage") && age.contains("aws_sqs_queue.work.name")
    );
    for alarm in ["stream-iterator-age", "api-5xx", "-errors", "-throttles"] {
        assert!(alarms.contains(alarm), "no {alarm} alarm");
    }
    let alarm = resource(&module, "aws_cloudwatch_metric_alarm", "relay");
    assert_eq!(attr(alarm, "for_each").as_deref(), Some("local.alarms"));
    assert_eq!(
        attr(alarm, "alarm_actions").as_deref(),
        Some("local.alarm_actions")
    );
    assert!(locals(&module, "alarm_actions").contains("aws_sns_topic.alarms.arn"));
}

/// Nothing anonymous reaches a Lambda: every method but `GET /health` goes through the API key
/// authorizer, and `GET /health` is answered by API Gateway itself (a MOCK).
#[test]
fn no_method_is_left_open_and_the_key_is_checked_before_any_function_runs() {
    let module = load("modules/relay");
    let methods = of_type(&module, "resource", "aws_api_gateway_method");
    assert!(methods.len() >= 2, "{} methods", methods.len());
    for (name, method) in &methods {
        let authorization = attr(method, "authorization").unwrap();
        if *name == "health" {
            assert_eq!(authorization, "\"NONE\"");
            assert_eq!(attr(method, "http_method").as_deref(), Some("\"GET\""));
            let integration = resource(&module, "aws_api_gateway_integration", "health");
            assert_eq!(attr(integration, "type").as_deref(), Some("\"MOCK\""));
        } else {
            assert_eq!(authorization, "\"CUSTOM\"", "method {name} is open");
            assert_eq!(
                attr(method, "authorizer_id").as_deref(),
                Some("aws_api_gateway_authorizer.api_key.id"),
                "method {name}"
            );
        }
    }
    // Every integration that calls a function sits behind an authorized method.
    for (name, integration) in of_type(&module, "resource", "aws_api_gateway_integration") {
        if attr(integration, "type").as_deref() == Some("\"AWS_PROXY\"") {
            let method = resource(&module, "aws_api_gateway_method", name);
            assert_eq!(attr(method, "authorization").as_deref(), Some("\"CUSTOM\""));
        }
    }
    let authorizer = resource(&module, "aws_api_gateway_authorizer", "api_key");
    assert_eq!(attr(authorizer, "type").as_deref(), Some("\"REQUEST\""));
    assert_eq!(
        attr(authorizer, "identity_source").as_deref(),
        Some("\"method.request.header.x-api-key\"")
    );
    assert_eq!(
        attr(authorizer, "authorizer_result_ttl_in_seconds").as_deref(),
        Some("var.authorizer_cache_seconds")
    );
    assert!(
        attr(authorizer, "authorizer_uri")
            .unwrap()
            .contains("aws_lambda_alias.live[\"authorizer\"]")
    );
    // API Gateway may call the authorizer, from this API's authorizer only.
    let permission = resource(&module, "aws_lambda_permission", "authorizer");
    assert!(
        attr(permission, "source_arn")
            .unwrap()
            .contains("/authorizers/")
    );
    // The authorizer reads the API keys and nothing else.
    let policy = of_type(&module, "data", "aws_iam_policy_document")
        .into_iter()
        .find(|(name, _)| *name == "authorizer")
        .map(|(_, body)| text(body))
        .expect("the authorizer's policy");
    assert!(policy.contains("secretsmanager:GetSecretValue"), "{policy}");
    assert!(
        policy.contains("aws_secretsmanager_secret.api_keys.arn"),
        "{policy}"
    );
    assert!(
        !policy.contains("dynamodb") && !policy.contains("sqs"),
        "{policy}"
    );
}

/// API Gateway's own refusals answer in the contract's shape: a missing or wrong key is `401
/// {"error": "unauthorized", …}`, a throttled or WAF-blocked request `429`.
#[test]
fn api_gateway_refusals_keep_the_contracts_json() {
    let module = load("modules/relay");
    let responses = locals(&module, "gateway_responses");
    // Whitespace and commas aside, whichever way the expression is printed.
    let compact: String = responses
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ',')
        .collect();
    for (kind, status, code) in [
        ("UNAUTHORIZED", "401", "unauthorized"),
        ("ACCESS_DENIED", "401", "unauthorized"),
        ("THROTTLED", "429", "rate_limited"),
        ("WAF_FILTERED", "429", "rate_limited"),
        ("MISSING_AUTHENTICATION_TOKEN", "404", "not_found"),
    ] {
        let entry = format!("{kind}={{status={status}error=\"{code}\"");
        assert!(
            compact.contains(&entry),
            "{kind} is not {status} {code}: {responses}"
        );
    }
    for default in ["DEFAULT_4XX", "DEFAULT_5XX"] {
        assert!(
            compact.contains(&format!("{default}={{")),
            "{default} has no JSON body"
        );
    }
    let response = resource(&module, "aws_api_gateway_gateway_response", "contract");
    assert_eq!(
        attr(response, "for_each").as_deref(),
        Some("local.gateway_responses")
    );
    let templates = attr(response, "response_templates").unwrap();
    assert!(
        templates.contains("application/json") && templates.contains("error = each.value.error"),
        "{templates}"
    );
}

/// A WAF web ACL with a rate limit per source IP and one per API key, attached to the stage,
/// logging without the key; off by default, on in prod.
#[test]
fn waf_limits_each_source_ip_and_each_key_and_is_on_in_prod() {
    let module = load("modules/relay");
    let acl = resource(&module, "aws_wafv2_web_acl", "ingest");
    assert_eq!(attr(acl, "scope").as_deref(), Some("\"REGIONAL\""));
    let rules: Vec<&Body> = acl
        .blocks()
        .filter(|b| b.identifier() == "rule")
        .map(Block::body)
        .collect();
    let rate = |key: &str| {
        rules.iter().find_map(|rule| {
            let statement = nested(rule, "statement")?;
            let rate = nested(statement, "rate_based_statement")?;
            (attr(rate, "aggregate_key_type").as_deref() == Some(key)).then(|| text(rate))
        })
    };
    let per_ip = rate("\"IP\"").expect("a rate rule per source IP");
    assert!(per_ip.contains("var.waf_requests_per_ip"), "{per_ip}");
    let per_key = rate("\"CUSTOM_KEYS\"").expect("a rate rule per API key");
    assert!(
        per_key.contains("var.waf_requests_per_key") && per_key.contains("x-api-key"),
        "{per_key}"
    );
    for rule in &rules {
        let action = text(rule);
        if action.contains("rate_based_statement") {
            assert!(action.contains("response_code = 429"), "{action}");
        }
    }
    let association = resource(&module, "aws_wafv2_web_acl_association", "stage");
    assert_eq!(
        attr(association, "resource_arn").as_deref(),
        Some("aws_api_gateway_stage.live.arn")
    );
    let logging = text(resource(
        &module,
        "aws_wafv2_web_acl_logging_configuration",
        "ingest",
    ));
    assert!(
        logging.contains("redacted_fields") && logging.contains("x-api-key"),
        "{logging}"
    );
    for (ty, name) in [
        ("aws_wafv2_web_acl", "ingest"),
        ("aws_wafv2_web_acl_association", "stage"),
    ] {
        assert_eq!(
            attr(resource(&module, ty, name), "count").as_deref(),
            Some("var.waf_enabled ? 1 : 0")
        );
    }
    let prod = load("environments/prod");
    let relay = prod
        .iter()
        .find(|b| b.identifier() == "module")
        .expect("prod calls the module");
    assert_eq!(attr(relay.body(), "waf_enabled").as_deref(), Some("true"));
}

/// The pipeline's roles: each trusts one GitHub environment of one repository, exactly (no
/// pattern, so no branch, pull request or fork), the plan roles read and never write, and
/// neither reads data.
#[test]
fn each_deploy_role_trusts_one_github_environment_and_the_plan_role_only_reads() {
    let module = load("modules/deploy-roles");
    let trust = of_type(&module, "data", "aws_iam_policy_document")
        .into_iter()
        .find(|(name, _)| *name == "trust")
        .map(|(_, body)| body)
        .expect("the trust policy");
    let statement = nested(trust, "statement").unwrap();
    assert_eq!(
        attr(statement, "actions").as_deref(),
        Some("[\"sts:AssumeRoleWithWebIdentity\"]")
    );
    let conditions: Vec<String> = statement
        .blocks()
        .filter(|b| b.identifier() == "condition")
        .map(|b| text(b.body()))
        .collect();
    assert_eq!(conditions.len(), 2, "{conditions:?}");
    assert!(
        conditions
            .iter()
            .all(|c| c.contains("\"StringEquals\"") && !c.contains("StringLike")),
        "{conditions:?}"
    );
    let subject = conditions
        .iter()
        .find(|c| c.contains(":sub"))
        .expect("a subject condition");
    assert!(
        subject.contains("repo:${var.repository}:environment:${each.value.subject}"),
        "{subject}"
    );
    assert!(!subject.contains('*'), "{subject}");
    assert!(
        conditions
            .iter()
            .any(|c| c.contains(":aud") && c.contains("sts.amazonaws.com"))
    );

    // The roles: `<env>-plan` trusted by the `<env>-plan` environment and read-only,
    // `<env>-deploy` by `<env>` and writing.
    let roles: String = locals(&module, "roles")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ',')
        .collect();
    assert!(
        roles.contains("\"${env}-plan\"=>{env=envstack=stacksubject=\"${env}-plan\"writes=false}"),
        "{roles}"
    );
    assert!(
        roles.contains("\"${env}-deploy\"=>{env=envstack=stacksubject=envwrites=true}"),
        "{roles}"
    );

    let policies = of_type(&module, "data", "aws_iam_policy_document");
    let plan = policies
        .iter()
        .find(|(n, _)| *n == "plan")
        .map(|(_, b)| *b)
        .unwrap();
    let mut actions = Vec::new();
    for statement in plan.blocks().filter(|b| b.identifier() == "statement") {
        let list = attr(statement.body(), "actions").unwrap();
        actions.extend(
            list.trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|a| a.trim().trim_matches('"').to_owned())
                .filter(|a| !a.is_empty()),
        );
    }
    assert!(actions.len() > 20, "{actions:?}");
    for action in &actions {
        let verb = action.split(':').nth(1).unwrap_or_default();
        assert!(
            verb.starts_with("Get")
                || verb.starts_with("Describe")
                || verb.starts_with("List")
                || verb == "GET",
            "the plan role may {action}"
        );
        for data in [
            "GetSecretValue",
            "GetItem",
            "Query",
            "Scan",
            "ReceiveMessage",
            "GetRecords",
        ] {
            assert!(
                !action.ends_with(data),
                "the plan role reads data: {action}"
            );
        }
    }
    // Its one object read is the state, under the environment's key.
    let plan_text = text(plan);
    assert!(
        plan_text.contains("${var.state_bucket}/relay/${each.key}/*"),
        "{plan_text}"
    );
    assert_eq!(plan_text.matches("s3:GetObject").count(), 1, "{plan_text}");

    // The apply role: no wildcard service, nothing outside infrastructure, and objects only in
    // the state bucket; PassRole only of the stack's roles, to Lambda and API Gateway.
    let apply = policies
        .iter()
        .find(|(n, _)| *n == "apply")
        .map(|(_, b)| *b)
        .unwrap();
    for statement in apply.blocks().filter(|b| b.identifier() == "statement") {
        let actions = attr(statement.body(), "actions").unwrap();
        let resources = attr(statement.body(), "resources").unwrap();
        for broad in [
            "\"*\"",
            ":*\"",
            "sts:",
            "organizations:",
            "iam:CreateUser",
            "iam:CreateAccessKey",
            "s3:Get*",
            "s3:Put*",
        ] {
            assert!(
                !actions.contains(broad),
                "the apply role has {broad}: {actions}"
            );
        }
        if actions.contains("s3:GetObject") || actions.contains("s3:PutObject") {
            assert!(
                resources.contains("var.state_bucket"),
                "objects outside the state: {resources}"
            );
        }
    }
    assert!(text(apply).contains("iam:PassedToService"));
    let module_env = load("environments/bootstrap");
    let call = module_env
        .iter()
        .find(|b| b.identifier() == "module")
        .expect("bootstrap calls the module");
    assert_eq!(
        attr(call.body(), "source").as_deref(),
        Some("\"../../modules/deploy-roles\"")
    );
}

/// `target_url` may carry a token: plans show it as `(sensitive value)`.
#[test]
fn the_target_url_is_sensitive_everywhere() {
    for dir in ["modules/relay", "environments/dev", "environments/prod"] {
        let blocks = load(dir);
        let variable = blocks
            .iter()
            .find(|b| b.identifier() == "variable" && labels(b) == ["target_url"])
            .unwrap_or_else(|| panic!("{dir} has no target_url"));
        assert_eq!(
            attr(variable.body(), "sensitive").as_deref(),
            Some("true"),
            "{dir}"
        );
    }
}

/// `require_signatures` gives the receiver its signing secrets (and the right to read them):
/// the same Standard Webhooks check as `relay up --signing-secret`.
#[test]
fn required_signatures_reach_the_receiver_from_their_own_secret() {
    let module = load("modules/relay");
    let secret = resource(&module, "aws_secretsmanager_secret", "signing");
    assert_eq!(
        attr(secret, "count").as_deref(),
        Some("var.require_signatures ? 1 : 0")
    );
    assert!(attr(secret, "name").unwrap().contains("/signing-secrets"));
    let environment: String = locals(&module, "environment").split_whitespace().collect();
    assert!(
        environment.contains(
            "RELAY_SIGNING_SECRET_REF=\"secretsmanager:${aws_secretsmanager_secret.signing[0].name}\""
        ),
        "{environment}"
    );
    let receiver = of_type(&module, "data", "aws_iam_policy_document")
        .into_iter()
        .find(|(name, _)| *name == "receiver")
        .map(|(_, body)| text(body))
        .unwrap();
    assert!(
        receiver.contains("aws_secretsmanager_secret.signing[*].arn"),
        "{receiver}"
    );
}

/// `sign_target_requests` gives the dispatcher its target signing secret (and only it the right
/// to read it): the same signatures as `relay up --target-signing-secret`.
#[test]
fn the_targets_credentials_reach_the_dispatcher_alone_from_their_own_secrets() {
    let module = load("modules/relay");
    let environment: String = locals(&module, "environment").split_whitespace().collect();
    let policies = of_type(&module, "data", "aws_iam_policy_document");
    for (resource_name, count, name, variable) in [
        (
            "target_signing",
            "var.sign_target_requests ? 1 : 0",
            "/target-signing-secret",
            "RELAY_TARGET_SIGNING_SECRET_REF",
        ),
        (
            "target_oauth",
            "var.target_oauth_token_url != \"\" ? 1 : 0",
            "/target-oauth-client-secret",
            "RELAY_TARGET_OAUTH_CLIENT_SECRET_REF",
        ),
        (
            "target_client_certificate",
            "var.target_mtls ? 1 : 0",
            "/target-client-certificate",
            "RELAY_TARGET_CLIENT_CERT",
        ),
        (
            "target_ca",
            "var.target_private_ca ? 1 : 0",
            "/target-ca",
            "RELAY_TARGET_CA",
        ),
    ] {
        let secret = resource(&module, "aws_secretsmanager_secret", resource_name);
        assert_eq!(
            attr(secret, "count").as_deref(),
            Some(count),
            "{resource_name}"
        );
        assert!(
            attr(secret, "name").unwrap().contains(name),
            "{resource_name}"
        );
        assert!(
            environment.contains(&format!(
                "{variable}=\"secretsmanager:${{aws_secretsmanager_secret.{resource_name}[0].name}}\""
            )),
            "{variable}: {environment}"
        );
        for (policy, body) in &policies {
            let grants =
                text(body).contains(&format!("aws_secretsmanager_secret.{resource_name}[*].arn"));
            assert_eq!(
                grants,
                *policy == "dispatcher",
                "{resource_name} in {policy}"
            );
        }
    }
}
