//! What a configuration file may and may not say: every rule of [`super::validate`], one test each.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

const VALID: &str = r#"
    [server]
    listen = "127.0.0.1:8080"
    instance_id = "gw-1"

    [meter]
    url = "http://127.0.0.1:8081"
    timeout = "200ms"

    [kafka]
    brokers = "127.0.0.1:9092"

    [[instances]]
    name = "openai"
    endpoint = "https://api.openai.com/v1"
    model = "gpt-4o-mini-2024-07-18"
    api_key_env = "OPENAI_API_KEY"

    [[routes]]
    name = "gpt-4o-mini"
    models = ["gpt-4o-mini"]
    targets = [{ instance = "openai" }]

    [[consumers]]
    name = "team-a"
    keys = [{ id = "a-1", sha256 = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac874" }]
"#;

fn env(name: &str) -> Option<String> {
    (name == "OPENAI_API_KEY").then(|| "sk-provider".to_owned())
}

fn problems(text: &str) -> Vec<String> {
    Config::from_toml_with_env(text, env).unwrap_err().0
}

/// Found by the `config_toml` fuzz target: a value quoted in a problem used to carry its newline into the
/// problem, which then spread over several lines of `check-config`'s output and of logs.
#[test]
fn a_problem_quoting_a_value_with_control_characters_stays_on_one_line() {
    let text = VALID.replace(
        r#"targets = [{ instance = "openai" }]"#,
        r#"targets = [{ instance = "op\nai\r\u001b[31m" }]"#,
    );
    let found = problems(&text);
    let problem = found
        .iter()
        .find(|p| p.starts_with("routes[0].targets[0].instance"))
        .unwrap_or_else(|| panic!("{found:?}"));
    assert!(problem.contains(r"`op\nai\r\u{1b}[31m`"), "{problem}");
    for problem in &found {
        assert!(!problem.chars().any(char::is_control), "{problem:?}");
    }
    let unparsable = problems("[server]\nlisten = \"127.0.0.1:8080\"\t\r x\n");
    assert!(!unparsable[0].chars().any(char::is_control), "{unparsable:?}");
}

#[test]
fn the_edge_budgets_are_bounded_and_every_bad_one_is_reported() {
    let config = Config::from_toml_with_env(VALID, env).unwrap();
    assert_eq!(config.server.max_response_bytes, 16 << 20);
    assert_eq!(config.server.body_read_timeout, Duration::from_secs(30));
    assert_eq!(config.server.max_json_depth, 64);
    assert_eq!(config.server.max_inflight_bytes, 256 << 20);
    let bad = VALID.replace(
        "instance_id = \"gw-1\"",
        "instance_id = \"gw-1\"\nmax_json_depth = 129\nmax_json_values = 3\nmax_inflight_requests = 0\n\
         max_inflight_bytes = 1024\nbody_read_timeout = \"2h\"",
    );
    let found = problems(&bad);
    for path in [
        "server.max_json_depth",
        "server.max_json_values",
        "server.max_inflight_requests",
        "server.max_inflight_bytes",
        "server.body_read_timeout",
    ] {
        assert!(found.iter().any(|p| p.starts_with(path)), "{path}: {found:?}");
    }
}

#[test]
fn a_limit_or_a_key_that_names_some_names_of_a_route_but_not_all_is_refused() {
    let aliased = VALID.replace(
        r#"models = ["gpt-4o-mini"]"#,
        r#"models = ["gpt-4o-mini", "mini"]"#,
    );
    let partial = format!(
        r#"{aliased}token_limits = [{{ models = ["gpt-4o-mini"], limit = 10000, time_window = "1h" }}]
        [[consumers]]
        name = "team-b"
        keys = [{{ id = "b-1", sha256 = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac875", models = ["mini"] }}]
        "#
    );
    let found = problems(&partial);
    for path in [
        "consumers[0].token_limits[0].models",
        "consumers[1].keys[0].models",
    ] {
        assert!(
            found
                .iter()
                .any(|p| p.starts_with(path) && p.contains("route `gpt-4o-mini`")),
            "{path}: {found:?}"
        );
    }
    assert!(
        found.iter().any(|p| p.contains("not its other names `mini`")),
        "{found:?}"
    );
    // Naming every name of the route is one model, one quota.
    let whole = format!(
        r#"{aliased}token_limits = [{{ models = ["mini", "gpt-4o-mini"], limit = 10000, time_window = "1h" }}]"#
    );
    assert!(Config::from_toml_with_env(&whole, env).is_ok());
}

#[test]
fn properties_that_weaken_the_usage_producers_delivery_are_refused() {
    let with = |properties: &str| {
        VALID.replace(
            "brokers = \"127.0.0.1:9092\"",
            &format!("brokers = \"127.0.0.1:9092\"\nproperties = {{ {properties} }}"),
        )
    };
    for (properties, key) in [
        (r#""acks" = "1""#, "acks"),
        (r#""request.required.acks" = "0""#, "request.required.acks"),
        (r#""enable.idempotence" = "false""#, "enable.idempotence"),
        (r#""transactional.id" = "t""#, "transactional.id"),
    ] {
        let found = problems(&with(properties));
        assert!(
            found
                .iter()
                .any(|p| p.starts_with(&format!("kafka.properties.\"{key}\""))),
            "{properties}: {found:?}"
        );
    }
    assert!(Config::from_toml_with_env(&with(r#""acks" = "all", "compression.type" = "zstd""#), env).is_ok());
}

#[test]
fn weights_are_bounded_and_a_hash_rings_size_too() {
    let with = |targets: &str, balancer: &str| {
        format!(
            "{}\n[[instances]]\nname = \"b\"\nendpoint = \"https://b.example/v1\"\n\n[[routes]]\nname = \"r\"\n\
             models = [\"m\"]\ntargets = {targets}\n{balancer}\n",
            VALID
        )
    };
    let heavy = with(r#"[{ instance = "openai", weight = 4294967295 }]"#, "");
    assert!(
        problems(&heavy)
            .iter()
            .any(|p| p.starts_with("routes[1].targets[0].weight")),
        "{:?}",
        problems(&heavy)
    );
    let ring = with(
        r#"[{ instance = "openai", weight = 900 }, { instance = "b", weight = 900 }]"#,
        r#"balancer = "consistent_hash"
hash_on = "consumer""#,
    );
    assert!(
        problems(&ring)
            .iter()
            .any(|p| p.starts_with("routes[1].targets:") && p.contains("1800")),
        "{:?}",
        problems(&ring)
    );
    let fine = with(
        r#"[{ instance = "openai", weight = 900 }, { instance = "b", weight = 900 }]"#,
        "",
    );
    assert!(Config::from_toml_with_env(&fine, env).is_ok());
}

#[test]
fn admin_api_instances_reach_only_allowed_key_variables_and_internal_hosts() {
    let admin = RawAdmin {
        provider_key_envs: vec!["ANTHROPIC_API_KEY".into()],
        provider_key_env_prefix: Some("TOLLGATE_PROVIDER_".into()),
        private_endpoints: vec!["10.1.0.0/16".into()],
        ..RawAdmin::default()
    };
    let file: RawConfig = toml::from_str(&format!(
        "{VALID}\n[[instances]]\nname = \"local\"\nendpoint = \"http://127.0.0.1:8000/v1\"\n"
    ))
    .unwrap();
    let egress = Egress::of_file(&admin, &file.instances);
    let fields = |var: Option<&str>, endpoint: &str| -> Vec<&'static str> {
        egress
            .check_instance(var, endpoint)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    };
    // Variables: the file's own, the list, the prefix; nothing else (ClickHouse's password, say).
    assert!(fields(Some("OPENAI_API_KEY"), "https://api.openai.com/v1").is_empty());
    assert!(fields(Some("ANTHROPIC_API_KEY"), "https://api.anthropic.com/v1").is_empty());
    assert!(fields(Some("TOLLGATE_PROVIDER_GROQ"), "https://api.groq.com/v1").is_empty());
    assert_eq!(
        fields(Some("CLICKHOUSE_PASSWORD"), "https://api.openai.com/v1"),
        ["api_key_env"]
    );
    // Hosts: public ones; internal ones only as the file targets them or inside private_endpoints.
    assert!(fields(None, "http://127.0.0.1:8000/v1").is_empty());
    assert!(fields(None, "http://10.1.2.3:8000/v1").is_empty());
    for internal in [
        "http://127.0.0.1:8123/",
        "http://localhost:8123/",
        "http://169.254.169.254/latest/meta-data",
        "http://192.168.1.10/v1",
        "http://10.2.0.1/v1",
        "http://[::1]:8123/",
        "http://[::ffff:127.0.0.1]:8123/",
        "http://[fd00::1]/v1",
        "http://0.0.0.0:8123/",
        "http://metadata.google.internal/",
    ] {
        let problems = egress.check_instance(None, internal);
        assert_eq!(problems.len(), 1, "{internal} was allowed");
        let (field, _) = &problems[0];
        assert_eq!(*field, "endpoint", "{internal}");
    }
}

#[test]
fn egress_settings_are_validated() {
    let with = |lines: &str| VALID.replace("[kafka]", &format!("[admin]\n{lines}\n\n[kafka]"));
    let found = problems(&with(
        "provider_key_envs = [\"A B\"]\nprovider_key_env_prefix = \"C\"\nprivate_endpoints = [\"0.0.0.0/0\", \"nonsense\"]\nconfig_load_timeout = \"1h\"",
    ));
    for path in [
        "admin.provider_key_envs[0]",
        "admin.provider_key_env_prefix",
        "admin.private_endpoints[0]",
        "admin.private_endpoints[1]",
        "admin.config_load_timeout",
    ] {
        assert!(found.iter().any(|p| p.starts_with(path)), "{path}: {found:?}");
    }
}

#[test]
fn probes_read_a_health_path_or_send_one_small_generation_and_nothing_else() {
    let with = |check: &str| {
        VALID.replace(
            "api_key_env = \"OPENAI_API_KEY\"",
            &format!("api_key_env = \"OPENAI_API_KEY\"\nhealth_check = {{ {check} }}"),
        )
    };
    let ok = [
        r#"method = "GET", path = "/health""#,
        r#"method = "GET", path = "models""#,
        r#"method = "POST", path = "chat/completions", body = '{"model":"m","max_tokens":1,"messages":[]}'"#,
    ];
    for check in ok {
        assert!(
            Config::from_toml_with_env(&with(check), env).is_ok(),
            "{check}: {:?}",
            problems(&with(check))
        );
    }
    let refused = [
        (
            r#"method = "GET", path = "/?query=DROP%20TABLE%20x""#,
            "health_check.path",
        ),
        (r#"method = "GET", path = "/../admin""#, "health_check.path"),
        (
            r#"method = "POST", path = "/", body = '{"query":"SELECT 1"}'"#,
            "health_check.path",
        ),
        (
            r#"method = "POST", path = "chat/completions", body = 'SELECT 1'"#,
            "health_check.body",
        ),
        (
            r#"method = "GET", path = "/health", body = '{}'"#,
            "health_check.body",
        ),
        (
            r#"method = "GET", path = "/health", interval = "1ms""#,
            "health_check.interval",
        ),
        (
            r#"method = "GET", path = "/health", timeout = "1h""#,
            "health_check.timeout",
        ),
    ];
    for (check, path) in refused {
        let found = problems(&with(check));
        assert!(found.iter().any(|p| p.contains(path)), "{check}: {found:?}");
    }
}

#[test]
fn attempts_queues_and_spool_segments_are_bounded() {
    let text = VALID
        .replace(
            "targets = [{ instance = \"openai\" }]",
            "targets = [{ instance = \"openai\" }]\nfailover = { max_attempts = 1000 }",
        )
        .replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\nqueue_capacity = 100000000",
        )
        + "\n[spool]\nmax_bytes = 4294967296\nsegment_bytes = 2147483648\n";
    let found = problems(&text);
    for path in [
        "routes[0].failover.max_attempts",
        "kafka.queue_capacity",
        "spool.segment_bytes",
    ] {
        assert!(found.iter().any(|p| p.starts_with(path)), "{path}: {found:?}");
    }
}

#[test]
fn windows_are_at_most_a_year_and_a_day() {
    let found = problems(&format!(
        "{VALID}\n[[token_limits]]\nmodels = [\"gpt-4o-mini\"]\nlimit = 10\ntime_window = \"100years\"\n"
    ));
    assert!(
        found
            .iter()
            .any(|p| p.contains("time_window") && p.contains("366d")),
        "{found:?}"
    );
    let rate = VALID.replace(
        "keys = [{ id = \"a-1\"",
        "limit_count = { count = 1, time_window = \"1000years\" }\nkeys = [{ id = \"a-1\"",
    );
    let found = problems(&rate);
    assert!(
        found.iter().any(|p| p.contains("limit_count.time_window")),
        "{found:?}"
    );
}

#[test]
fn metrics_can_have_a_listener_of_their_own_but_not_the_apis() {
    let with = |line: &str| {
        VALID.replace(
            "instance_id = \"gw-1\"",
            &format!("instance_id = \"gw-1\"\n{line}"),
        )
    };
    assert_eq!(
        Config::from_toml_with_env(VALID, env)
            .unwrap()
            .server
            .metrics_listen,
        None,
        "by default /metrics stays on the API listener"
    );
    let own = Config::from_toml_with_env(&with("metrics_listen = \"127.0.0.1:9464\""), env).unwrap();
    assert_eq!(own.server.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    let same = Config::from_toml_with_env(&with("metrics_listen = \"127.0.0.1:8080\""), env)
        .unwrap_err()
        .to_string();
    assert!(
        same.contains("server.metrics_listen: `127.0.0.1:8080` is server.listen's address"),
        "{same}"
    );
    let bad = Config::from_toml_with_env(&with("metrics_listen = \"localhost\""), env)
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains("server.metrics_listen: `localhost` is not an address"),
        "{bad}"
    );
}

#[test]
fn without_metering_token_limits_are_refused() {
    let unmetered = VALID.replace(
        "instance_id = \"gw-1\"",
        "instance_id = \"gw-1\"\nmetering = false",
    );
    assert!(
        !Config::from_toml_with_env(&unmetered, env)
            .unwrap()
            .server
            .metering
    );
    let limited = format!("{unmetered}\n[[token_limits]]\nlimit = 10\ntime_window = \"1h\"\n");
    assert_eq!(
        problems(&limited),
        vec![
            "server.metering: token limits are counted from metered usage: remove them, or leave metering on"
        ]
    );
}

#[test]
fn a_valid_file_loads_with_defaults_filled_in() {
    let config = Config::from_toml_with_env(VALID, env).unwrap();
    assert_eq!(config.server.instance_id, "gw-1");
    assert_eq!(config.meter.timeout, Duration::from_millis(200));
    assert_eq!(config.kafka.usage_topic, "tollgate.usage.v1");
    assert_eq!(
        config.instances[0].api_key.as_ref().unwrap().expose(),
        "sk-provider"
    );
    assert_eq!(config.instances[0].timeout, Duration::from_secs(120));
    assert_eq!(config.consumers[0].keys[0].sha256[0], 0x75);
}

#[test]
fn the_compose_demo_config_is_valid() {
    let text = include_str!("../../../compose/tollgate.toml");
    Config::from_toml_with_env(text, |_| Some("x".into())).unwrap();
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = VALID
        .replace(r#"timeout = "200ms""#, r#"timeout = "soon""#)
        .replace(
            r#"endpoint = "https://api.openai.com/v1""#,
            r#"endpoint = "ftp://x""#,
        )
        .replace(
            r#"targets = [{ instance = "openai" }]"#,
            r#"targets = [{ instance = "opnai" }]"#,
        )
        .replace("75cf857b", "zz");
    let found = problems(&text);
    let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "meter.timeout",
            "instances[0].endpoint",
            "routes[0].targets[0].instance",
            "consumers[0].keys[0].sha256"
        ],
        "{found:#?}"
    );
}

#[test]
fn a_missing_secret_names_the_variable() {
    let found = Config::from_toml_with_env(VALID, |_| None).unwrap_err().0;
    assert_eq!(
        found,
        ["instances[0].api_key_env: environment variable OPENAI_API_KEY is not set"]
    );
}

#[test]
fn unknown_fields_are_refused() {
    let found = problems(&VALID.replace(
        "instance_id = \"gw-1\"",
        "instance_id = \"gw-1\"\nlisten_port = 1",
    ));
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("listen_port"), "{found:?}");
}

#[test]
fn duplicates_are_refused() {
    let twice = format!(
        "{VALID}\n[[routes]]\nname = \"gpt-4o-mini\"\nmodels = [\"gpt-4o-mini\"]\ntargets = [{{ instance = \"openai\" }}]\n"
    );
    let found = problems(&twice);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("routes[1].name: `gpt-4o-mini` is defined twice")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("routes[1].models[0]: `gpt-4o-mini` is already served"))
    );
}

#[test]
fn a_route_mixes_protocols_only_on_the_endpoints_translated_between_them() {
    let mixed = format!(
        "{VALID}\n[[instances]]\nname = \"claude\"\nprovider = \"anthropic\"\nendpoint = \"https://api.anthropic.com/v1\"\n\
         [[routes]]\nname = \"mixed\"\nmodels = [\"m\"]\npaths = [\"/v1/messages\", \"/v1/chat/completions\"]\n\
         targets = [{{ instance = \"openai\" }}, {{ instance = \"claude\" }}]\n"
    );
    let config = Config::from_toml_with_env(&mixed, env).unwrap();
    assert_eq!(config.routes[1].paths, ["/v1/messages", "/v1/chat/completions"]);

    // Embeddings and legacy completions are not translated: an Anthropic target cannot serve them.
    let embeddings = mixed.replace("\"/v1/chat/completions\"]", "\"/v1/embeddings\"]");
    let found = problems(&embeddings);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(
            "routes[1].paths[1]: `/v1/embeddings` speaks the openai protocol, which target `claude`"
        ),
        "{found:?}"
    );

    // Without `paths`: the first target's protocol's endpoints that every target can serve.
    let defaulted = mixed.replace("paths = [\"/v1/messages\", \"/v1/chat/completions\"]\n", "");
    let config = Config::from_toml_with_env(&defaulted, env).unwrap();
    assert_eq!(config.routes[1].paths, ["/v1/chat/completions"]);
    let claude_only = defaulted.replace("{ instance = \"openai\" }, ", "");
    let config = Config::from_toml_with_env(&claude_only, env).unwrap();
    assert_eq!(config.routes[1].paths, ["/v1/messages"]);
    assert_eq!(
        config.routes[0].paths,
        [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/responses"
        ]
    );
}

#[test]
fn key_expiry_and_models_are_checked_when_the_file_loads() {
    let text = VALID.replace(
        r#"keys = [{ id = "a-1", sha256 = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac874" }]"#,
        r#"keys = [{ id = "a-1", sha256 = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac874", expires_at = "next week", models = ["gpt-4o-mini", "gpt-5"] }]"#,
    );
    let found = problems(&text);
    let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "consumers[0].keys[0].expires_at",
            "consumers[0].keys[0].models[1]"
        ],
        "{found:?}"
    );
}

#[test]
fn a_request_limit_is_checked_when_the_file_loads() {
    let with = |limit: &str| format!("{VALID}limit_count = {limit}\n");
    let config = Config::from_toml_with_env(&with(r#"{ count = 600, time_window = "1m" }"#), env).unwrap();
    let limit = config.consumers[0].limit_count.as_ref().unwrap();
    assert_eq!(
        (limit.count, limit.time_window, limit.rejected_code),
        (600, Duration::from_secs(60), 429)
    );
    let found = problems(&with(
        r#"{ count = 0, time_window = "soon", rejected_code = 200 }"#,
    ));
    let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "consumers[0].limit_count.count",
            "consumers[0].limit_count.rejected_code",
            "consumers[0].limit_count.time_window"
        ],
        "{found:?}"
    );
}

#[test]
fn token_limits_are_checked_when_the_file_loads() {
    let text = format!(
        r#"{VALID}token_limits = [{{ models = ["gpt-4o-mini"], limit = 10000, time_window = "1h" }}]

        [[token_limits]]
        models = ["gpt-4o-mini"]
        limit = 50000
        time_window = "1h"
        limit_strategy = "completion_tokens"
        rejected_type = "insufficient_quota"
        "#
    );
    let config = Config::from_toml_with_env(&text, env).unwrap();
    let own = &config.consumers[0].token_limits[0];
    assert_eq!(
        own.key,
        "consumer=team-a;models=gpt-4o-mini;window=3600s;strategy=total_tokens"
    );
    assert_eq!(
        (own.limit, own.rejected_code, own.rejected_type),
        (10000, 429, "rate_limit_exceeded")
    );
    let global = &config.token_limits[0];
    assert_eq!(
        global.key,
        "models=gpt-4o-mini;window=3600s;strategy=completion_tokens"
    );
    assert_eq!(global.rejected_type, "insufficient_quota");
    assert!(config.quota.reserve_max_tokens);
    assert_eq!(config.quota.max_snapshot_age, Duration::from_secs(10));

    let bad = format!(
        r#"{VALID}token_limits = [
            {{ models = ["gpt-5"], limit = 0, time_window = "1h" }},
            {{ instance = "nowhere", limit = 5, time_window = "1h" }},
            {{ models = ["gpt-4o-mini"], limit = 1, time_window = "1h" }},
            {{ models = ["gpt-4o-mini"], limit = 2, time_window = "60m" }},
        ]
        "#
    );
    let found = problems(&bad);
    let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "consumers[0].token_limits[0].models[0]",
            "consumers[0].token_limits[0].limit",
            "consumers[0].token_limits[1].instance",
            "consumers[0].token_limits[3]",
        ],
        "{found:?}"
    );
}

#[test]
fn the_spool_has_defaults_and_is_checked_when_the_file_loads() {
    let config = Config::from_toml_with_env(VALID, env).unwrap();
    let spool = &config.spool;
    assert_eq!(spool.dir, PathBuf::from("spool"));
    assert_eq!((spool.max_bytes, spool.segment_bytes), (1 << 30, 16 << 20));
    assert_eq!(spool.fsync_interval, Duration::from_millis(20));
    assert_eq!(spool.after, Duration::from_secs(1));
    assert_eq!(spool.on_full, OnFull::Reject);

    let custom = format!(
        "{VALID}\n[spool]\ndir = \"/var/lib/tollgate/spool\"\nmax_bytes = 65536\nsegment_bytes = 8192\n\
         fsync_interval = \"5ms\"\nafter = \"250ms\"\non_full = \"serve_unmetered\"\n"
    );
    let spool = Config::from_toml_with_env(&custom, env).unwrap().spool;
    assert_eq!(spool.dir, PathBuf::from("/var/lib/tollgate/spool"));
    assert_eq!((spool.max_bytes, spool.segment_bytes), (65536, 8192));
    assert_eq!(spool.after, Duration::from_millis(250));
    assert_eq!(spool.on_full, OnFull::ServeUnmetered);

    let bad = format!(
        "{VALID}\n[spool]\ndir = \"\"\nmax_bytes = 4096\nsegment_bytes = 1000\nfsync_interval = \"0s\"\n\
         after = \"1m\"\non_full = \"drop\"\n"
    );
    let found = problems(&bad);
    let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "spool.dir",
            "spool.segment_bytes",
            "spool.after",
            "spool.on_full",
            "spool.fsync_interval"
        ],
        "{found:?}"
    );
    let found = problems(&format!(
        "{VALID}\n[spool]\nmax_bytes = 8192\nsegment_bytes = 16384\n"
    ));
    assert_eq!(
        found,
        ["spool.max_bytes: must be at least spool.segment_bytes (16384)"]
    );
}

