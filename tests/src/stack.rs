//! A whole Tollgate in one test process, against real infrastructure.
//!
//! [`Stack::start`] binds every service to port 0: the mock provider, meter-sidecar, the gateway (configured
//! from TOML like in production; optionally a second replica of it), billing-consumer's ingest loop and — when
//! the configuration has token limits — its quota loop, built from the same TOML. Kafka and ClickHouse are the real ones
//! started by `compose/test`, whose addresses arrive in `TOLLGATE_TEST_KAFKA_BROKERS` and
//! `TOLLGATE_TEST_CLICKHOUSE_URL`. Each stack gets its own topics, consumer group and ClickHouse database, so
//! tests run in parallel and never see each other's rows.

#![allow(clippy::expect_used, clippy::panic)] // test support: a failed expectation is a failed test

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::ingest::IngestSettings;
use tollgate_billing_consumer::kafka::KafkaSettings;
use tollgate_billing_consumer::ledger::ClickHouseSettings;
use tollgate_billing_consumer::ledger::pricing::PriceTable;
use tollgate_billing_consumer::quota::QuotaSettings;
use tollgate_billing_consumer::reports::invoice::{Billed, Invoice, Period, invoice_of};
use tollgate_billing_consumer::service::{self, ServiceSettings, UsageTopicLayout};
use tollgate_gateway::clock::{Clock, ManualClock, SystemClock};
use tollgate_gateway::http::server::GatewayHandle;
use tollgate_gateway::{Config, Gateway};
use tollgate_schemas::quota::{HEARTBEAT_KEY, QuotaHeartbeatEvent, QuotaSnapshot, QuotaSnapshotEvent};

use crate::mock_provider::MockProvider;

/// The provider key the gateway's instances send; the mock refuses any other.
pub const PROVIDER_KEY: &str = "sk-provider-test-secret";

/// Consumers of every stack: (name, key id, key).
pub const CONSUMERS: [(&str, &str, &str); 3] = [
    ("team-a", "team-a-key-1", "sk-team-a-0123456789"),
    ("team-b", "team-b-key-1", "sk-team-b-0123456789"),
    ("team-c", "team-c-key-1", "sk-team-c-0123456789"),
];

/// The model clients ask for, and the name the instance sends upstream instead.
pub const MODEL: &str = "gpt-4o-mini";
pub const UPSTREAM_MODEL: &str = "gpt-4o-mini-2024-07-18";

/// `extra_toml` for a route that mixes protocols: model `frontier` on an OpenAI instance `gpt` (the mock,
/// preferred, serving as `gpt-4o-2024-08-06`) and an Anthropic instance `claude` (the second mock, serving as
/// `claude-sonnet-4-5`), on both `/v1/chat/completions` and `/v1/messages`. Needs `second_mock`.
pub const MIXED_ROUTE: &str = r#"
[[instances]]
name = "gpt"
provider = "openai"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
model = "gpt-4o-2024-08-06"
[[instances]]
name = "claude"
provider = "anthropic"
endpoint = "{mock2}"
api_key_env = "PROVIDER_KEY"
model = "claude-sonnet-4-5"
[[routes]]
name = "frontier"
models = ["frontier"]
paths = ["/v1/chat/completions", "/v1/messages"]
targets = [{ instance = "gpt", priority = 2 }, { instance = "claude", priority = 1 }]
"#;

/// Where the real infrastructure is.
#[derive(Debug, Clone)]
pub struct Infra {
    pub brokers: String,
    pub clickhouse_url: String,
}

impl Infra {
    /// Reads the infrastructure's addresses from the environment.
    ///
    /// # Panics
    /// When they are not set: these tests need the real broker and ClickHouse, which `compose/test` starts.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set: run the tests with `compose/test`, which starts Kafka and ClickHouse"
                )
            })
        };
        Self {
            brokers: var("TOLLGATE_TEST_KAFKA_BROKERS"),
            clickhouse_url: var("TOLLGATE_TEST_CLICKHOUSE_URL"),
        }
    }
}

