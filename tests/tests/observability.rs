//! The observability files of the production stack (compose/observability/) against the services' code, without
//! a network: every metric the Grafana dashboard queries is one a service defines, the Prometheus scrape config
//! names the three jobs at the compose services' addresses, the dashboard uses the provisioned datasource, and
//! every metric name the services define follows the base-unit naming rule.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Series Prometheus makes itself for every target.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Where each service's metric names are defined, as string constants.
const METRIC_SOURCES: &[&str] = &[
    "gateway/src/metrics.rs",
    "meter-sidecar/src/metrics.rs",
    "billing-consumer/src/telemetry/metrics.rs",
];

const METRIC_PREFIXES: &[&str] = &["tollgate_", "meter_", "billing_"];

/// The uid of the Prometheus datasource Grafana is provisioned with.
const DATASOURCE_UID: &str = "tollgate-prometheus";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_owned()
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn dashboard() -> Value {
    let text = read("compose/observability/grafana/dashboards/tollgate.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every `"tollgate_…"`, `"meter_…"` or `"billing_…"` string literal of a Rust source.
fn metric_literals(source: &str) -> BTreeSet<String> {
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| METRIC_PREFIXES.iter().any(|p| s.starts_with(p)))
        .filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

/// `const NAME: &str = "value";` of a Rust source: NAME → value.
fn str_constants(source: &str) -> BTreeMap<String, String> {
    source
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub ").unwrap_or(line.trim());
            let (name, value) = rest.strip_prefix("const ")?.split_once(": &str = \"")?;
            let value = value.strip_suffix("\";")?;
            Some((name.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

/// The constants a source passes to `describe_<kind>!(`: `kind` is `counter`, `gauge` or `histogram`.
fn described(source: &str, kind: &str) -> BTreeSet<String> {
    let opening = format!("describe_{kind}!(");
    source
        .split(opening.as_str())
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Every string under a key `expr` anywhere in the dashboard (the panels' PromQL queries).
fn exprs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => found.push(expr.clone()),
                    _ => exprs(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, found)),
        _ => {}
    }
}

/// PromQL functions, aggregations and keywords: identifiers that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "and",
    "avg",
    "avg_over_time",
    "bool",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "histogram_quantile",
    "holt_winters",
    "idelta",
    "increase",
    "inf",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log2",
    "log10",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "nan",
    "offset",
    "or",
    "predict_linear",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev",
    "stddev_over_time",
    "stdvar",
    "stdvar_over_time",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "unless",
    "vector",
];

/// Keywords followed by a parenthesised list of label names.
const PROMQL_GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression selects. Skips string literals, label matchers (`{…}`), ranges
/// (`[…]`), Grafana variables (`$…`), numbers, functions, keywords and the label lists of `by (…)` and the
/// like; every other identifier is a metric name.
fn metric_names(expr: &str) -> Vec<String> {
    fn is_ident(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_' || c == ':'
    }
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // From an opening quote at `i` to just after its closing quote.
    let skip_string = |mut i: usize| -> usize {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    // From an opening `open` at `i` to just after its matching `close`, passing over string literals.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    i = skip_string(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(i),
            '{' => i = skip_group(i, '{', '}'),
            '[' => i = skip_group(i, '[', ']'),
            '$' => {
                i += 1;
                while i < chars.len() && (is_ident(chars[i]) || chars[i] == '{' || chars[i] == '}') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let lower = word.to_ascii_lowercase();
                if PROMQL_GROUPING.contains(&lower.as_str()) {
                    let mut j = i;
                    while j < chars.len() && chars[j].is_whitespace() {
                        j += 1;
                    }
                    if chars.get(j) == Some(&'(') {
                        i = skip_group(j, '(', ')');
                    }
                } else if !PROMQL_WORDS.contains(&lower.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_expression_scanner_finds_metric_names_only() {
    let expr = r#"histogram_quantile(0.99, sum by (route, le) (rate(tollgate_x_seconds_bucket{route=~"a|b", job="tollgate-gateway"}[$__rate_interval])))
        / on (instance) group_left (route) max without (le) (meter_y_total offset 5m) > bool 1e3 or up{x='y'}"#;
    assert_eq!(
        metric_names(expr),
        ["tollgate_x_seconds_bucket", "meter_y_total", "up"]
    );
}

#[test]
fn every_metric_the_dashboard_queries_is_defined_by_a_service() {
    let mut defined = BTreeSet::new();
    for source in METRIC_SOURCES {
        defined.extend(metric_literals(&read(source)));
    }
    assert!(
        defined.len() > 40,
        "only {} metric names found in {METRIC_SOURCES:?}",
        defined.len()
    );

    let mut found = Vec::new();
    exprs(&dashboard(), &mut found);
    assert!(
        found.len() >= 30,
        "only {} queries found in the dashboard",
        found.len()
    );

    let known = |name: &str| defined.contains(name) || PROMETHEUS_SERIES.contains(&name);
    let mut used = BTreeSet::new();
    let mut unknown = BTreeMap::<String, Vec<String>>::new();
    for expr in &found {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in the query {expr}");
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|base| known(base)))
                .unwrap_or(name.as_str())
                .to_owned();
            if known(&base) {
                used.insert(base);
            } else {
                unknown.entry(name).or_default().push(expr.clone());
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics no service defines (in {METRIC_SOURCES:?}):\n{}",
        unknown
            .iter()
            .map(|(name, exprs)| format!("  {name}  in  {}", exprs.join("  |  ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Each of the three services has a place on the dashboard.
    for prefix in METRIC_PREFIXES {
        assert!(
            used.iter().any(|n| n.starts_with(prefix)),
            "no {prefix}* metric on the dashboard"
        );
    }
}

#[test]
fn the_scrape_config_names_the_three_jobs_at_the_compose_services() {
    let config = read("compose/observability/prometheus.yml");
    let mut jobs = BTreeMap::<String, Vec<String>>::new();
    let mut current = None;
    for line in config.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(job) = line.strip_prefix("- job_name:") {
            let job = job.trim().trim_matches('"').to_owned();
            jobs.entry(job.clone()).or_default();
            current = Some(job);
        } else if let (Some(job), Some(targets)) = (&current, line.split_once("targets:").map(|(_, t)| t)) {
            let targets = targets.trim().trim_start_matches('[').trim_end_matches(']');
            jobs.entry(job.clone()).or_default().extend(
                targets
                    .split(',')
                    .map(|t| t.trim().trim_matches('"').to_owned())
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    let compose = read("compose/docker-compose.yml");
    for (job, target) in [
        ("tollgate-gateway", "gateway:8080"),
        ("tollgate-meter", "meter-sidecar:8081"),
        ("tollgate-billing", "billing-consumer:9464"),
    ] {
        let targets = jobs
            .get(job)
            .unwrap_or_else(|| panic!("no job {job} in prometheus.yml (jobs: {jobs:?})"));
        assert_eq!(targets, &[target], "the targets of {job}");
        let (service, port) = target.split_once(':').unwrap();
        assert!(
            compose.contains(&format!("\n  {service}:\n")),
            "docker-compose.yml has no service {service}"
        );
        assert!(
            compose.contains(&format!(":{port}")),
            "docker-compose.yml never mentions port {port} (for {service})"
        );
    }
    for mount in [
        "./observability/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
        "./observability/grafana/provisioning:/etc/grafana/provisioning:ro",
        "./observability/grafana/dashboards:/etc/grafana/dashboards/tollgate:ro",
    ] {
        assert!(
            compose.contains(mount),
            "docker-compose.yml does not mount {mount}"
        );
    }
}

#[test]
fn the_dashboard_uses_the_provisioned_datasource() {
    let provisioned = read("compose/observability/grafana/provisioning/datasources/prometheus.yml");
    assert!(
        provisioned
            .lines()
            .any(|l| l.trim() == format!("uid: {DATASOURCE_UID}")),
        "the provisioned datasource's uid is not {DATASOURCE_UID}"
    );
    let dashboard = dashboard();
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(schema >= 38, "schemaVersion {schema}");

    fn datasources(value: &Value, found: &mut Vec<Value>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if key == "datasource" {
                        found.push(v.clone());
                    } else {
                        datasources(v, found);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| datasources(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    datasources(&dashboard["panels"], &mut found);
    assert!(!found.is_empty());
    for datasource in found {
        assert_eq!(
            datasource["uid"], DATASOURCE_UID,
            "a panel's datasource: {datasource}"
        );
        assert_eq!(
            datasource["type"], "prometheus",
            "a panel's datasource: {datasource}"
        );
    }

    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        titles,
        [
            "Traffic",
            "Tokens",
            "Upstreams",
            "Quotas",
            "Ledger",
            "Config",
            "meter-sidecar"
        ]
    );
}

/// Why `name`, a metric of kind `kind` (`counter`, `gauge`, `histogram`, or `None` if never described), breaks
/// the naming rule: base units (seconds, bytes), `_total` on counters and only on counters.
fn naming_problems(name: &str, kind: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let words: Vec<&str> = name.split('_').collect();
    for unit in [
        "ms",
        "millis",
        "milliseconds",
        "us",
        "micros",
        "ns",
        "nanos",
        "minutes",
        "hours",
    ] {
        if words.contains(&unit) {
            problems.push(format!("time in `{unit}`: durations are in `_seconds`"));
        }
    }
    for unit in ["kb", "mb", "gb", "kib", "mib", "gib", "kilobytes", "megabytes"] {
        if words.contains(&unit) {
            problems.push(format!("size in `{unit}`: sizes are in `_bytes`"));
        }
    }
    let base = name.strip_suffix("_total").unwrap_or(name);
    if words.iter().any(|w| *w == "duration" || *w == "latency") && !base.ends_with("_seconds") {
        problems.push("a duration not in `_seconds`".to_owned());
    }
    match kind {
        Some("counter") if !name.ends_with("_total") => {
            problems.push("a counter without `_total`".to_owned())
        }
        Some(kind) if kind != "counter" && name.ends_with("_total") => {
            problems.push(format!("a {kind} ending in `_total`, which is for counters"));
        }
        _ => {}
    }
    problems
}

#[test]
fn the_naming_rule_catches_what_it_should() {
    assert!(naming_problems("tollgate_requests_total", Some("counter")).is_empty());
    assert!(naming_problems("tollgate_request_duration_seconds", Some("histogram")).is_empty());
    assert!(naming_problems("tollgate_spool_bytes", Some("gauge")).is_empty());
    assert!(!naming_problems("tollgate_latency_ms", Some("histogram")).is_empty());
    assert!(!naming_problems("tollgate_request_duration", Some("histogram")).is_empty());
    assert!(!naming_problems("tollgate_spool_mb", Some("gauge")).is_empty());
    assert!(!naming_problems("tollgate_requests", Some("counter")).is_empty());
    assert!(!naming_problems("tollgate_queued_total", Some("gauge")).is_empty());
}

#[test]
fn every_metric_name_follows_the_base_unit_naming_rule() {
    let mut violations = Vec::new();
    let mut checked = 0;
    for source_path in METRIC_SOURCES {
        let source = read(source_path);
        let constants = str_constants(&source);
        let mut kinds = BTreeMap::new();
        for kind in ["counter", "gauge", "histogram"] {
            for constant in described(&source, kind) {
                kinds.insert(constant, kind);
            }
        }
        for (constant, name) in &constants {
            if !METRIC_PREFIXES.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            checked += 1;
            for problem in naming_problems(name, kinds.get(constant).copied()) {
                violations.push(format!("{source_path}: {constant} = {name:?}: {problem}"));
            }
        }
    }
    assert!(checked > 40, "only {checked} metric constants found");
    assert!(
        violations.is_empty(),
        "metric names break the naming rule:\n  {}",
        violations.join("\n  ")
    );
}

/// The alerting rules are loaded by Prometheus, mounted by the compose file, alert on a rejected usage event
/// (an unbilled request), and query only metrics a service defines.
#[test]
fn the_alert_rules_are_loaded_and_query_only_defined_metrics() {
    let rules = read("compose/observability/alerts.yml");
    assert!(
        read("compose/observability/prometheus.yml").contains("  - /etc/prometheus/alerts.yml"),
        "prometheus.yml does not load the alert rules"
    );
    assert!(
        read("compose/docker-compose.yml")
            .contains("./observability/alerts.yml:/etc/prometheus/alerts.yml:ro"),
        "docker-compose.yml does not mount the alert rules"
    );
    let mut defined = BTreeSet::new();
    for source in METRIC_SOURCES {
        defined.extend(metric_literals(&read(source)));
    }
    let exprs: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .collect();
    assert!(exprs.len() >= 4, "{exprs:?}");
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                defined.contains(&name),
                "the alert `{expr}` queries {name}, which no service defines"
            );
        }
    }
    assert!(
        exprs.iter().any(|e| e.contains("billing_events_rejected_total")),
        "a rejected usage event must alert"
    );
}
