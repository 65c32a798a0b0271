//! Processes a fault test owns outright, so that it can kill them without disturbing the tests that share the
//! stack's broker and ClickHouse:
//!
//! - [`workspace_binary`] — a Tollgate binary built by cargo, to run as a child process that can be `kill -9`ed;
//! - [`PrivateBroker`] — a Kafka-protocol broker (Tansu, SQLite storage) of its own on a free port, that can be
//!   stopped and started again on the same port and storage;
//! - [`PrivateClickHouse`] — a ClickHouse server of its own, from the same configuration `compose/infra-up` uses;
//! - [`ChildGateway`] — the real `gateway` binary on a port of its own, to stop with a signal or `kill -9` and
//!   start again on the same port and spool.
//!
//! Where the broker and ClickHouse binaries are comes from `TOLLGATE_TEST_TANSU_BIN` and
//! `TOLLGATE_TEST_CLICKHOUSE_BIN` (set by `compose/test`), with the locations `compose/install` uses as defaults.

#![allow(clippy::expect_used, clippy::panic)] // test support: a failed expectation is a failed test

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;

use crate::stack::{CONSUMERS, MODEL, PROVIDER_KEY, UPSTREAM_MODEL, http};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The path of `bin` from `package`, built (debug profile) the first time a process asks for it.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let path = target.join("debug").join(bin);
    if !built.iter().any(|b| b == bin) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", package, "--bin", bin])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} --bin {bin} failed");
        built.push(bin.to_owned());
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A free local port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A fresh scratch directory under the system's temp dir.
pub fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-{what}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Sends SIGTERM (a graceful stop) to a child and waits for it, at most `grace`, then SIGKILL.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill9(child);
}

/// `kill -9`: no chance to flush or say goodbye.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not come up within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Kafka-protocol broker of the test's own.
#[derive(Debug)]
pub struct PrivateBroker {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts a broker on a free port with empty storage and waits until it answers metadata requests.
    pub fn start() -> Self {
        let mut broker = Self {
            port: free_port(),
            dir: scratch_dir("broker"),
            child: None,
        };
        broker.resume();
        broker
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGTERM); its storage stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }

    /// Kills the broker with SIGKILL (`kill -9`): no flush, no clean shutdown; its storage stays as it was.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child);
        }
    }

    /// Starts it again on the same port and storage, and waits until it answers.
    pub fn resume(&mut self) {
        let bin = std::env::var_os("TOLLGATE_TEST_TANSU_BIN")
            .map_or_else(|| home().join(".cache/tollgate/tansu/bin/tansu"), PathBuf::from);
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("broker log");
        let child = Command::new(&bin)
            .args(["broker", "--cluster-id", "tollgate-test"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env(
                "RUST_LOG",
                std::env::var("TOLLGATE_TEST_BROKER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start the broker {}: {e}", bin.display()));
        self.child = Some(child);
        let brokers = self.brokers();
        wait_until("the private broker", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok() && answers_metadata(&brokers)
        });
    }
}

