//! Fuzzes the gateway's configuration: arbitrary TOML text through the path `Config::load` takes
//! ([`Config::from_toml_with_env`]: parse, then validate everything up front), with provider keys read from a
//! fixed stand-in environment instead of the process's, and for a configuration that validates, what the service
//! builds from it at start: instance health, the routing tables (consistent-hash rings included) and a plan for
//! one request per route, the key store, the request-rate limits, and the live configuration's resources.
//!
//! Input: the TOML text (invalid UTF-8 is refused before parsing, as reading the file does).
//!
//! Invariants beyond "no panic":
//! - a refused configuration reports at least one problem, each a non-empty line without control characters;
//! - a configuration that validates can be rebuilt by the live configuration from its own resources
//!   ([`ResourceSet::from_file`] then [`ResourceSet::assemble`], what every replica does at start and the admin
//!   API on every change) with the same instances, routes, consumers and limits;
//! - every plan names targets of its route, at most `failover.max_attempts` of them, each once.

use std::collections::HashSet;
use std::time::Instant;

use tollgate_gateway::admission::auth::KeyStore;
use tollgate_gateway::admission::limits::RequestLimits;
use tollgate_gateway::config::Config;
use tollgate_gateway::live::resources::ResourceSet;
use tollgate_gateway::routing::{HashKeys, Router, health_of};

/// The stand-in environment: every variable is set, except those whose name says they are missing.
fn env(name: &str) -> Option<String> {
    (!name.contains("MISSING")).then(|| format!("fuzz-secret-for-{name}"))
}

/// Runs one input; panics when an invariant does not hold.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::from_toml_with_env(text, env) {
        Ok(config) => config,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a configuration refused without a problem");
            for problem in &errors.0 {
                assert!(!problem.trim().is_empty(), "an empty problem in {:?}", errors.0);
                assert!(
                    !problem.chars().any(char::is_control),
                    "a control character in a problem: {problem:?}"
                );
            }
            return;
        }
    };

    let health = health_of(&config);
    assert_eq!(health.len(), config.instances.len());
    let router = Router::new(&config, &health);
    let now = Instant::now();
    for model in router.models() {
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/messages",
        ] {
            let Some(route) = router.route(path, model) else {
                continue;
            };
            for keys in [
                HashKeys::default(),
                HashKeys {
                    consumer: Some("fuzz-consumer"),
                    header: Some(b"session-1"),
                },
            ] {
                let plan = route.plan(keys, now);
                assert!(
                    plan.len() <= route.failover.max_attempts,
                    "a plan longer than max_attempts"
                );
                assert!(
                    plan.iter().all(|&i| i < route.targets.len()),
                    "a plan names a missing target"
                );
                let distinct: HashSet<usize> = plan.iter().copied().collect();
                assert_eq!(distinct.len(), plan.len(), "a plan tries a target twice");
            }
        }
    }
    let _keys = KeyStore::new(&config.consumers);
    let _limits = RequestLimits::new(&config.consumers, config.server.replicas);

    let resources = ResourceSet::from_file(&config.source);
    let live = match resources.assemble(&config.source, &config.secrets) {
        Ok(live) => live,
        Err(problems) => panic!("a valid file's own resources do not assemble: {problems:?}"),
    };
    assert_eq!(
        live.instances.len(),
        config.instances.len(),
        "instances lost in the live configuration"
    );
    assert_eq!(
        live.routes.len(),
        config.routes.len(),
        "routes lost in the live configuration"
    );
    assert_eq!(
        live.consumers.len(),
        config.consumers.len(),
        "consumers lost in the live configuration"
    );
    assert_eq!(
        live.token_limits.len(),
        config.token_limits.len(),
        "limits lost in the live configuration"
    );
}