#[test]
fn the_admin_api_has_no_default_key_and_listens_on_loopback_only() {
    let admin = Config::from_toml_with_env(VALID, env).unwrap().admin;
    assert!(
        admin.keys.is_empty(),
        "no key → the admin listener does not start"
    );
    assert_eq!(admin.listen, "127.0.0.1:9180".parse().unwrap());
    let allow: Vec<String> = admin.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["127.0.0.1/32", "::1/128"]);
    assert!(admin.trusted_proxies.is_empty());

    let text = format!(
        "{VALID}\n[admin]\nlisten = \"0.0.0.0:9180\"\nallow = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"192.168.0.0/16\"]\n\
         keys = [{{ id = \"ops\", sha256 = \"{hash}\", role = \"admin\" }}, \
         {{ id = \"dash\", sha256 = \"{other}\", role = \"viewer\" }}]\n",
        hash = "ab".repeat(32),
        other = "cd".repeat(32),
    );
    let admin = Config::from_toml_with_env(&text, env).unwrap().admin;
    let roles: Vec<(&str, AdminRole)> = admin.keys.iter().map(|k| (k.id.as_str(), k.role)).collect();
    assert_eq!(roles, [("ops", AdminRole::Admin), ("dash", AdminRole::Viewer)]);
    assert_eq!(admin.keys[0].sha256, [0xab; 32]);
}

