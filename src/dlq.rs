//! `citytwin dlq ...`: inspect and reprocess the dead-letter queue of a local twin.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use citytwin_core::log::{EventLog, LogConfig};
use citytwin_twin::city::{Twin, TwinConfig};
use citytwin_twin::deadletter::{DeadLetterStatus, RetryPolicy, dead_letters};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters: position, status, reason, message and the original event's id.
    #[command(after_help = "Example:\n  citytwin dlq list --data-dir ./data")]
    List {
        /// The twin's data directory.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Retry every pending dead letter through an embedded twin, with exponential backoff.
    #[command(after_help = "Example:\n  citytwin dlq reprocess --data-dir ./data --attempts 5")]
    Reprocess {
        /// The twin's data directory.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Attempts per dead letter.
        #[arg(long, default_value_t = 5)]
        attempts: u32,
        /// Wait before the second attempt (doubles each time).
        #[arg(long, default_value = "100ms", value_parser = citytwin_core::duration::parse_duration)]
        backoff: Duration,
    },
}

pub(crate) fn run(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { data_dir } => {
            let dir = data_dir.join("log");
            let log = EventLog::open(&dir, LogConfig::default())
                .with_context(|| format!("opening the log in {}", dir.display()))?;
            let letters = dead_letters(&log)?;
            for letter in &letters {
                let status = match letter.status {
                    DeadLetterStatus::Pending => "pending",
                    DeadLetterStatus::Resolved => "resolved",
                    DeadLetterStatus::Exhausted => "exhausted",
                };
                let original = letter.original.as_ref().map_or("-", |e| e.id.as_str());
                println!("{:>10}  {status:<9}  {:<15}  {original}  {}", letter.position, letter.reason, letter.message);
            }
            println!("{} dead letters", letters.len());
            Ok(())
        }
        DlqCommand::Reprocess { data_dir, attempts, backoff } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async {
                let twin = Twin::start(TwinConfig::new(&data_dir))
                    .await
                    .map_err(|e| anyhow::anyhow!("starting the twin: {e}"))?;
                let policy = RetryPolicy { max_attempts: attempts, base_delay: backoff, max_delay: backoff * 64 };
                let report = twin.reprocess_dead_letters(policy).await?;
                println!(
                    "{} resolved, {} exhausted, {} without an original, {} attempts",
                    report.resolved, report.exhausted, report.skipped, report.attempts
                );
                twin.shutdown().await.map_err(|e| anyhow::anyhow!("{e}"))
            })
        }
    }
}