/// How to shape a stack beyond the defaults.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Start meter-sidecar; when false, the gateway's meter URL points at a closed port.
    pub meter: bool,
    /// TOML appended to the gateway's configuration. `{mock}` becomes the mock's endpoint (`{mock_origin}` the
    /// same without its `/v1`, as an Azure OpenAI resource's endpoint has none) and `{closed}` an
    /// endpoint where nothing listens.
    pub extra_toml: String,
    /// Replaces the default route's `targets` when set.
    pub default_targets: Option<String>,
    /// Start a second mock provider, reachable as `{mock2}` in `extra_toml`.
    pub second_mock: bool,
    /// TOML added inside a consumer's `[[consumers]]` table, e.g. its `token_limits`.
    pub consumer_toml: Vec<(&'static str, String)>,
    /// Run billing-consumer's quota loop when the configuration has token limits (off: gateways see no
    /// snapshots, as when the quota topic is unreachable).
    pub quota_loop: bool,
    /// Run billing-consumer (ingest and the quota loop) in this process; off: the test runs it itself, e.g. as a
    /// [`crate::procs::ChildBillingConsumer`] it can kill.
    pub billing: bool,
    /// Start a second gateway replica with the same configuration (`gateway2_url`).
    pub second_gateway: bool,
    /// The gateways' clock; the wall clock when `None`.
    pub clock: Option<Arc<ManualClock>>,
    /// The broker the gateways, billing-consumer's loops and the topic set-up use instead of the shared one
    /// (e.g. a [`crate::procs::PrivateBroker`] a fault test stops and resumes); [`Stack::infra`] names it.
    pub brokers: Option<String>,
    /// The first gateway's spool directory (a second replica's is the same path with `-2` appended); a fresh
    /// scratch directory, removed by [`Stack::stop`], when `None`.
    pub spool_dir: Option<PathBuf>,
    /// TOML added inside the gateways' `[spool]` table, e.g. `max_bytes = 65536` or `after = "200ms"`.
    pub spool_toml: String,
    /// TOML added inside the gateways' `[server]` table, e.g. `metering = false`.
    pub server_toml: String,
    /// A price file (`[[prices]]`) that billing-consumer's ingest prices events with; none by default (every
    /// event unpriced).
    pub prices_toml: Option<String>,
    /// Serve billing-consumer's usage statements (`GET /v1/usage`, as `run` does on its endpoint) and point the
    /// gateways' `[billing] url` at them.
    pub usage_api: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            meter: true,
            extra_toml: String::new(),
            default_targets: None,
            second_mock: false,
            consumer_toml: Vec::new(),
            quota_loop: true,
            billing: true,
            prices_toml: None,
            usage_api: false,
            second_gateway: false,
            clock: None,
            brokers: None,
            spool_dir: None,
            spool_toml: String::new(),
            server_toml: String::new(),
        }
    }
}

/// A running stack. Call [`Stack::stop`] at the end of the test.
#[derive(Debug)]
pub struct Stack {
    pub infra: Infra,
    pub mock: MockProvider,
    pub mock2: Option<MockProvider>,
    pub gateway_url: String,
    /// The second replica, when [`StackOptions::second_gateway`] asked for one.
    pub gateway2_url: Option<String>,
    /// The first gateway's admin API, when `extra_toml` configures an admin key (`[admin] listen` port 0 picks
    /// a free port).
    pub admin_url: Option<String>,
    /// The second replica's admin API, when there is a second replica and an admin key.
    pub admin2_url: Option<String>,
    /// The first gateway's metrics listener, when `server_toml` sets `metrics_listen` (port 0 picks a free port).
    pub metrics_url: Option<String>,
    pub meter_url: String,
    pub topic: String,
    /// The compacted topic of quota snapshots.
    pub quota_topic: String,
    /// A config topic of this stack's own, which `extra_toml` names as `{config_topic}` (e.g. in `[admin]`).
    pub config_topic: String,
    /// The gateways' configuration, as billing-consumer's quota loop reads it too.
    pub gateway_toml: String,
    pub clickhouse: ClickHouseSettings,
    pub metrics: PrometheusHandle,
    /// The first gateway's spool directory.
    pub spool_dir: PathBuf,
    /// Spool directories the stack made, removed by [`Stack::stop`].
    scratch_spools: Vec<PathBuf>,
    gateways: Vec<(GatewayHandle, tokio::sync::oneshot::Receiver<()>)>,
    meter: Option<ServerHandle>,
    ingest_shutdown: CancellationToken,
    ingest: Option<std::thread::JoinHandle<()>>,
    quota_loop: Option<QuotaLoop>,
}