#[test]
fn an_allowlist_of_every_address_is_refused_unless_forced() {
    let with = |admin: &str| format!("{VALID}\n[admin]\n{admin}\n");
    let found = problems(&with(r#"allow = ["127.0.0.1/32", "0.0.0.0/0", "::/0"]"#));
    let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(paths, ["admin.allow[1]", "admin.allow[2]"], "{found:?}");
    assert!(found[0].contains("allow_any"), "{found:?}");
    let forced = Config::from_toml_with_env(&with("allow = [\"0.0.0.0/0\"]\nallow_any = true"), env).unwrap();
    assert_eq!(forced.admin.allow[0].to_string(), "0.0.0.0/0");
    // Trusting every peer's forwarding header would let any client claim an allowed address.
    let spoofable = problems(&with(
        "allow = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"192.168.0.1/32\", \"0.0.0.0/0\", \"::/0\"]\nallow_any = true",
    ));
    let paths: Vec<&str> = spoofable.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        ["admin.trusted_proxies[1]", "admin.trusted_proxies[2]"],
        "{spoofable:?}"
    );
}

#[test]
fn admin_problems_are_reported_with_their_paths() {
    let consumer_hash = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac874";
    let text = format!(
        "{VALID}\n[admin]\nlisten = \"everywhere\"\nallow = [\"10.0.0.0/33\", \"10.1.2.3/8\", \"nowhere\"]\n\
         trusted_proxies = [\"proxy\"]\n\
         keys = [{{ id = \"ops\", sha256 = \"zz\", role = \"root\" }}, \
         {{ id = \"ops\", sha256 = \"{consumer_hash}\", role = \"viewer\" }}]\n"
    );
    let found = problems(&text);
    let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "admin.listen",
            "admin.keys[0].sha256",
            "admin.keys[0].role",
            "admin.keys[1].id",
            "admin.keys[1].sha256",
            "admin.allow[0]",
            "admin.allow[1]",
            "admin.allow[2]",
            "admin.trusted_proxies[0]",
        ],
        "{found:#?}"
    );
    assert!(found[4].contains("also a consumer key"), "{found:?}");
    assert!(found[6].contains("10.0.0.0/8"), "host bits: {found:?}");
}