fn answers_metadata(brokers: &str) -> bool {
    let consumer: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tollgate-test-probe")
        .create();
    consumer.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "the private broker's storage and log are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A ClickHouse server of the test's own.
#[derive(Debug)]
pub struct PrivateClickHouse {
    http_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateClickHouse {
    /// Starts a server on free ports with an empty data directory and waits until it answers `/ping`.
    pub fn start() -> Self {
        let dir = scratch_dir("clickhouse");
        let http_port = free_port();
        let tcp_port = free_port();
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).expect("clickhouse etc");
        let compose = workspace_root().join("compose/clickhouse");
        let config = std::fs::read_to_string(compose.join("config.xml"))
            .expect("compose/clickhouse/config.xml")
            .replace("@DATA_DIR@", &dir.join("db").display().to_string())
            .replace("@LOG_DIR@", &dir.join("log").display().to_string())
            .replace("@HTTP_PORT@", &http_port.to_string())
            .replace("@TCP_PORT@", &tcp_port.to_string());
        std::fs::write(etc.join("config.xml"), config).expect("write config.xml");
        std::fs::copy(compose.join("users.xml"), etc.join("users.xml")).expect("copy users.xml");
        let mut server = Self {
            http_port,
            dir,
            child: None,
        };
        server.resume();
        server
    }

    /// The HTTP endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Stops the server (SIGTERM); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(20));
        }
    }

    /// Starts it again on the same ports and data, and waits until it answers.
    pub fn resume(&mut self) {
        let bin = std::env::var_os("TOLLGATE_TEST_CLICKHOUSE_BIN")
            .map_or_else(|| PathBuf::from("/usr/sbin/clickhouse-server"), PathBuf::from);
        let db = self.dir.join("db");
        std::fs::create_dir_all(&db).expect("clickhouse db dir");
        let child = Command::new(&bin)
            .arg(format!(
                "--config-file={}",
                self.dir.join("etc/config.xml").display()
            ))
            .current_dir(&db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start ClickHouse {}: {e}", bin.display()));
        self.child = Some(child);
        let ping = format!("{}/ping", self.url());
        wait_until("the private ClickHouse", Duration::from_secs(60), || {
            Command::new("curl")
                .args(["-fsS", "-o", "/dev/null", "--max-time", "1", &ping])
                .status()
                .is_ok_and(|s| s.success())
        });
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// The real `gateway` binary as a child process on a port of its own.
#[derive(Debug)]
pub struct ChildGateway {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
    /// Its configuration file, for [`ChildGateway::restart`].
    config: PathBuf,
}

/// What the child gateways are configured with.
#[derive(Debug)]
pub struct ChildConfig<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub mock: &'a str,
    pub spool_dir: &'a Path,
    /// Lines inside `[spool]`.
    pub spool: &'a str,
    /// Lines inside `[server]`.
    pub server: &'a str,
}

impl ChildGateway {
    /// Writes its configuration to `scratch/<name>.toml`, starts it (log in `scratch/<name>.log`) and waits
    /// until it answers `/healthz`.
    pub async fn start(config: &ChildConfig<'_>, scratch: &Path, name: &str) -> Self {
        Self::start_as(config, scratch, name, "spool-test", free_port()).await
    }

    /// [`ChildGateway::start`] as replica `instance_id` (`server.instance_id`) on `port`.
    pub async fn start_as(
        config: &ChildConfig<'_>,
        scratch: &Path,
        name: &str,
        instance_id: &str,
        port: u16,
    ) -> Self {
        let consumers: String = CONSUMERS
            .iter()
            .map(|(consumer, key_id, key)| {
                let sha = hex::encode(tollgate_gateway::admission::auth::hash_key(key.as_bytes()));
                format!("[[consumers]]\nname = \"{consumer}\"\nkeys = [{{ id = \"{key_id}\", sha256 = \"{sha}\" }}]\n")
            })
            .collect();
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
instance_id = "{instance_id}"
workers = 2
shutdown_timeout = "5s"
{server}

[meter]
url = "http://127.0.0.1:{closed}"
timeout = "50ms"

[kafka]
brokers = "{brokers}"
usage_topic = "{topic}"
message_timeout = "5s"

[spool]
dir = {spool_dir:?}
{spool}

[[instances]]
name = "mock-openai"
endpoint = "{mock}"
model = "{UPSTREAM_MODEL}"
api_key_env = "PROVIDER_KEY"

[[routes]]
name = "{MODEL}"
models = ["{MODEL}"]
targets = [{{ instance = "mock-openai" }}]

{consumers}"#,
            closed = free_port(),
            brokers = config.brokers,
            topic = config.topic,
            mock = config.mock,
            spool_dir = config.spool_dir.display().to_string(),
            spool = config.spool,
            server = config.server,
        );
        let path = scratch.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write the gateway configuration");
        let log = scratch.join(format!("{name}.log"));
        std::fs::File::create(&log).expect("create the gateway log");
        let mut gateway = Self {
            child: Self::spawn(&path, &log),
            url: format!("http://127.0.0.1:{port}"),
            log,
            config: path,
        };
        gateway.wait_until_serving().await;
        gateway
    }

    /// Starts it again — after a `kill -9`, say — with the same configuration, so on the same port and spool (its
    /// log is appended to), and waits until it answers `/healthz`.
    pub async fn restart(&mut self) {
        kill9(&mut self.child);
        self.child = Self::spawn(&self.config, &self.log);
        self.wait_until_serving().await;
    }

    fn spawn(config: &Path, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .expect("open the gateway log");
        Command::new(workspace_binary("tollgate-gateway", "gateway"))
            .arg("--config")
            .arg(config)
            .env("PROVIDER_KEY", PROVIDER_KEY)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the gateway binary")
    }

    async fn wait_until_serving(&mut self) {
        let healthz = format!("{}/healthz", self.url);
        wait_until_serving(
            "the gateway",
            &healthz,
            &mut self.child,
            &self.log,
            Duration::from_secs(30),
        )
        .await;
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut response = http()
            .get(format!("{}/metrics", self.url))
            .force_close()
            .send()
            .await
            .expect("the gateway serves /metrics");
        let body = response.body().limit(16 << 20).await.expect("metrics body");
        String::from_utf8_lossy(&body).into_owned()
    }

    /// One sample of its metrics (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        crate::stack::sample(&self.metrics().await, name).unwrap_or(0.0)
    }

    /// Its log so far, without terminal colours.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut plain = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            } else {
                plain.push(c);
            }
        }
        plain
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// The real `billing-consumer run` binary as a child process: ingest into the stack's database and, for the
/// token limits of the gateway configuration it is given, the quota loop; metrics and `/readyz` on a port of its
/// own. For tests that kill it (`kill -9`) the way an operator's machine would.
#[derive(Debug)]
pub struct ChildBillingConsumer {
    child: Option<Child>,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(&'static str, String)>,
    /// Its metrics and readiness endpoint, `http://127.0.0.1:<port>`.
    pub url: String,
    pub log: PathBuf,
}

/// Where the child billing-consumer reads and writes.
#[derive(Debug)]
pub struct ChildBillingConfig<'a> {
    pub brokers: &'a str,
    pub clickhouse_url: &'a str,
    pub database: &'a str,
    pub usage_topic: &'a str,
    pub quota_topic: &'a str,
    pub group: &'a str,
    /// The gateway's TOML, for its token limits (written to `scratch/<name>-gateway.toml`).
    pub gateway_toml: &'a str,
}