/// billing-consumer's quota loop on its own thread and runtime.
#[derive(Debug)]
pub struct QuotaLoop {
    shutdown: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl QuotaLoop {
    /// Starts the loop for the token limits of `gateway_toml`; `None` when it has none.
    pub fn start(brokers: &str, usage_topic: &str, quota_topic: &str, gateway_toml: &str) -> Option<Self> {
        let scopes = tollgate_billing_consumer::quota::policy::from_gateway_toml(gateway_toml)
            .unwrap_or_else(|e| panic!("quota policy of the test config: {e:?}"));
        if scopes.is_empty() {
            return None;
        }
        // Budgets are priced with the gateways' `[billing] prices` file, as `billing-consumer --prices` would.
        let prices = toml::from_str::<toml::Value>(gateway_toml)
            .ok()
            .and_then(|config| {
                let path = config.get("billing")?.get("prices")?.as_str()?.to_owned();
                Some(std::fs::read_to_string(path).expect("the gateways' price file"))
            })
            .map_or_else(PriceTable::default, |text| {
                PriceTable::from_toml(&text)
                    .unwrap_or_else(|problems| panic!("the test's price file: {problems:?}"))
            });
        let mut settings = QuotaSettings::new(
            brokers,
            usage_topic,
            quota_topic,
            scopes,
            "tollgate-billing-consumer/test",
        );
        // Tests that move the gateway's clock put its events up to an hour ahead of the broker on purpose; the
        // loop believes them (clock-skew clamping has its own tests in billing-consumer/tests/quota.rs).
        settings.max_clock_skew = Duration::from_secs(2 * 3600);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("quota runtime");
            let service = ServiceSettings {
                kafka: settings.kafka.clone(),
                ingest: None,
                quota: Some(settings),
                config_topic: None,
                file_prices: Arc::new(prices),
            };
            if let Err(e) = runtime.block_on(service::run(service, token)) {
                panic!("billing-consumer quota loop failed: {e}");
            }
        });
        Some(Self { shutdown, thread })
    }

    /// Stops the loop and waits for it.
    pub fn stop(self) {
        self.shutdown.cancel();
        self.thread.join().expect("quota thread");
    }
}

/// The process-wide Prometheus recorder (one per process; every in-process service renders from it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            tollgate_gateway::metrics::install_recorder().expect("install the Prometheus recorder")
        })
        .clone()
}

/// Logs of every in-process service go to the test's output (shown for failed tests); `RUST_LOG` filters.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn local_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a local port")
}

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub request_id: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A response header, parsed as a number.
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.parse().ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The test client: one per thread, reused, because building an awc client sets up a TLS connector each time.
pub fn http() -> awc::Client {
    thread_local! {
        static CLIENT: awc::Client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    }
    CLIENT.with(Clone::clone)
}

/// An address where nothing listens (bound, then released).
pub fn closed_endpoint() -> String {
    let addr = local_listener().local_addr().expect("local address");
    format!("http://{addr}/v1")
}

impl Stack {
    /// A billing-consumer child process's settings on this stack's broker, topics and database, in `group`.
    pub fn child_billing_config<'a>(&'a self, group: &'a str) -> crate::procs::ChildBillingConfig<'a> {
        crate::procs::ChildBillingConfig {
            brokers: &self.infra.brokers,
            clickhouse_url: &self.clickhouse.url,
            database: &self.clickhouse.database,
            usage_topic: &self.topic,
            quota_topic: &self.quota_topic,
            group,
            gateway_toml: &self.gateway_toml,
        }
    }

