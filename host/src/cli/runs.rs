//! `sluice runs` and `sluice runs show`: the run ledger, read directly.

use super::short_time;
use super::table::Table;
use chrono::{DateTime, Utc};
use sluice::config::Config;
use sluice::ledger::{Ledger, Run};
use sluice::runtime::short_hash;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum RunsCommand {
    /// Everything recorded about one run.
    Show {
        /// Run id (first column of `sluice runs`).
        id: i64,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct RunsArgs {
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Only this pipeline's runs.
    #[arg(short, long)]
    pipeline: Option<String>,
    /// How many runs to show.
    #[arg(short = 'n', long, default_value_t = 20)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

async fn open_ledger(config: &Path) -> anyhow::Result<Ledger> {
    let config = Config::load(config)?;
    Ledger::open_existing(&config).await
}

pub async fn runs(show: Option<RunsCommand>, list: RunsArgs) -> anyhow::Result<()> {
    if let Some(RunsCommand::Show { id, config, json }) = show {
        let ledger = open_ledger(&config).await?;
        let run = ledger
            .get(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no run {id} in the ledger ({})", ledger.location))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&run)?);
        } else {
            print_run(&run);
        }
        return Ok(());
    }
    let config = list
        .config
        .ok_or_else(|| anyhow::anyhow!("--config is required (or SLUICE_CONFIG)"))?;
    let ledger = open_ledger(&config).await?;
    let runs = ledger.list(list.pipeline.as_deref(), list.limit).await?;
    if list.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    let mut table = Table::new(&[
        "ID",
        "PIPELINE",
        "TRIGGER",
        "STATE",
        "STARTED (UTC)",
        "TOOK",
        "IN",
        "OUTPUTS",
        "DEAD",
        "PLUGIN",
        "NOTE",
    ]);
    for run in &runs {
        table.row(vec![
            run.id.to_string(),
            run.pipeline.clone(),
            run.trigger.as_str().into(),
            format!(
                "{}{}",
                run.state.as_str(),
                if run.deadline_exceeded { " (late)" } else { "" }
            ),
            run.started_at.map_or("-".into(), short_time),
            run.duration().map_or("-".into(), short_duration),
            run.records_in.to_string(),
            outputs(run),
            run.dead_letters.to_string(),
            plugin(run),
            run.error.clone().or(run.note.clone()).unwrap_or_default(),
        ]);
    }
    if runs.is_empty() {
        println!("no runs recorded yet ({})", ledger.location);
    } else {
        table.print();
    }
    Ok(())
}

fn short_duration(d: std::time::Duration) -> String {
    if d.as_secs() >= 60 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// `orders=120 order_events=120`, and deletes: `orders-=3`.
fn outputs(run: &Run) -> String {
    let written = run.outputs.iter().map(|(k, v)| format!("{k}={v}"));
    let deleted = run.deletes.iter().map(|(k, v)| format!("{k}-={v}"));
    let parts: Vec<String> = written.chain(deleted).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn plugin(run: &Run) -> String {
    match (&run.plugin, &run.plugin_version, &run.plugin_hash) {
        (Some(name), Some(version), Some(hash)) => {
            format!("{name} {version} ({})", short_hash(hash))
        }
        _ => "-".into(),
    }
}

fn print_run(run: &Run) {
    let time = |t: Option<DateTime<Utc>>| t.map_or("-".into(), |t| t.to_rfc3339());
    println!("run {}", run.id);
    println!("  pipeline:      {}", run.pipeline);
    println!("  trigger:       {}", run.trigger.as_str());
    println!("  state:         {}", run.state.as_str());
    println!(
        "  attempt:       {}{}",
        run.attempt,
        run.retry_of
            .map_or(String::new(), |r| format!(" (retry of run {r})"))
    );
    println!("  scheduled for: {}", time(run.scheduled_for));
    println!("  queued:        {}", run.queued_at.to_rfc3339());
    println!("  started:       {}", time(run.started_at));
    println!("  ended:         {}", time(run.ended_at));
    println!(
        "  took:          {}",
        run.duration().map_or("-".into(), short_duration)
    );
    println!(
        "  deadline:      {}",
        if run.deadline_exceeded {
            "exceeded"
        } else {
            "ok"
        }
    );
    println!("  records in:    {}", run.records_in);
    println!("  outputs:       {} (NAME-=N: keys deleted)", outputs(run));
    println!("  dead letters:  {}", run.dead_letters);
    println!(
        "  plugin:        {} {}",
        plugin(run),
        run.plugin_hash.as_deref().unwrap_or("")
    );
    println!("  offsets:");
    for r in &run.offsets {
        println!(
            "    {}/{}: [{}, {}) {} records",
            r.topic,
            r.partition,
            r.from,
            r.to,
            r.len()
        );
    }
    if let Some(note) = &run.note {
        println!("  note:          {note}");
    }
    if let Some(error) = &run.error {
        println!("  error:         {error}");
    }
}
