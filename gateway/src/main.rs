//! `gateway`: parse the command line, load and validate the configuration, install telemetry, serve.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate_gateway::admission::auth;
use tollgate_gateway::{Config, Gateway, metrics};

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Tollgate: a metered front door for LLM APIs"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml", global = true)]
    config: PathBuf,
    /// Log format.
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Validate the configuration, print every problem, and exit.
    CheckConfig,
    /// Read a consumer key from standard input and print the SHA-256 to put in the configuration.
    HashKey,
    /// Produce a canary record to the broker and read it back: exit 0 only when its storage works.
    CheckBroker {
        /// `bootstrap.servers`.
        #[arg(long, env = "TOLLGATE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// The canary topic (made with one partition when missing).
        #[arg(long, default_value = "tollgate.canary.v1")]
        topic: String,
        /// How long the round trip may take.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.as_ref().unwrap_or(&Command::Serve) {
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin()
                .read_to_string(&mut key)
                .context("reading the key from standard input")?;
            println!(
                "{}",
                hex::encode(auth::hash_key(key.trim_end_matches(['\r', '\n']).as_bytes()))
            );
            Ok(())
        }
        Command::CheckConfig => {
            Config::load(&cli.config)?;
            println!("{}: ok", cli.config.display());
            Ok(())
        }
        Command::CheckBroker {
            brokers,
            topic,
            timeout,
        } => {
            let (brokers, topic, timeout) = (brokers.clone(), topic.clone(), *timeout);
            let took = tokio::task::spawn_blocking(move || {
                tollgate_gateway::kafka::canary(&brokers, &topic, timeout)
            })
            .await
            .context("the broker check did not finish")?
            .map_err(|reason| anyhow::anyhow!("the broker does not store and serve records: {reason}"))?;
            println!(
                "broker ok: a canary record produced and read back in {} ms",
                took.as_millis()
            );
            Ok(())
        }
        Command::Serve => serve(&cli).await,
    }
}

async fn serve(cli: &Cli) -> anyhow::Result<()> {
    tollgate_plumbing::telemetry::init_tracing(&cli.log_format, "info");
    let config = Config::load(&cli.config)?;
    let metrics = metrics::install_recorder().context("installing the Prometheus recorder")?;
    let listener = std::net::TcpListener::bind(config.server.listen)
        .with_context(|| format!("binding {}", config.server.listen))?;
    tracing::info!(
        listen = %config.server.listen,
        instance_id = %config.server.instance_id,
        routes = config.routes.len(),
        consumers = config.consumers.len(),
        spool_dir = %config.spool.dir.display(),
        "gateway starting"
    );
    let gateway = Gateway::start(config, listener, metrics)?;
    let handle = gateway.handle();
    actix_web::rt::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; finishing requests in flight");
        handle.stop(true).await;
    });
    gateway.run().await?;
    tracing::info!("gateway stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}