#[test]
fn secrets_do_not_print() {
    let config = Config::from_toml_with_env(VALID, env).unwrap();
    assert!(!format!("{config:?}").contains("sk-provider"));
}

const AZURE: &str = r#"
    [[instances]]
    name = "azure"
    provider = "azure_openai"
    endpoint = "https://contoso.openai.azure.com"
    api_key_env = "OPENAI_API_KEY"
    api_version = "2024-10-21"
    deployments = { "gpt-4o" = "prod-gpt4o" }

    [[routes]]
    name = "gpt-4o"
    models = ["gpt-4o"]
    targets = [{ instance = "azure", priority = 2 }, { instance = "openai" }]
"#;

/// An Azure OpenAI instance speaks OpenAI's protocol: it may share a route with OpenAI instances, and requests
/// go to the deployment of the model sent upstream, with the API version in the query.
#[test]
fn an_azure_openai_instance_addresses_the_models_deployment_and_shares_openai_routes() {
    let config = Config::from_toml_with_env(&format!("{VALID}{AZURE}"), env).unwrap();
    let azure = config.instances.iter().find(|i| i.name == "azure").unwrap();
    assert_eq!(azure.provider, crate::protocol::Provider::AzureOpenai);
    assert_eq!(
        azure.request_path("chat/completions", "gpt-4o"),
        "openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(
        azure.request_path("embeddings", "text-embedding-3-small"),
        "openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21",
        "a model without an entry goes to the deployment of its own name"
    );
    assert_eq!(
        azure.request_path("/canary/chat/completions", "gpt-4o"),
        "/canary/chat/completions?api-version=2024-10-21"
    );
    // The Responses API names the deployment in the body instead.
    assert_eq!(
        azure.request_path("responses", "gpt-4o"),
        "openai/responses?api-version=2024-10-21"
    );
    assert_eq!(azure.body_model("responses", "gpt-4o"), Some("prod-gpt4o"));
    assert_eq!(azure.body_model("chat/completions", "gpt-4o"), None);
    let openai = config.instances.iter().find(|i| i.name == "openai").unwrap();
    assert_eq!(
        openai.request_path("chat/completions", "gpt-4o"),
        "chat/completions"
    );
    assert_eq!(
        openai.body_model("responses", "gpt-4o"),
        openai.model.as_deref(),
        "elsewhere the instance's own model name, if any"
    );
}

