//! `tansu broker`: Tansu's Kafka-protocol broker, started from the `tansu-broker` library with the settings the
//! local stack and the tests use. It accepts the flags of Tansu's own `tansu broker` command that Tollgate's
//! scripts pass (`--cluster-id`, `--listener-url`, `--advertised-listener-url`, `--storage-engine`), so either
//! binary can serve as `$TOLLGATE_CACHE/tansu/bin/tansu`. Logging follows `RUST_LOG`, as Tansu's does.

use std::process::ExitCode;

use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_broker::{NODE_ID, TracingFormat, otel};
use tansu_sans_io::ErrorCode;
use tansu_storage::StorageContainer;
use tokio::time::Instant;
use url::Url;
use uuid::Uuid;

const USAGE: &str = "usage: tansu broker [--cluster-id ID] [--listener-url URL] [--advertised-listener-url URL] \
                     [--storage-engine URL] [--silent]";

/// The broker's settings, with Tansu's defaults.
#[derive(Debug)]
struct Args {
    cluster_id: String,
    listener: Url,
    advertised_listener: Url,
    storage: Url,
    silent: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let url = |value: Option<String>, flag: &str| -> Result<Url, String> {
        let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
        Url::parse(&value).map_err(|e| format!("{flag} {value}: {e}"))
    };
    match args.next().as_deref() {
        Some("broker") => {}
        Some(other) => return Err(format!("unknown command `{other}`: only `broker` is built in")),
        None => return Err("no command given".into()),
    }
    let mut parsed = Args {
        cluster_id: "tansu_cluster".into(),
        listener: url(Some("tcp://0.0.0.0:9092".into()), "--listener-url")?,
        advertised_listener: url(Some("tcp://localhost:9092".into()), "--advertised-listener-url")?,
        storage: url(Some("memory://tansu/".into()), "--storage-engine")?,
        silent: false,
    };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--cluster-id" | "--kafka-cluster-id" => {
                parsed.cluster_id = args.next().ok_or("--cluster-id needs a value")?;
            }
            "--listener-url" | "--kafka-listener-url" => parsed.listener = url(args.next(), &flag)?,
            "--advertised-listener-url" | "--kafka-advertised-listener-url" => {
                parsed.advertised_listener = url(args.next(), &flag)?;
            }
            "--storage-engine" => parsed.storage = url(args.next(), &flag)?,
            "--silent" => parsed.silent = true,
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    Ok(parsed)
}

async fn serve(args: Args) -> Result<ErrorCode, tansu_broker::Error> {
    let started = Instant::now();
    Broker::<Controller<StorageContainer>, StorageContainer>::builder()
        .node_id(NODE_ID)
        .cluster_id(args.cluster_id)
        .incarnation_id(Uuid::now_v7())
        .advertised_listener(args.advertised_listener)
        .storage(args.storage)
        .listener(args.listener)
        .silent(args.silent)
        .build()
        .await?
        .main(started)
        .await
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("{problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let _guard = match otel::init(TracingFormat::Text) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("tracing set-up failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serve(args).await {
        Ok(ErrorCode::None) => ExitCode::SUCCESS,
        Ok(code) => {
            tracing::error!(%code, "The broker stopped.");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "The broker failed.");
            ExitCode::FAILURE
        }
    }
}
