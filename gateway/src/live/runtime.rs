//! The request path's view of the configuration: one immutable [`Runtime`] — configuration, key store, request
//! limiters and route table — built from a validated [`Config`] and swapped in whole. A request loads the
//! current runtime once, at its start, and keeps it to the end: a change never meets a request halfway.
//!
//! What must outlive a swap lives beside the runtime: [`Instances`] keeps each instance's health (circuit breaker,
//! cooldowns, probe verdicts) and its probe task while the instance's endpoint, provider, key, breaker and health
//! check stay the same; the request limiters of consumers whose `limit_count` is unchanged carry over
//! ([`RequestLimits::rebuilt`]); quota books live in [`crate::admission::quota::Quotas`] and are re-laid, not
//! reset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::admission::auth::KeyStore;
use crate::admission::limits::RequestLimits;
use crate::config::{BreakerConfig, Config, HealthCheck, Instance, Secret};
use crate::protocol::Provider;
use crate::routing::Router;
use crate::routing::health::InstanceHealth;
use crate::routing::probe;
use crate::routing::shared::SharedHealth;

/// One configuration, ready for requests.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub keys: KeyStore,
    pub limits: RequestLimits,
    pub router: Router,
    /// The config-topic offset of the last change in it (standalone: a local sequence number); -1 for the
    /// file as loaded.
    pub version: i64,
}

impl Runtime {
    /// Builds the runtime of `config`, carrying over what `previous` had for the same consumers.
    pub fn build(
        config: Arc<Config>,
        version: i64,
        instances: &Instances,
        previous: Option<&Runtime>,
    ) -> Self {
        let health = instances.update(&config.instances);
        let limits = match previous {
            Some(previous) => previous.limits.rebuilt(&config.consumers),
            None => RequestLimits::new(&config.consumers, config.server.replicas),
        };
        Self {
            keys: KeyStore::new(&config.consumers),
            router: Router::new(&config, &health),
            limits,
            config,
            version,
        }
    }
}

/// What makes an instance the same instance for its health: change any of it and the health starts over.
#[derive(Debug, Clone, PartialEq)]
struct Identity {
    endpoint: url::Url,
    provider: Provider,
    api_key: Option<Secret>,
    breaker: BreakerConfig,
    health_check: Option<HealthCheck>,
}

impl Identity {
    fn of(instance: &Instance) -> Self {
        Self {
            endpoint: instance.endpoint.clone(),
            provider: instance.provider,
            api_key: instance.api_key.clone(),
            breaker: instance.circuit_breaker,
            health_check: instance.health_check.clone(),
        }
    }
}

struct Slot {
    identity: Identity,
    health: Arc<InstanceHealth>,
    /// Stops this instance's probe; a child of the gateway's probe token.
    probe: CancellationToken,
}

/// Every instance's health and probe, by name, across configuration changes.
pub struct Instances {
    slots: Mutex<HashMap<String, Slot>>,
    /// Cancelled at shutdown: every probe stops.
    probes: CancellationToken,
    /// With a health topic: the bus every instance tells its verdicts to, and the registry the other replicas'
    /// verdicts are applied through.
    shared: Option<SharedHealth>,
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instances").finish_non_exhaustive()
    }
}

impl Instances {
    pub fn new(probes: CancellationToken, shared: Option<SharedHealth>) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            probes,
            shared,
        }
    }

    /// The health of each of `instances`, in order: kept for an unchanged instance, new (and probed anew) for a
    /// new or changed one. Instances no longer configured have their probes stopped. Must run inside the actix
    /// system (probes are spawned on it).
    pub fn update(&self, instances: &[Instance]) -> Vec<Arc<InstanceHealth>> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = HashMap::with_capacity(instances.len());
        let health = instances
            .iter()
            .map(|instance| {
                let identity = Identity::of(instance);
                let slot = match slots.remove(&instance.name) {
                    Some(slot) if slot.identity == identity => slot,
                    replaced => {
                        if let Some(old) = replaced {
                            old.probe.cancel();
                            tracing::info!(instance = %instance.name, "instance changed: its health starts over");
                        }
                        let mut health = InstanceHealth::new(
                            &instance.name,
                            instance.circuit_breaker,
                            instance.health_check.as_ref(),
                        );
                        if let Some(shared) = &self.shared {
                            health = health.with_bus(shared.bus.clone());
                        }
                        let health = Arc::new(health);
                        let probe = self.probes.child_token();
                        probe::spawn_one(instance, &health, &probe);
                        Slot {
                            identity,
                            health,
                            probe,
                        }
                    }
                };
                let health = slot.health.clone();
                next.insert(instance.name.clone(), slot);
                health
            })
            .collect::<Vec<_>>();
        if let Some(shared) = &self.shared {
            shared.registry.replace(health.iter().cloned());
        }
        for (name, gone) in slots.drain() {
            gone.probe.cancel();
            tracing::info!(instance = %name, "instance removed: its probe stops");
        }
        *slots = next;
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [meter]
        url = "http://127.0.0.1:9/"
        [kafka]
        brokers = "127.0.0.1:9092"

        [[instances]]
        name = "primary"
        endpoint = "http://127.0.0.1:1/v1"

        [[instances]]
        name = "canary"
        endpoint = "http://127.0.0.1:2/v1"
    "#;

    #[test]
    fn an_unchanged_instance_keeps_its_health_and_a_changed_one_starts_over() {
        let config = Config::from_toml_with_env(CONFIG, |_| None).unwrap();
        let instances = Instances::new(CancellationToken::new(), None);
        let first = instances.update(&config.instances);
        let again = instances.update(&config.instances);
        assert!(Arc::ptr_eq(&first[0], &again[0]) && Arc::ptr_eq(&first[1], &again[1]));

        // A new endpoint is another upstream: its health starts over. A new timeout is the same upstream.
        let mut changed = config.instances.clone();
        changed[0].endpoint = url::Url::parse("http://127.0.0.1:3/v1").unwrap();
        changed[1].timeout = std::time::Duration::from_secs(1);
        let after = instances.update(&changed);
        assert!(!Arc::ptr_eq(&first[0], &after[0]));
        assert!(Arc::ptr_eq(&first[1], &after[1]));

        // A removed instance is forgotten: put back, it starts over.
        let only_primary = instances.update(&changed[..1]);
        assert_eq!(only_primary.len(), 1);
        let back = instances.update(&changed);
        assert!(!Arc::ptr_eq(&after[1], &back[1]));
    }
}
