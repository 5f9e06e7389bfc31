//! The `sluice` command line.

use clap::{Parser, Subcommand};
use sluice::config::Config;
use sluice::pipeline::RunMode;
use std::path::PathBuf;
use std::process::ExitCode;

/// Sluice: consume Kafka, transform with sandboxed WebAssembly plugins,
/// write to MongoDB and MySQL by the schema each plugin declares.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipelines of a config file until SIGINT/SIGTERM.
    Run {
        /// Pipeline config (TOML).
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Stop once every pipeline processed what its topics held at start.
        #[arg(long)]
        until_drained: bool,
    },
    /// Check a config and the plugins it names, without touching Kafka or databases.
    Validate {
        /// Pipeline config (TOML).
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
                "info,wasmtime=warn,cranelift=warn,rdkafka=warn,sqlx=warn,mongodb=warn".into()
            }),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run {
            config,
            until_drained,
        } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(config, until_drained))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let registry = sluice::Host::load_plugins(&config)?;
    for p in &config.pipelines {
        let version = registry.current(&p.plugin).expect("loaded above");
        let sinks = config
            .sinks
            .keys()
            .map(|name| {
                (
                    name.clone(),
                    std::sync::Arc::new(NoSink) as std::sync::Arc<dyn sluice::sink::Sink>,
                )
            })
            .collect();
        let routes = sluice::router::Routes::resolve(&config, p, &version, &sinks)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        println!(
            "pipeline '{}': plugin {} {} ({})",
            p.name,
            version.name,
            version.info.version,
            version.short_hash()
        );
        for (output, route) in &routes.outputs {
            println!(
                "  {output} ({:?}) -> sink '{}', {}",
                route.decl.kind, route.sink_name, route.target
            );
        }
        println!(
            "  dead letters -> sink '{}', {}",
            routes.dead_letter.sink_name, routes.dead_letter.target
        );
    }
    println!("{}: OK", path.display());
    Ok(())
}

/// Stands in for sinks during `validate`, which must not connect anywhere.
struct NoSink;

#[async_trait::async_trait]
impl sluice::sink::Sink for NoSink {
    async fn healthcheck(&self) -> Result<(), sluice::sink::SinkError> {
        Ok(())
    }
    async fn prepare(
        &self,
        _: &str,
        _: &sluice_plugin_sdk::Output,
    ) -> Result<(), sluice::sink::SinkError> {
        Ok(())
    }
    async fn write(
        &self,
        _: &str,
        _: &sluice_plugin_sdk::Output,
        _: &[sluice::sink::Row],
    ) -> Result<(), sluice::sink::SinkError> {
        Ok(())
    }
}

async fn run(path: PathBuf, until_drained: bool) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let host = sluice::Host::start(config)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    let stats = host.stats.clone();
    let mode = if until_drained {
        RunMode::UntilDrained
    } else {
        RunMode::Continuous
    };
    host.run(shutdown_signal(), mode).await?;
    for (name, s) in stats {
        let s = s.snapshot();
        println!(
            "pipeline '{name}': {} records in, {} rows/documents written, {} dead letters, {} batches",
            s.records_in, s.rows_written, s.dead_letters, s.batches
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
