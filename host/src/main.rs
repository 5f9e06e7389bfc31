//! The `sluice` command line.

mod cli;

use clap::{Parser, Subcommand};
use sluice::RunMode;
use sluice::config::Config;
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
    /// Run the pipelines of a config file by their schedules until SIGINT/SIGTERM.
    Run {
        /// Pipeline config (TOML).
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Run each pipeline once over what its topics hold now, then exit.
        #[arg(long)]
        until_drained: bool,
    },
    /// Check a config and the plugins it names, without touching Kafka or databases.
    Validate {
        /// Pipeline config (TOML).
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// The run ledger, newest first (read directly; the host need not run).
    #[command(args_conflicts_with_subcommands = true)]
    Runs {
        #[command(subcommand)]
        show: Option<cli::RunsCommand>,
        #[command(flatten)]
        list: cli::RunsArgs,
    },
    /// Start a run of a scheduled pipeline now (queued if one is going).
    Trigger {
        /// Pipeline name.
        pipeline: String,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Reprocess the records whose Kafka timestamps fall in [FROM, TO).
    /// Writes are upserts, so nothing is duplicated; offsets do not move.
    Backfill {
        /// Pipeline name.
        pipeline: String,
        /// Start, inclusive: RFC 3339 (`2026-11-30T08:00:00Z`) or `2h ago`.
        #[arg(long, value_parser = cli::parse_time)]
        from: chrono::DateTime<chrono::Utc>,
        /// End, exclusive: RFC 3339, `10m ago` or `now`.
        #[arg(long, value_parser = cli::parse_time)]
        to: chrono::DateTime<chrono::Utc>,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Each pipeline's schedule, next run, last run and plugin version.
    Pipelines {
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: list them, or replay them through the current plugin.
    Dlq {
        #[command(subcommand)]
        command: cli::DlqCommand,
    },
    /// Loaded plugin versions and running canaries (with their reports);
    /// `promote` or `rollback` a canary.
    #[command(args_conflicts_with_subcommands = true)]
    Plugins {
        #[command(subcommand)]
        action: Option<cli::PluginsCommand>,
        #[command(flatten)]
        list: cli::PluginsArgs,
    },
    /// Decrypt values of a sensitive field read from a sink (one per
    /// argument, or one per line on stdin); prints each as JSON.
    Decrypt {
        /// Where the values belong: `OUTPUT.FIELD` (e.g. `customers.email`).
        field: String,
        /// Values as stored (`sluice:enc:v1:...`); none: read stdin.
        values: Vec<String>,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Schema changes: `plan` what a new plugin file would change in the
    /// sinks (or why it would be refused); `history` of changes applied.
    Schema {
        #[command(subcommand)]
        command: cli::SchemaCommand,
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
        // Logs on stderr: stdout carries command output (`runs --json`...).
        .with_writer(|| ScrubbedStderr)
        .init();
    let cli = Cli::parse();
    let block_on = |f: std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>>>>| {
        tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(f))
    };
    let result = match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run {
            config,
            until_drained,
        } => block_on(Box::pin(run(config, until_drained))),
        Command::Runs { show, list } => block_on(Box::pin(cli::runs(show, list))),
        Command::Trigger { pipeline, config } => cli::trigger(&config, &pipeline),
        Command::Backfill {
            pipeline,
            from,
            to,
            config,
        } => cli::backfill(&config, &pipeline, from, to),
        Command::Pipelines { config, json } => cli::pipelines(&config, json),
        Command::Plugins { action, list } => cli::plugins(action, list),
        Command::Dlq { command } => block_on(Box::pin(cli::dlq(command))),
        Command::Schema { command } => block_on(Box::pin(cli::schema(command))),
        Command::Decrypt {
            field,
            values,
            config,
        } => decrypt(&config, &field, values),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sluice::config::scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Stderr for the log, with every secret value replaced by its reference
/// (whatever library's message quoted it). One formatted event is one
/// write.
struct ScrubbedStderr;

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(sluice::config::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn decrypt(path: &std::path::Path, field: &str, values: Vec<String>) -> anyhow::Result<()> {
    use std::io::BufRead;
    let config = Config::load(path)?;
    let encryption = config.encryption.as_ref().ok_or_else(|| {
        anyhow::anyhow!("{}: no [encryption] keys to decrypt with", path.display())
    })?;
    let cipher =
        sluice::encryption::FieldCipher::from_config(encryption).map_err(anyhow::Error::msg)?;
    let values = if values.is_empty() {
        std::io::stdin().lock().lines().collect::<Result<_, _>>()?
    } else {
        values
    };
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        let plain = cipher
            .open_value(field, value)
            .map_err(anyhow::Error::msg)?;
        println!("{plain}");
    }
    Ok(())
}

fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // Resolve every secret now (values are never printed), so a missing
    // variable or file is reported here rather than at the first connect.
    for (key, secret) in config.secrets() {
        let warnings = secret
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {key}: {e}", path.display()))?;
        for warning in warnings {
            println!("warning: {key}: {warning}");
        }
    }
    sluice::source::check_features(&config.kafka)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let registry = sluice::Host::load_plugins(&config)?;
    for p in &config.pipelines {
        let version = registry.current(&p.plugin).expect("loaded above");
        let sinks = config
            .sinks
            .keys()
            .map(|name| {
                (
                    name.clone(),
                    // Routes resolve against sinks that connect nowhere.
                    std::sync::Arc::new(sluice::sink::MemorySink::new())
                        as std::sync::Arc<dyn sluice::sink::Sink>,
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

async fn run(path: PathBuf, until_drained: bool) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let host = sluice::Host::start(config)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    let stats = host.stats.clone();
    let mode = if until_drained {
        RunMode::Once
    } else {
        RunMode::Scheduled
    };
    host.run(shutdown_signal(), mode).await?;
    for (name, s) in stats {
        let s = s.snapshot();
        println!(
            "pipeline '{name}': {} records in, {} rows/documents written, {} deleted, {} dead letters, {} batches",
            s.records_in, s.rows_written, s.deletes, s.dead_letters, s.batches
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
