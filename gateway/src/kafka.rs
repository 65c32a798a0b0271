//! The settings of every Kafka client the gateway makes: producers (usage events, config changes) and followers
//! (the quota and config topics, read whole by every replica, never in a consumer group).

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// librdkafka's longest wait before reconnecting to a broker that went away (its default is 10 s): the spool
/// drains, and followers resume, soon after the broker is back.
const RECONNECT_BACKOFF_MAX: &str = "1000";

/// How long usage events wait to share a produce request. The idempotent producer allows a partition five requests
/// in flight, and librdkafka's broker thread spins while a ready batch waits for a free slot: against the local
/// broker at 10,000 events/s that thread took 12–39 % of a core with 5 ms, 2–3 % with 100 ms (`bench/REPORT.md`).
/// A usage event is not waited on by anyone, so it can wait this long; the config topic's producer sends at once.
const LINGER_MS: &str = "100";

/// An idempotent producer that waits for every in-sync replica; `kafka.properties` are applied last.
pub fn producer_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", LINGER_MS)
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX)
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().to_string(),
        );
    for (key, value) in &config.properties {
        c.set(key, value);
    }
    c
}

/// A consumer that is assigned partitions by hand and reads them from the start: no group membership, no
/// commits (the group id is unique and never joined), and fetches answered within 10 ms of new data.
pub fn follower_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set(
            "group.id",
            format!("tollgate-gateway-follower-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX);
    c
}
