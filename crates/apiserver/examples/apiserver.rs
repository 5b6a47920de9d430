//! Runs the facade standalone (until `ballast apiserver` wires it in):
//! `cargo run -p ballast-apiserver --example apiserver -- --etcd-servers http://127.0.0.1:2379 --listen 127.0.0.1:8080`

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: ballast_apiserver::ApiServerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    ballast_apiserver::serve(cli.config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
