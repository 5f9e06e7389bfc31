//! `sluice schema plan` (what a plugin file would change in the sinks, or
//! why it would be refused), `schema explain` (what each output is now:
//! keys, indexes, partitions) and `schema history` (what was changed, from
//! the ledger).

use super::short_time;
use super::table::Table;
use sluice::config::Config;
use sluice::ledger::Ledger;
use sluice::runtime::short_hash;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum SchemaCommand {
    /// What loading a plugin file would change in every table and
    /// collection its pipelines write (the statements), or why the host
    /// would refuse it. Reads the sinks; changes nothing. Exits 1 if refused.
    Plan {
        /// The new `.wasm`; its file stem names the plugin (`orders.wasm`).
        wasm: PathBuf,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Each output's table or collection as it is now: rows, primary key,
    /// indexes, partitions or sharding. Reads the sinks; changes nothing.
    Explain {
        /// Only this output (the plugin's output name); all if omitted.
        output: Option<String>,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Schema changes applied so far, newest first, with the plugin version
    /// that made each and how long it took (from the run ledger).
    History {
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// How many to show.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn schema(command: SchemaCommand) -> anyhow::Result<()> {
    match command {
        SchemaCommand::Plan { wasm, config } => plan(&wasm, &Config::load(&config)?).await,
        SchemaCommand::Explain { output, config } => {
            explain(output.as_deref(), &Config::load(&config)?).await
        }
        SchemaCommand::History {
            config,
            limit,
            json,
        } => history(&Config::load(&config)?, limit, json).await,
    }
}

async fn plan(wasm: &std::path::Path, config: &Config) -> anyhow::Result<()> {
    let registry = sluice::Host::load_plugins(config)?;
    let bytes = std::fs::read(wasm).map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    let version = registry.compile(wasm, &bytes, Instant::now())?;
    let serving = registry.current(&version.name);
    if !config.pipelines.iter().any(|p| p.plugin == version.name) {
        anyhow::bail!(
            "no pipeline uses plugin '{}' (the file stem of {}); nothing would change",
            version.name,
            wasm.display()
        );
    }
    let sinks = sluice::sink::connect_all(&config.sinks).await?;
    let plans = sluice::schema::plan_version(
        config,
        &sinks,
        &version.name,
        &version.info,
        serving.as_ref().map(|v| &v.info),
    )
    .await
    .map_err(anyhow::Error::msg);
    for sink in sinks.values() {
        sink.close().await;
    }
    let plans = plans?;
    println!(
        "{} ({} {}, {}), serving now: {}",
        wasm.display(),
        version.name,
        version.info.version,
        version.short_hash(),
        serving.map_or("nothing".into(), |v| format!(
            "{} ({})",
            v.info.version,
            v.short_hash()
        ))
    );
    for p in &plans {
        println!(
            "\npipeline '{}', output '{}' -> sink '{}'",
            p.pipeline, p.output, p.sink
        );
        print!("{}", p.plan);
    }
    let refused = sluice::schema::refusals(&plans);
    if !refused.is_empty() {
        anyhow::bail!(
            "the host would refuse this version ({} refusal{}); the version serving now would go on",
            refused.len(),
            if refused.len() == 1 { "" } else { "s" }
        );
    }
    let steps: usize = plans.iter().map(|p| p.plan.steps.len()).sum();
    println!("\n{steps} change(s) would run before the version's first batch");
    Ok(())
}

async fn explain(only: Option<&str>, config: &Config) -> anyhow::Result<()> {
    let registry = sluice::Host::load_plugins(config)?;
    let sinks = sluice::sink::connect_all(&config.sinks).await?;
    let mut shown = 0;
    let mut result = Ok(());
    for pipeline in &config.pipelines {
        let version = registry.current(&pipeline.plugin).expect("loaded above");
        let routes = sluice::router::Routes::resolve(config, pipeline, &version, &sinks)
            .map_err(anyhow::Error::msg)?;
        for route in routes.outputs.values() {
            if only.is_some_and(|o| o != route.decl.name) {
                continue;
            }
            shown += 1;
            println!(
                "pipeline '{}', output '{}' ({} {}) -> sink '{}'",
                pipeline.name, route.decl.name, version.name, version.info.version, route.sink_name
            );
            match route.sink.describe(&route.target).await {
                Ok(lines) => lines.iter().for_each(|l| println!("    {l}")),
                Err(e) => {
                    result = Err(anyhow::anyhow!("sink '{}': {e}", route.sink_name));
                    break;
                }
            }
        }
    }
    for sink in sinks.values() {
        sink.close().await;
    }
    result?;
    if shown == 0
        && let Some(output) = only
    {
        anyhow::bail!("no pipeline writes an output named '{output}'");
    }
    Ok(())
}

async fn history(config: &Config, limit: u32, json: bool) -> anyhow::Result<()> {
    let ledger = Ledger::open_existing(config).await?;
    let changes = ledger.schema_changes(limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
        return Ok(());
    }
    if changes.is_empty() {
        println!("no schema changes recorded in {}", ledger.location);
        return Ok(());
    }
    let mut table = Table::new(&[
        "APPLIED (UTC)",
        "PIPELINE",
        "PLUGIN",
        "TARGET",
        "MS",
        "STATEMENT",
    ]);
    for c in &changes {
        table.row(vec![
            short_time(c.applied_at),
            c.pipeline.clone(),
            format!(
                "{} {} ({})",
                c.plugin,
                c.plugin_version,
                short_hash(&c.plugin_hash)
            ),
            c.applied.target.clone(),
            c.applied.took_ms.to_string(),
            c.applied
                .statement
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    table.print();
    Ok(())
}
