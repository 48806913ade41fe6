//! `citytwin replay`: a filtered slice of a twin's event log, to standard output as
//! CloudEvents JSON lines or into a fresh twin.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use citytwin_core::event::{Provenance, Timestamp, TypePattern};
use citytwin_core::log::{EventLog, LogConfig, ReplayFilter};
use citytwin_twin::city::{Twin, TwinConfig};
use clap::Args;
use h3o::CellIndex;

/// Options of `citytwin replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The data directory of a twin (its event log).
    data_dir: PathBuf,
    /// Events at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    from: Option<Timestamp>,
    /// Events before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    to: Option<Timestamp>,
    /// Event types, exact or `prefix.*` (repeatable).
    #[arg(long = "type")]
    types: Vec<String>,
    /// H3 cells, any resolution: events in them or under them (repeatable).
    #[arg(long = "cell")]
    cells: Vec<CellIndex>,
    /// Only this organization's events.
    #[arg(long)]
    organization: Option<String>,
    /// Replay into a fresh twin in this (new or empty) directory instead of printing; events
    /// are marked `provenance = replayed`.
    #[arg(long)]
    into: Option<PathBuf>,
}

fn parse_time(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(text).map_err(|e| e.to_string())
}

pub(crate) fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.join("log");
    if !dir.is_dir() {
        anyhow::bail!("{} is not a twin's data directory (it has no log/)", args.data_dir.display());
    }
    let log =
        EventLog::open(&dir, LogConfig::default()).with_context(|| format!("opening the log in {}", dir.display()))?;
    let filter = ReplayFilter {
        from_time: args.from,
        to_time: args.to,
        types: args.types.iter().map(TypePattern::new).collect(),
        cells: args.cells.clone(),
        organization: args.organization.clone(),
        ..ReplayFilter::default()
    };
    let Some(into) = &args.into else {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let mut line = Vec::new();
        for record in log.replay(filter) {
            let event = record?.event()?;
            line.clear();
            citytwin_core::codec::json::encode_into(&event, &mut line);
            line.push(b'\n');
            if let Err(error) = out.write_all(&line) {
                // A closed pipe (`| head`) ends the replay quietly.
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(error.into());
            }
        }
        out.flush()?;
        return Ok(());
    };
    if into.exists() && std::fs::read_dir(into)?.next().is_some() {
        anyhow::bail!("{} is not empty: replay into a new or empty directory", into.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let twin = Arc::new(Twin::start(TwinConfig::new(into)).await.map_err(|e| anyhow::anyhow!("{e}"))?);
        let (mut sent, mut refused) = (0u64, 0u64);
        let mut batch = Vec::with_capacity(10_000);
        let mut records = log.replay(filter);
        loop {
            let next = records.next();
            let done = next.is_none();
            if let Some(record) = next {
                let mut event = record?.event()?;
                event.ext.provenance = Some(Provenance::Replayed);
                batch.push(event);
            }
            if batch.len() >= 10_000 || (done && !batch.is_empty()) {
                sent += batch.len() as u64;
                refused += twin.ingest_batch(std::mem::take(&mut batch)).await.iter().filter(|r| r.is_err()).count() as u64;
            }
            if done {
                break;
            }
        }
        println!(
            "replayed {sent} events into {} ({refused} refused and dead-lettered there, e.g. derived events the twin re-derives)",
            into.display()
        );
        Arc::into_inner(twin).context("the twin is still in use")?.shutdown().await.map_err(|e| anyhow::anyhow!("{e}"))
    })
}