#[test]
fn azure_addressing_is_required_for_azure_and_refused_elsewhere() {
    let without_version = AZURE.replace("api_version = \"2024-10-21\"\n", "");
    let found = problems(&format!("{VALID}{without_version}"));
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("instances[1].api_version: is required")),
        "{found:?}"
    );

    let bad = AZURE
        .replace("\"2024-10-21\"", "\"2024-10-21&x=1\"")
        .replace("\"prod-gpt4o\"", "\"prod/../gpt4o\"");
    let found = problems(&format!("{VALID}{bad}"));
    assert!(
        found.iter().any(|p| p.starts_with("instances[1].api_version")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("instances[1].deployments.\"gpt-4o\"")),
        "{found:?}"
    );

    let on_openai = VALID.replace(
        "api_key_env = \"OPENAI_API_KEY\"",
        "api_key_env = \"OPENAI_API_KEY\"\n    api_version = \"2024-10-21\"\n    deployments = { a = \"b\" }",
    );
    let found = problems(&on_openai);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("instances[0].api_version: only an `azure_openai`")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("instances[0].deployments: only an `azure_openai`")),
        "{found:?}"
    );
}

/// Teams: organisation → team → consumer. A consumer's place is resolved once at load — its team and the top of
/// the team's chain — for its events to carry.
#[test]
fn a_consumer_in_a_team_carries_its_team_and_the_organisation_at_the_top_of_the_chain() {
    let text = VALID.replace(
        "    [[consumers]]\n    name = \"team-a\"",
        "    [[teams]]\n    name = \"acme\"\n    [[teams]]\n    name = \"research\"\n    parent = \"acme\"\n    \
         [[teams]]\n    name = \"vision\"\n    parent = \"research\"\n    [[consumers]]\n    name = \"team-a\"\n    team = \"vision\"",
    );
    let config = Config::from_toml_with_env(&text, env).unwrap();
    let place = config.consumers[0].team.clone().unwrap();
    assert_eq!(
        (place.team.as_str(), place.organization.as_str()),
        ("vision", "acme")
    );
    assert_eq!(config.teams.len(), 3);
    assert_eq!(config.teams[1].parent.as_deref(), Some("acme"));
}

