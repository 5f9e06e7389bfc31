//! `sluice dlq list` (from the dead-letter sink) and `dlq replay` (through
//! the API).

use super::table::Table;
use super::{client, short_time};
use sluice::api::{ReplayRequest, Submitted};
use sluice::config::Config;
use std::path::PathBuf;

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
                client(&config)?.post(
                    &format!(
                        "/v1/pipelines/{}/replay",
                        sluice::config::url_encode(&pipeline)
                    ),
                    &request,
                )
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