impl ChildBillingConsumer {
    /// Starts it (log in `scratch/<name>.log`) and waits until it serves `/metrics`.
    pub async fn start(config: &ChildBillingConfig<'_>, scratch: &Path, name: &str) -> Self {
        Self::start_with(config, &[], Vec::new(), scratch, name).await
    }

    /// [`ChildBillingConsumer::start`] with `extra_args` after `run`'s own and `extra_envs` in its environment
    /// (e.g. the threshold alerts' flags and secret).
    pub async fn start_with(
        config: &ChildBillingConfig<'_>,
        extra_args: &[String],
        extra_envs: Vec<(&'static str, String)>,
        scratch: &Path,
        name: &str,
    ) -> Self {
        let quota_config = scratch.join(format!("{name}-gateway.toml"));
        std::fs::write(&quota_config, config.gateway_toml).expect("write the quota configuration");
        let port = free_port();
        let args: Vec<std::ffi::OsString> = [
            std::ffi::OsString::from("run"),
            "--topic".into(),
            config.usage_topic.into(),
            "--group".into(),
            config.group.into(),
            "--partitions".into(),
            "1".into(),
            "--batch-wait".into(),
            "100ms".into(),
            "--quota-topic".into(),
            config.quota_topic.into(),
            "--quota-config".into(),
            quota_config.into_os_string(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{port}").into(),
        ]
        .into_iter()
        .chain(extra_args.iter().map(Into::into))
        .collect();
        let mut envs = vec![
            ("TOLLGATE_KAFKA_BROKERS", config.brokers.to_owned()),
            ("TOLLGATE_CLICKHOUSE_URL", config.clickhouse_url.to_owned()),
            ("TOLLGATE_CLICKHOUSE_DATABASE", config.database.to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        envs.extend(extra_envs);
        let mut billing = Self {
            child: None,
            args,
            envs,
            url: format!("http://127.0.0.1:{port}"),
            log: scratch.join(format!("{name}.log")),
        };
        billing.resume().await;
        billing
    }

    /// Kills it with SIGKILL: no flush, no commit, no clean leave of its consumer groups.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child);
        }
    }

    /// Stops it with SIGTERM (it settles its batch and leaves its groups).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(20));
        }
    }

    /// Starts it again with the same arguments (its log is appended to) and waits until it serves `/metrics`.
    pub async fn resume(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the billing-consumer log");
        let child = Command::new(workspace_binary("tollgate-billing-consumer", "billing-consumer"))
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the billing-consumer binary");
        self.child = Some(child);
        let metrics = format!("{}/metrics", self.url);
        if let Some(child) = self.child.as_mut() {
            wait_until_serving(
                "billing-consumer",
                &metrics,
                child,
                &self.log,
                Duration::from_secs(60),
            )
            .await;
        }
    }

    /// Its `/readyz` answer: status code and body.
    pub async fn readyz(&self) -> (u16, String) {
        match http()
            .get(format!("{}/readyz", self.url))
            .force_close()
            .send()
            .await
        {
            Ok(mut response) => {
                let body = response.body().await.unwrap_or_default();
                (
                    response.status().as_u16(),
                    String::from_utf8_lossy(&body).into_owned(),
                )
            }
            Err(error) => (0, error.to_string()),
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildBillingConsumer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `url` every 100 ms until it answers 2xx; fails with `what`'s log when `child` exits first or `timeout`
/// passes.
async fn wait_until_serving(what: &str, url: &str, child: &mut Child, log: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(response) = http().get(url).force_close().send().await
            && response.status().is_success()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}):\n{}", log_text());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not come up:\n{}",
            log_text()
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}
