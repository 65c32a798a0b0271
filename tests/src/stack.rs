//! A whole Tollgate in one test process, against real infrastructure.
//!
//! [`Stack::start`] binds every service to port 0: the mock provider, meter-sidecar, the gateway (configured
//! from TOML like in production) and billing-consumer's ingest loop. Kafka and ClickHouse are the real ones
//! started by `compose/test`, whose addresses arrive in `TOLLGATE_TEST_KAFKA_BROKERS` and
//! `TOLLGATE_TEST_CLICKHOUSE_URL`. Each stack gets its own topic, consumer group and ClickHouse database, so
//! tests run in parallel and never see each other's rows.

#![allow(clippy::expect_used, clippy::panic)] // test support: a failed expectation is a failed test

use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::settings::{ClickHouseSettings, IngestSettings, KafkaSettings};
use tollgate_gateway::{Config, Gateway};

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
    /// TOML appended to the gateway's configuration. `{mock}` becomes the mock's endpoint and `{closed}` an
    /// endpoint where nothing listens.
    pub extra_toml: String,
    /// Replaces the default route's `targets` when set.
    pub default_targets: Option<String>,
    /// Start a second mock provider, reachable as `{mock2}` in `extra_toml`.
    pub second_mock: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            meter: true,
            extra_toml: String::new(),
            default_targets: None,
            second_mock: false,
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
    pub meter_url: String,
    pub topic: String,
    pub clickhouse: ClickHouseSettings,
    pub metrics: PrometheusHandle,
    gateway: ServerHandle,
    gateway_done: tokio::sync::oneshot::Receiver<()>,
    meter: Option<ServerHandle>,
    ingest_shutdown: CancellationToken,
    ingest: Option<std::thread::JoinHandle<()>>,
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
    pub body: Vec<u8>,
}

impl Reply {
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
    /// Starts a stack inside the current actix system (`#[actix_rt::test]`).
    pub async fn start(options: StackOptions) -> Self {
        init_tracing();
        let infra = Infra::from_env();
        let run = uuid::Uuid::now_v7().simple().to_string();
        let topic = format!("tollgate.usage.v1.test-{run}");
        let clickhouse = ClickHouseSettings {
            url: infra.clickhouse_url.clone(),
            database: format!("tollgate_test_{run}"),
            user: "default".into(),
            password: None,
        };
        let metrics = metrics_handle();

        // Creating a topic is idempotent; a busy broker may time out an admin request, so try a few times.
        let mut tries = 0;
        while let Err(e) = tollgate_billing_consumer::topics::ensure(&infra.brokers, &topic, 3).await {
            tries += 1;
            assert!(tries < 5, "create the usage topic: {e}");
            actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        }
        tollgate_billing_consumer::migrations::apply(&clickhouse)
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

        let listener = local_listener();
        let gateway_url = format!("http://{}", listener.local_addr().expect("gateway address"));
        let mock2_endpoint = mock2
            .as_ref()
            .map_or_else(closed_endpoint, MockProvider::endpoint);
        let toml = gateway_toml(
            &infra,
            &topic,
            &meter_url,
            &mock.endpoint(),
            &mock2_endpoint,
            &options,
        );
        let config = Config::from_toml_with_env(&toml, |name| {
            (name == "PROVIDER_KEY").then(|| PROVIDER_KEY.into())
        })
        .unwrap_or_else(|e| panic!("test gateway config:\n{e}\n{toml}"));
        let gateway = Gateway::start(config, listener, metrics.clone()).expect("gateway");
        let gateway_handle = gateway.handle();
        let (done_tx, gateway_done) = tokio::sync::oneshot::channel();
        actix_web::rt::spawn(async move {
            let _ = gateway.run().await;
            let _ = done_tx.send(());
        });

        let ingest_shutdown = CancellationToken::new();
        let settings = IngestSettings {
            kafka: KafkaSettings {
                brokers: infra.brokers.clone(),
                topic: topic.clone(),
                group_id: format!("billing-{run}"),
            },
            clickhouse: clickhouse.clone(),
            batch_size: 500,
            batch_wait: Duration::from_millis(100),
        };
        let token = ingest_shutdown.clone();
        let ingest = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build();
            let runtime = runtime.expect("ingest runtime");
            if let Err(e) = runtime.block_on(tollgate_billing_consumer::ingest::run(settings, token)) {
                panic!("billing-consumer ingest failed: {e}");
            }
        });

        Self {
            infra,
            mock,
            mock2,
            gateway_url,
            meter_url,
            topic,
            clickhouse,
            metrics,
            gateway: gateway_handle,
            gateway_done,
            meter,
            ingest_shutdown,
            ingest: Some(ingest),
        }
    }

    /// Stops the gateway gracefully (its queued events reach Kafka), then the ingest loop and the other services.
    pub async fn stop(mut self) {
        self.gateway.stop(true).await;
        let _ = (&mut self.gateway_done).await;
        self.ingest_shutdown.cancel();
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

    /// POSTs `body` to the gateway's `path` with `headers` and reads the response to its end (a stream too).
    pub async fn post_json(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut request = http().post(format!("{}{path}", self.gateway_url));
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        let mut response = request.send_json(body).await.expect("the gateway answers");
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut bytes = Vec::new();
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut response).await {
            bytes.extend_from_slice(&chunk);
        }
        Reply {
            status: response.status().as_u16(),
            request_id,
            body: bytes,
        }
    }

    /// Runs a query in this stack's database and returns the rows (`FORMAT JSONEachRow`, numbers unquoted).
    pub async fn query(&self, sql: &str) -> Vec<Value> {
        let url = format!(
            "{}/?database={}&wait_end_of_query=1&output_format_json_quote_64bit_integers=0",
            self.clickhouse.url.trim_end_matches('/'),
            self.clickhouse.database
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

fn gateway_toml(
    infra: &Infra,
    topic: &str,
    meter_url: &str,
    mock: &str,
    mock2: &str,
    options: &StackOptions,
) -> String {
    let consumers: String = CONSUMERS
        .iter()
        .map(|(name, key_id, key)| {
            let sha = hex::encode(tollgate_gateway::auth::hash_key(key.as_bytes()));
            format!(
                "[[consumers]]\nname = \"{name}\"\nkeys = [{{ id = \"{key_id}\", sha256 = \"{sha}\" }}]\n\n"
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
        .replace("{mock}", mock)
        .replace("{closed}", &closed_endpoint());
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
instance_id = "test-gw"
workers = 2
shutdown_timeout = "10s"

[meter]
url = "{meter_url}"
timeout = "500ms"

[kafka]
brokers = "{brokers}"
usage_topic = "{topic}"
message_timeout = "20s"

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
    )
}
