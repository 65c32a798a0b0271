//! The settings of every Kafka client the gateway makes: producers (usage events, config changes) and followers
//! (the quota and config topics, read whole by every replica, never in a consumer group); and
//! [`RenewingProducer`] (shared with billing-consumer), an idempotent producer that replaces itself after a
//! failed send.

use std::time::Duration;
use tollgate_plumbing::KafkaOpError;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;
pub use tollgate_plumbing::kafka::{KafkaConnection, RenewingProducer};

/// How long usage events wait to share a produce request. The idempotent producer allows a partition five requests
/// in flight, and librdkafka's broker thread spins while a ready batch waits for a free slot: against the local
/// broker at 10,000 events/s that thread took 12–39 % of a core with 5 ms, 2–3 % with 100 ms (`bench/REPORT.md`).
/// A usage event is not waited on by anyone, so it can wait this long; the config topic's producer sends at once.
const LINGER_MS: &str = "100";

/// What every client starts from: the bootstrap servers, its client id and the operator's `kafka.properties`
/// (security, timeouts) — [`KafkaConnection::client_config`]. Admin clients (topic creation) use it as it is.
pub fn client_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    connection(config).client_config(client_id)
}

/// The gateway's [`KafkaConnection`]: `kafka.brokers` with `kafka.properties`.
pub fn connection(config: &KafkaConfig) -> KafkaConnection {
    KafkaConnection::new(config.brokers.clone()).with_properties(config.properties.clone())
}

/// An idempotent producer that waits for every in-sync replica; `kafka.properties` are applied last (validation
/// refuses those that would weaken delivery).
pub fn producer_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = client_config(config, client_id);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", LINGER_MS)
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
/// commits (the group id is unique and never joined), and fetches answered within 10 ms of new data. The
/// operator's `kafka.properties` apply (security above all), except where they would make it something else:
/// its group and commit settings are set after them.
pub fn follower_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = connection(config).groupless_consumer_config(client_id, "tollgate-gateway-follower");
    c.set("fetch.wait.max.ms", "10");
    c
}

/// The canary a health check produces and reads back: proof that the broker's storage takes and serves records,
/// which a metadata answer is not (a broker whose storage died still answers metadata). Creates `topic` (one
/// partition) when missing, produces one record with a fresh producer (no idempotent state a restarted broker
/// could have lost), and reads it back from its offset; how long the round trip took, or why it failed.
pub fn canary(brokers: &str, topic: &str, timeout: Duration) -> Result<Duration, KafkaOpError> {
    use rdkafka::Message;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord};
    use rdkafka::types::RDKafkaErrorCode;

    let started = std::time::Instant::now();
    let deadline = started + timeout;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", brokers)
        .set("client.id", "tollgate-broker-check")
        .set("socket.timeout.ms", timeout.as_millis().max(10).to_string());
    let admin: AdminClient<DefaultClientContext> = base
        .create()
        .map_err(KafkaOpError::client("create the canary's admin client"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let options = AdminOptions::new().operation_timeout(Some(left()));
    let created = runtime
        .block_on(admin.create_topics([&NewTopic::new(topic, 1, TopicReplication::Fixed(-1))], &options))
        .map_err(KafkaOpError::client("create the canary topic"))?;
    for result in created {
        if let Err((_, code)) = result
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(KafkaOpError::Refused {
                operation: "create the canary topic",
                code,
            });
        }
    }
    let marker = uuid::Uuid::now_v7().to_string();
    let mut producer_config = base.clone();
    producer_config
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", timeout.as_millis().max(10).to_string());
    let producer: BaseProducer = producer_config
        .create()
        .map_err(KafkaOpError::client("create the canary's producer"))?;
    producer
        .send(BaseRecord::<str, str>::to(topic).key("canary").payload(&marker))
        .map_err(|(e, _)| KafkaOpError::client("produce the canary record")(e))?;
    // A delivery that failed shows as a record that cannot be read back.
    rdkafka::producer::Producer::flush(&producer, left())
        .map_err(KafkaOpError::client("deliver the canary record"))?;
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", format!("tollgate-broker-check-{marker}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(KafkaOpError::client("create the canary's consumer"))?;
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, left())
        .map_err(KafkaOpError::client("read the end of the canary topic"))?;
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, 0, rdkafka::Offset::Offset((high - 8).max(0)))
        .map_err(KafkaOpError::client("list the canary topic's partition"))?;
    consumer
        .assign(&list)
        .map_err(KafkaOpError::client("assign the canary topic's partition"))?;
    while !left().is_zero() {
        match consumer.poll(left().min(Duration::from_millis(200))) {
            Some(Ok(message)) if message.payload() == Some(marker.as_bytes()) => return Ok(started.elapsed()),
            Some(Err(error)) => return Err(KafkaOpError::client("read the canary record back")(error)),
            _ => {}
        }
    }
    Err(KafkaOpError::Incomplete {
        operation: "read the canary record back",
        detail: format!("not read back within {timeout:?}"),
    })
}
