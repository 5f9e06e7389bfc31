//! `sluice plugins` (list, `promote`, `rollback`), through the API.

use super::client;
use super::table::Table;
use sluice::api::{PluginChanged, PluginView};
use sluice::runtime::short_hash;
use std::path::{Path, PathBuf};

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
    let changed: PluginChanged = client(path)?.post(
        &format!("/v1/plugins/{}/{verb}", sluice::config::url_encode(plugin)),
        &(),
    )?;
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
