//! The operating commands: `runs`, `runs show`, `trigger`, `backfill`,
//! `pipelines`, `plugins` (`promote`, `rollback`), `dlq` (`list`,
//! `replay`). `runs` and `dlq list` read the ledger and the dead-letter
//! sink themselves; the others ask the running host through its API.

mod table;

use chrono::{DateTime, Utc};
use sluice::api::client::Client;
use sluice::api::{
    BackfillRequest, PipelineView, PluginChanged, PluginView, ReplayRequest, Submitted,
};
use sluice::config::Config;
use sluice::ledger::{Ledger, Run};
use sluice::runtime::short_hash;
use std::path::{Path, PathBuf};
use table::Table;

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

fn short_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn short_duration(d: std::time::Duration) -> String {
    if d.as_secs() >= 60 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn outputs(run: &Run) -> String {
    let parts: Vec<String> = run
        .outputs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
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
    println!("  outputs:       {}", outputs(run));
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

fn client(path: &Path) -> anyhow::Result<Client> {
    let config = Config::load(path)?;
    if !config.api.enabled {
        anyhow::bail!(
            "{}: api.enabled is false, so the host serves no API to send this to",
            path.display()
        );
    }
    Ok(Client::new(config.api.listen))
}

pub fn trigger(config: &Path, pipeline: &str) -> anyhow::Result<()> {
    let submitted: Submitted =
        client(config)?.post(&format!("/v1/pipelines/{pipeline}/trigger"), &())?;
    println!(
        "run {} of '{pipeline}' started (or queued); see `sluice runs show {}`",
        submitted.run, submitted.run
    );
    Ok(())
}

pub fn backfill(
    config: &Path,
    pipeline: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<()> {
    let submitted: Submitted = client(config)?.post(
        &format!("/v1/pipelines/{pipeline}/backfill"),
        &BackfillRequest { from, to },
    )?;
    println!(
        "backfill run {} of '{pipeline}' for [{}, {}) started (or queued); see `sluice runs show {}`",
        submitted.run,
        from.to_rfc3339(),
        to.to_rfc3339(),
        submitted.run
    );
    Ok(())
}

pub fn pipelines(config: &Path, json: bool) -> anyhow::Result<()> {
    let views: Vec<PipelineView> = client(config)?.get("/v1/pipelines")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    let mut table = Table::new(&[
        "PIPELINE",
        "SCHEDULE",
        "NEXT RUN (UTC)",
        "NOW",
        "LAST RUN",
        "PLUGIN",
    ]);
    for v in &views {
        let last = v.last_run.as_ref().map_or("-".into(), |r| {
            format!(
                "{} {} {}",
                r.id,
                r.state.as_str(),
                r.ended_at
                    .or(r.started_at)
                    .map_or(String::new(), short_time)
            )
        });
        let now = match (v.running, v.queued) {
            _ if v.paused.is_some() => "PAUSED".into(),
            _ if v.degraded.is_some() => "DEGRADED".into(),
            (Some(id), 0) => format!("run {id}"),
            (Some(id), q) => format!("run {id} (+{q} queued)"),
            (None, _) => "idle".into(),
        };
        table.row(vec![
            v.name.clone(),
            v.schedule.clone(),
            v.next_run.map_or("-".into(), short_time),
            now,
            last,
            format!(
                "{} {} ({})",
                v.plugin,
                v.plugin_version.as_deref().unwrap_or("not loaded"),
                v.plugin_hash.as_deref().map_or("", short_hash)
            ),
        ]);
    }
    table.print();
    for v in views.iter() {
        if let Some(why) = &v.degraded {
            println!("\n{} is degraded: {why}", v.name);
        }
    }
    for v in views.iter().filter(|v| v.paused.is_some()) {
        println!(
            "\n{} is paused: {}",
            v.name,
            v.paused.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum PluginsCommand {
    /// Make a plugin's canary the version its pipelines serve.
    Promote {
        /// Plugin name (the file stem in the plugins folder).
        plugin: String,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Drop a plugin's canary; the active version keeps serving and the
    /// same file is not tried again.
    Rollback {
        /// Plugin name (the file stem in the plugins folder).
        plugin: String,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct PluginsArgs {
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON (with each canary's full report) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn plugins(action: Option<PluginsCommand>, list: PluginsArgs) -> anyhow::Result<()> {
    let (plugin, path, verb, done) = match &action {
        Some(PluginsCommand::Promote { plugin, config }) => (plugin, config, "promote", "promoted"),
        Some(PluginsCommand::Rollback { plugin, config }) => {
            (plugin, config, "rollback", "rolled back")
        }
        None => {
            let config = list
                .config
                .ok_or_else(|| anyhow::anyhow!("--config is required (or SLUICE_CONFIG)"))?;
            return list_plugins(&config, list.json);
        }
    };
    let changed: PluginChanged =
        client(path)?.post(&format!("/v1/plugins/{plugin}/{verb}"), &())?;
    println!(
        "{} {} ({}) {done}",
        changed.plugin,
        changed.version,
        short_hash(&changed.hash)
    );
    Ok(())
}

fn list_plugins(config: &Path, json: bool) -> anyhow::Result<()> {
    let views: Vec<PluginView> = client(config)?.get("/v1/plugins")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    let short = |h: &Option<String>| h.as_deref().map_or("", short_hash).to_string();
    let mut table = Table::new(&["PLUGIN", "VERSION", "HASH", "RELOAD", "STATE", "CANARY"]);
    for v in &views {
        table.row(vec![
            v.name.clone(),
            v.version.clone().unwrap_or("-".into()),
            short(&v.hash),
            v.reload.clone(),
            if v.paused.is_some() {
                "PAUSED"
            } else {
                "serving"
            }
            .into(),
            v.canary.as_ref().map_or("-".into(), |c| {
                format!("{} ({})", c.version, short_hash(&c.hash))
            }),
        ]);
    }
    table.print();
    for v in &views {
        if let Some(why) = &v.paused {
            println!("\n{} is paused: {why}", v.name);
        }
        let Some(c) = &v.canary else { continue };
        let r = &c.report;
        println!(
            "\ncanary {} {} against {}: {}",
            v.name,
            c.version,
            v.version.as_deref().unwrap_or("-"),
            r.summary()
        );
        for (output, (active, canary)) in &r.outputs {
            println!("  {output}: {active} rows active, {canary} canary");
        }
        for d in &r.samples {
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref().map_or("(none)".into(), |v| v.to_string())
            };
            println!(
                "  differs: {} {}\n    active: {}\n    canary: {}",
                d.output,
                d.id,
                show(&d.active),
                show(&d.canary)
            );
        }
        println!(
            "  `sluice plugins promote {0}` serves it now; `sluice plugins rollback {0}` drops it",
            v.name
        );
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// A pipeline's dead letters, newest first, with reason and source.
    List {
        /// Pipeline name.
        pipeline: String,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// How many to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: u32,
        /// Print JSON (every field, key and value included).
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters through the current plugin version again (a
    /// `replay` run in the ledger). Those that go through are deleted.
    Replay {
        /// Pipeline name.
        pipeline: String,
        /// Only these dead letters (the ID column of `dlq list`); repeatable.
        #[arg(long = "id")]
        ids: Vec<String>,
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
}

pub async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            pipeline,
            config,
            limit,
            json,
        } => {
            let config = Config::load(&config)?;
            let letters = sluice::dlq::list(&config, &pipeline, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(());
            }
            if letters.is_empty() {
                println!("no dead letters for '{pipeline}'");
                return Ok(());
            }
            let mut table = Table::new(&["ID", "FAILED (UTC)", "STAGE", "SOURCE", "KEY", "REASON"]);
            for l in &letters {
                let reason: String = l.reason.chars().take(120).collect();
                table.row(vec![
                    l.id.clone(),
                    short_time(l.failed_at),
                    l.stage.clone(),
                    format!("{}/{}@{}", l.topic, l.partition, l.offset),
                    l.key.clone().unwrap_or_default(),
                    reason,
                ]);
            }
            table.print();
            println!("\nreplay them with `sluice dlq replay {pipeline}` (or `--id ID` for some)");
            Ok(())
        }
        DlqCommand::Replay {
            pipeline,
            ids,
            config,
        } => {
            let request = ReplayRequest { ids };
            let submitted: Submitted = tokio::task::spawn_blocking(move || {
                client(&config)?.post(&format!("/v1/pipelines/{pipeline}/replay"), &request)
            })
            .await??;
            println!(
                "replay run {} started (or queued); see `sluice runs show {}`",
                submitted.run, submitted.run
            );
            Ok(())
        }
    }
}

/// `2026-11-30T08:00:00Z`, `2026-11-30 08:00:00` (UTC), `now` or `90m ago`.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(Utc::now());
    }
    if let Some(ago) = text.strip_suffix(" ago") {
        let d = humantime::parse_duration(ago).map_err(|e| format!("'{ago}': {e}"))?;
        return Ok(Utc::now() - chrono::Duration::from_std(d).map_err(|e| e.to_string())?);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .map(|t| t.and_utc())
        .map_err(|_| format!("'{text}' is not a time: use RFC 3339 (2026-11-30T08:00:00Z), '2026-11-30 08:00:00' (UTC), 'now' or '2h ago'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_from_the_api_print_whole_when_short_and_cut_at_twelve_otherwise() {
        assert_eq!(short_hash("abc"), "abc", "a short hash must not panic");
        assert_eq!(short_hash(""), "");
        assert_eq!(short_hash(&"0123456789abcdef".repeat(4)), "0123456789ab");
        assert_eq!(short_hash("ééééééééééééé"), "éééééééééééé");
    }
}
