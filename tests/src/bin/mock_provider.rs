//! `mock-provider`: the mock OpenAI-compatible upstream as a process, for the local stack (compose/up).

use std::net::TcpListener;

use anyhow::Context;
use clap::Parser;
use tollgate_tests::mock_provider::MockProvider;

#[derive(Debug, Parser)]
#[command(
    name = "mock-provider",
    about = "A mock OpenAI-compatible provider that misbehaves on demand"
)]
struct Cli {
    #[arg(long, env = "MOCK_PROVIDER_LISTEN", default_value = "127.0.0.1:8090")]
    listen: String,
    /// Require `Authorization: Bearer <key>` like a real provider.
    #[arg(long, env = "MOCK_PROVIDER_API_KEY")]
    expect_api_key: Option<String>,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(&cli.listen).with_context(|| format!("binding {}", cli.listen))?;
    let (mock, server) = MockProvider::start(listener, cli.expect_api_key)?;
    eprintln!("mock-provider listening on {}", mock.addr);
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.stop(true).await;
    });
    server.await?;
    Ok(())
}
