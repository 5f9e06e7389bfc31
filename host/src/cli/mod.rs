//! The operating commands: `runs`, `runs show`, `trigger`, `backfill`,
//! `pipelines`, `plugins` (`promote`, `rollback`), `dlq` (`list`,
//! `replay`), `schema` (`plan`, `history`). `runs`, `dlq list` and `schema`
//! read the ledger and the sinks themselves; the others ask the running
//! host through its API.

mod dlq;
mod plugins;
mod runs;
mod schema;
mod table;

pub use dlq::{DlqCommand, dlq};
pub use plugins::{PluginsArgs, PluginsCommand, plugins};
pub use runs::{RunsArgs, RunsCommand, runs};
pub use schema::{SchemaCommand, schema};

use chrono::{DateTime, Utc};
use sluice::api::client::Client;
use sluice::api::{BackfillRequest, PipelineView, Submitted};
use sluice::config::Config;
use sluice::config::url_encode;
use sluice::runtime::short_hash;
use std::path::Path;
use table::Table;

pub(crate) fn short_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub(crate) fn client(path: &Path) -> anyhow::Result<Client> {
    let config = Config::load(path)?;
    if !config.api.enabled {
        anyhow::bail!(
            "{}: api.enabled is false, so the host serves no API to send this to",
            path.display()
        );
    }
    Client::for_config(&config).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn trigger(config: &Path, pipeline: &str) -> anyhow::Result<()> {
    let submitted: Submitted = client(config)?.post(
        &format!("/v1/pipelines/{}/trigger", url_encode(pipeline)),
        &(),
    )?;
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
        &format!("/v1/pipelines/{}/backfill", url_encode(pipeline)),
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