#[test]
fn teams_must_exist_be_named_once_and_not_be_their_own_ancestors() {
    let text = VALID.replace(
        "    [[consumers]]\n    name = \"team-a\"",
        "    [[teams]]\n    name = \"a\"\n    parent = \"b\"\n    [[teams]]\n    name = \"b\"\n    parent = \"a\"\n    \
         [[teams]]\n    name = \"c\"\n    parent = \"nowhere\"\n    [[teams]]\n    name = \"c\"\n    \
         [[consumers]]\n    name = \"team-a\"\n    team = \"ghost\"",
    );
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("teams[0].parent: the chain of parents comes back")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p == "teams[2].parent: no team is named `nowhere`"),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p == "teams[3].name: `c` is defined twice"),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p == "consumers[0].team: no team is named `ghost`"),
        "{found:?}"
    );
}

/// Budgets: validated up front like token limits, each problem at its path; a budget on a team in the middle of
/// a chain is refused (its consumers' events name only their own team and the organisation).
#[test]
fn budgets_are_validated_with_every_problem_at_its_path() {
    let text = VALID.replace(
        "    [[consumers]]\n    name = \"team-a\"",
        "    [billing]\n    prices = \"/nonexistent/prices.toml\"\n    \
         [[teams]]\n    name = \"acme\"\n    budgets = [{ amount = \"2000\", currency = \"USD\", period = \"month\" }]\n    \
         [[teams]]\n    name = \"research\"\n    parent = \"acme\"\n    \
         budgets = [{ amount = \"10\", currency = \"USD\", period = \"week\" }]\n    \
         [[teams]]\n    name = \"vision\"\n    parent = \"research\"\n    \
         [[consumers]]\n    name = \"team-a\"\n    team = \"vision\"\n    \
         budgets = [{ amount = 0.5, currency = \"usd\", period = \"fortnight\" }, \
         { amount = \"1\", currency = \"EUR\", period = \"day\" }, { amount = \"2\", currency = \"EUR\", period = \"day\" }]",
    );
    let found = problems(&text);
    for expected in [
        "teams[1].budgets: `research` has a parent and teams under it",
        "consumers[0].budgets[0].amount: 0.5 is a float",
        "consumers[0].budgets[0].currency: `usd` is not three capital letters",
        "consumers[0].budgets[0].period: `fortnight` is not day, week, month or fixed",
        "consumers[0].budgets[2]: another budget already covers the same scope",
        "billing.prices: /nonexistent/prices.toml: cannot be read",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "{expected}: {found:?}"
        );
    }
    assert!(
        !found.iter().any(|p| p.starts_with("teams[0].budgets")),
        "{found:?}"
    );
}