    /// Starts a stack inside the current actix system (`#[actix_rt::test]`).
    pub async fn start(mut options: StackOptions) -> Self {
        init_tracing();
        let mut infra = Infra::from_env();
        if let Some(brokers) = &options.brokers {
            infra.brokers.clone_from(brokers);
        }
        let run = uuid::Uuid::now_v7().simple().to_string();
        let topic = format!("tollgate.usage.v1.test-{run}");
        let quota_topic = format!("tollgate.quota.v1.test-{run}");
        let config_topic = format!("tollgate.config.v1.test-{run}");
        options.extra_toml = options.extra_toml.replace("{config_topic}", &config_topic);
        let clickhouse = ClickHouseSettings {
            url: infra.clickhouse_url.clone(),
            database: format!("tollgate_test_{run}"),
            user: "default".into(),
            password: None,
            cluster: None,
        };
        let metrics = metrics_handle();

        // Creating a topic is idempotent; a busy broker may time out an admin request, so try a few times.
        let mut tries = 0;
        while let Err(e) =
            tollgate_billing_consumer::kafka::topics::ensure(&infra.brokers.as_str().into(), &topic, 3).await
        {
            tries += 1;
            assert!(tries < 5, "create the usage topic: {e}");
            actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        }
        let mut tries = 0;
        while let Err(e) = tollgate_billing_consumer::kafka::topics::ensure_quota(
            &infra.brokers.as_str().into(),
            &quota_topic,
        )
        .await
        {
            tries += 1;
            assert!(tries < 5, "create the quota topic: {e}");
            actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        }
        tollgate_billing_consumer::ledger::migrations::apply(&clickhouse)
            .await
            .expect("apply ClickHouse migrations");

        let (mock, mock_server) =
            MockProvider::start(local_listener(), Some(PROVIDER_KEY.into())).expect("mock");
        actix_web::rt::spawn(mock_server);
        let mock2 = options.second_mock.then(|| {
            let (mock2, server) =
                MockProvider::start(local_listener(), Some(PROVIDER_KEY.into())).expect("mock2");
            actix_web::rt::spawn(server);
            mock2
        });

        let (meter_url, meter) = if options.meter {
            let listener = local_listener();
            let url = format!("http://{}", listener.local_addr().expect("meter address"));
            let config = tollgate_meter_sidecar::config::Config {
                workers: 1,
                ..Default::default()
            };
            let server =
                tollgate_meter_sidecar::server::build(config, listener, metrics.clone()).expect("meter");
            let handle = server.handle();
            actix_web::rt::spawn(server);
            (url, Some(handle))
        } else {
            (closed_endpoint().trim_end_matches("/v1").to_owned(), None)
        };

        let mock2_endpoint = mock2
            .as_ref()
            .map_or_else(closed_endpoint, MockProvider::endpoint);
        let (spool_dir, scratch_spools) = match &options.spool_dir {
            Some(dir) => (dir.clone(), Vec::new()),
            None => {
                let dir = crate::procs::scratch_dir("spool");
                (dir.clone(), vec![dir])
            }
        };
        options.spool_dir = Some(spool_dir.clone());
        let mut billing_section = String::new();
        if let Some(prices) = &options.prices_toml {
            // The gateways reserve and settle budgets at the prices billing-consumer bills with.
            let path = crate::procs::scratch_dir("prices").join("prices.toml");
            std::fs::write(&path, prices).expect("the test's price file");
            billing_section.push_str(&format!("prices = \"{}\"\n", path.display()));
        }
        if options.usage_api {
            let port = free_port();
            let listen: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            tollgate_billing_consumer::telemetry::endpoint::serve(
                listen,
                metrics.clone(),
                Some(clickhouse.clone()),
            )
            .await
            .expect("billing-consumer's endpoint");
            billing_section.push_str(&format!("url = \"http://{listen}\"\n"));
        }
        if !billing_section.is_empty() {
            options.extra_toml = format!("[billing]\n{billing_section}{}", options.extra_toml);
        }
        let toml = gateway_toml(
            &infra,
            &topic,
            &quota_topic,
            &meter_url,
            &mock.endpoint(),
            &mock2_endpoint,
            &options,
        );
        let clock: Arc<dyn Clock> = match &options.clock {
            Some(clock) => clock.clone(),
            None => Arc::new(SystemClock),
        };
        let replicas = if options.second_gateway { 2 } else { 1 };
        let mut gateways = Vec::new();
        let mut urls = Vec::new();
        let mut admin_urls = Vec::new();
        let mut metrics_urls = Vec::new();
        for replica in 1..=replicas {
            // The first replica is `test-gw`; a second one is `test-gw-2`, with a spool directory of its own.
            let text = if replica == 1 {
                toml.clone()
            } else {
                toml.replace(
                    "instance_id = \"test-gw\"",
                    &format!("instance_id = \"test-gw-{replica}\""),
                )
                .replace(
                    &spool_dir_line(&spool_dir),
                    &spool_dir_line(&PathBuf::from(format!("{}-{replica}", spool_dir.display()))),
                )
            };
            let config = Config::from_toml_with_env(&text, |name| {
                (name == "PROVIDER_KEY").then(|| PROVIDER_KEY.into())
            })
            .unwrap_or_else(|e| panic!("test gateway config:\n{e}\n{text}"));
            let listener = local_listener();
            urls.push(format!(
                "http://{}",
                listener.local_addr().expect("gateway address")
            ));
            let gateway =
                Gateway::start_with_clock(config, listener, metrics.clone(), clock.clone()).expect("gateway");
            admin_urls.push(gateway.admin_addr().map(|addr| format!("http://{addr}")));
            metrics_urls.push(gateway.metrics_addr().map(|addr| format!("http://{addr}")));
            let handle = gateway.handle();
            let (done_tx, done) = tokio::sync::oneshot::channel();
            actix_web::rt::spawn(async move {
                let _ = gateway.run().await;
                let _ = done_tx.send(());
            });
            gateways.push((handle, done));
        }
        let gateway_url = urls.remove(0);
        let gateway2_url = urls.pop();
        let mut admin_urls = admin_urls.into_iter().flatten();
        let admin_url = admin_urls.next();
        let admin2_url = admin_urls.next();
        let metrics_url = metrics_urls.into_iter().next().flatten();
        let quota_loop = (options.quota_loop && options.billing)
            .then(|| QuotaLoop::start(&infra.brokers, &topic, &quota_topic, &toml))
            .flatten();
        if quota_loop.is_some() {
            wait_for_live_quota_loop(&infra.brokers, &quota_topic);
        }

        let ingest_shutdown = CancellationToken::new();
        let settings = IngestSettings {
            kafka: KafkaSettings {
                connection: infra.brokers.as_str().into(),
                topic: topic.clone(),
                group_id: format!("billing-{run}"),
            },
            clickhouse: clickhouse.clone(),
            batch_size: 500,
            batch_wait: Duration::from_millis(100),
        };
        let token = ingest_shutdown.clone();
        let file_prices = options
            .prices_toml
            .as_deref()
            .map_or_else(PriceTable::default, |text| {
                PriceTable::from_toml(text)
                    .unwrap_or_else(|problems| panic!("the test's price file: {problems:?}"))
            });
        let ingest = options.billing.then(|| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build();
                let runtime = runtime.expect("ingest runtime");
                // The same wiring as `billing-consumer run`: topic and schema checked, then the ingest loop.
                let service = ServiceSettings {
                    kafka: settings.kafka.connection.clone(),
                    ingest: Some((
                        settings,
                        UsageTopicLayout {
                            partitions: 3,
                            replication_factor: 1,
                        },
                    )),
                    quota: None,
                    config_topic: None,
                    file_prices: Arc::new(file_prices),
                };
                if let Err(e) = runtime.block_on(service::run(service, token)) {
                    panic!("billing-consumer ingest failed: {e}");
                }
            })
        });

        Self {
            infra,
            mock,
            mock2,
            gateway_url,
            gateway2_url,
            admin_url,
            admin2_url,
            metrics_url,
            meter_url,
            topic,
            quota_topic,
            config_topic,
            gateway_toml: toml,
            clickhouse,
            metrics,
            spool_dir,
            scratch_spools,
            gateways,
            meter,
            ingest_shutdown,
            ingest,
            quota_loop,
        }
    }

    /// Stops the gateway gracefully (its queued events reach Kafka), then the ingest loop and the other services.
    pub async fn stop(mut self) {
        for (handle, done) in &mut self.gateways {
            handle.stop(true).await;
            let _ = done.await;
        }
        for dir in &self.scratch_spools {
            for replica in [dir.clone(), PathBuf::from(format!("{}-2", dir.display()))] {
                let _ = std::fs::remove_dir_all(replica);
            }
        }
        self.ingest_shutdown.cancel();
        if let Some(quota_loop) = self.quota_loop.take() {
            quota_loop.stop();
        }
        if let Some(ingest) = self.ingest.take() {
            ingest.join().expect("ingest thread");
        }
        if let Some(meter) = &self.meter {
            meter.stop(true).await;
        }
        self.mock.stop().await;
        if let Some(mock2) = &self.mock2 {
            mock2.stop().await;
        }
    }

    /// Stops billing-consumer's quota loop (as a crash or a deploy would).
    pub fn stop_quota_loop(&mut self) {
        if let Some(quota_loop) = self.quota_loop.take() {
            quota_loop.stop();
        }
    }

    /// Starts a new quota loop on the same topics; it rebuilds its windows from the usage topic.
    pub fn start_quota_loop(&mut self) {
        self.stop_quota_loop();
        self.quota_loop = QuotaLoop::start(
            &self.infra.brokers,
            &self.topic,
            &self.quota_topic,
            &self.gateway_toml,
        );
    }

    /// The newest snapshot of every scope on the quota topic, read from its beginning to its end: of its newest
    /// window (each window is its own snapshot), the last published.
    pub fn latest_snapshots(&self) -> HashMap<String, QuotaSnapshot> {
        self.try_latest_snapshots().expect("read the quota topic")
    }

    /// [`Stack::latest_snapshots`], or why the broker could not give them (e.g. while it restarts).
    pub fn try_latest_snapshots(&self) -> Result<HashMap<String, QuotaSnapshot>, String> {
        let mut latest = HashMap::new();
        read_quota_topic(&self.infra.brokers, &self.quota_topic, |key, payload| {
            if key != Some(HEARTBEAT_KEY.as_bytes())
                && let Ok(event) = serde_json::from_slice::<QuotaSnapshotEvent>(payload)
            {
                // One snapshot per (scope, window): keep the newest window's latest.
                let newer = latest
                    .get(&event.data.scope)
                    .is_none_or(|held: &QuotaSnapshot| held.window_start_ms <= event.data.window_start_ms);
                if newer {
                    latest.insert(event.data.scope.clone(), event.data);
                }
            }
            false
        })?;
        Ok(latest)
    }

    /// POSTs `body` to the gateway's `path` with `headers` and reads the response to its end (a stream too).
    pub async fn post_json(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        self.post_json_to(&self.gateway_url, path, headers, body).await
    }

    /// [`Stack::post_json`] against a given gateway replica.
    pub async fn post_json_to(
        &self,
        base: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Reply {
        let request = || {
            let mut request = http().post(format!("{base}{path}"));
            for (name, value) in headers {
                request = request.insert_header((*name, *value));
            }
            request
        };
        // A kept-alive connection the server closed while the test was busy elsewhere fails to connect; the
        // request was never sent, so sending it again is safe.
        let mut response = match request().send_json(body).await {
            Err(awc::error::SendRequestError::Connect(_)) => request().send_json(body).await,
            other => other,
        }
        .expect("the gateway answers");
        let request_id = request_id(response.headers());
        let mut bytes = Vec::new();
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut response).await {
            bytes.extend_from_slice(&chunk);
        }
        Reply {
            status: response.status().as_u16(),
            request_id,
            headers: response
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
            body: bytes,
        }
    }

    /// POSTs a chat completion `body` to `base` (a gateway replica) with the key of `consumer`, one of
    /// [`CONSUMERS`].
    pub async fn chat_as(&self, base: &str, consumer: &str, body: &Value) -> Reply {
        let key = CONSUMERS
            .iter()
            .find(|c| c.0 == consumer)
            .unwrap_or_else(|| panic!("{consumer} is not one of the stack's consumers"))
            .2;
        let auth = format!("Bearer {key}");
        self.post_json_to(
            base,
            "/v1/chat/completions",
            &[("authorization", auth.as_str())],
            body,
        )
        .await
    }

    /// The invoice of `billed` for the current UTC month, from this stack's ledger.
    pub async fn invoice_this_month(&self, billed: Billed) -> Invoice {
        let now = chrono::Utc::now();
        let month = format!(
            "{:04}-{:02}",
            chrono::Datelike::year(&now),
            chrono::Datelike::month(&now)
        );
        let period = Period::parse(&month).expect("a month is a period");
        invoice_of(&self.clickhouse, "usage_events", &billed, period, None)
            .await
            .expect("the invoice query")
    }

    /// Runs a query in this stack's database and returns the rows (`FORMAT JSONEachRow`, numbers unquoted).
    pub async fn query(&self, sql: &str) -> Vec<Value> {
        query(&self.clickhouse.url, &self.clickhouse.database, sql).await
    }

    /// Waits until the deduplicated usage table holds `expected` rows, and returns them all.
    pub async fn wait_for_usage_rows(&self, expected: usize, deadline: Duration) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let rows = self
                .query("SELECT * FROM usage_events FINAL ORDER BY started_at_ms, request_id")
                .await;
            if rows.len() >= expected || started.elapsed() > deadline {
                return rows;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs a query in `database` on the ClickHouse at `url` and returns the rows (`FORMAT JSONEachRow`, numbers
/// unquoted); reads wait for the end of the query, as billing reads do.
pub async fn query(url: &str, database: &str, sql: &str) -> Vec<Value> {
    let url = format!(
        "{}/?database={database}&wait_end_of_query=1&output_format_json_quote_64bit_integers=0",
        url.trim_end_matches('/'),
    );
    let mut response = http()
        .post(url)
        .send_body(format!("{sql} FORMAT JSONEachRow"))
        .await
        .expect("ClickHouse answers");
    let body = response.body().limit(256 << 20).await.expect("ClickHouse body");
    assert!(
        response.status().is_success(),
        "{sql}: {}",
        String::from_utf8_lossy(&body)
    );
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}

/// Reads the quota topic from its beginning to its end (or until `visit` returns true), handing every message's
/// key and payload to `visit`; an error when the broker does not give the topic's end.
fn read_quota_topic(
    brokers: &str,
    topic: &str,
    mut visit: impl FnMut(Option<&[u8]>, &[u8]) -> bool,
) -> Result<(), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("test-reader-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("quota reader");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_err(|e| format!("quota topic watermarks: {e}"))?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition list");
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next = 0;
    while next < high && Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        next = message.offset() + 1;
        if let Some(payload) = message.payload()
            && visit(message.key(), payload)
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Waits until the quota loop has rebuilt its windows and is publishing live (a heartbeat says so).
fn wait_for_live_quota_loop(brokers: &str, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut live = false;
        read_quota_topic(brokers, topic, |key, payload| {
            live = key == Some(HEARTBEAT_KEY.as_bytes())
                && serde_json::from_slice::<QuotaHeartbeatEvent>(payload)
                    .is_ok_and(|beat| !beat.data.rebuilding);
            live
        })
        .expect("read the quota topic");
        if live {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the quota loop never finished its rebuild"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `dir = …` line of a gateway's `[spool]` table.
fn spool_dir_line(dir: &std::path::Path) -> String {
    format!("dir = {:?}", dir.display().to_string())
}

fn gateway_toml(
    infra: &Infra,
    topic: &str,
    quota_topic: &str,
    meter_url: &str,
    mock: &str,
    mock2: &str,
    options: &StackOptions,
) -> String {
    let consumers: String = CONSUMERS
        .iter()
        .map(|(name, key_id, key)| {
            let sha = hex::encode(tollgate_gateway::admission::auth::hash_key(key.as_bytes()));
            let own: String = options
                .consumer_toml
                .iter()
                .filter(|(consumer, _)| consumer == name)
                .map(|(_, toml)| format!("{toml}\n"))
                .collect();
            format!(
                "[[consumers]]\nname = \"{name}\"\nkeys = [{{ id = \"{key_id}\", sha256 = \"{sha}\" }}]\n{own}\n"
            )
        })
        .collect();
    let targets = options
        .default_targets
        .clone()
        .unwrap_or_else(|| r#"[{ instance = "mock-openai" }]"#.into());
    let extra = options
        .extra_toml
        .replace("{mock2}", mock2)
        .replace("{mock_origin}", mock.trim_end_matches("/v1"))
        .replace("{mock}", mock)
        .replace("{closed}", &closed_endpoint());
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
instance_id = "test-gw"
{server}
workers = 2
shutdown_timeout = "10s"

[meter]
url = "{meter_url}"
timeout = "500ms"

[kafka]
brokers = "{brokers}"
usage_topic = "{topic}"
message_timeout = "20s"

[quota]
topic = "{quota_topic}"
max_snapshot_age = "3s"

[spool]
{spool_dir}
{spool}

[[instances]]
name = "mock-openai"
endpoint = "{mock}"
model = "{UPSTREAM_MODEL}"
api_key_env = "PROVIDER_KEY"
timeout = "5s"

[[routes]]
name = "{MODEL}"
models = ["{MODEL}"]
targets = {targets}

{extra}

{consumers}"#,
        brokers = infra.brokers,
        spool_dir = options
            .spool_dir
            .as_deref()
            .map(spool_dir_line)
            .unwrap_or_default(),
        spool = options.spool_toml,
        server = options.server_toml,
    )
}

/// The `x-request-id` a gateway answered with ("" without one).
pub fn request_id(headers: &actix_web::http::header::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Polls `ready` every `every` until it holds or `timeout` passes (then fails with `what`).
pub async fn eventually(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut ready: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !ready().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        actix_web::rt::time::sleep(every).await;
    }
}

/// The value of the sample `name` (with its labels, e.g. `x_total{reason="torn"}`) in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A port nothing listens on now, for a server that binds it itself right after.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}
