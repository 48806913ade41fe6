//! `citytwin validate` and `citytwin run`: scenario files against an embedded twin.
//!
//! The generator runs on its own thread (it parallelises each window itself) and hands
//! batches of CloudEvents over a bounded channel to the ingest loop, which feeds the twin
//! through `Twin::ingest_batch` only: the simulator never touches actor internals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use citytwin_core::cep::{Rule, parse_rules};
use citytwin_core::event::{Event, Timestamp, TypePattern};
use citytwin_core::log::{Durability, LogConfig};
use citytwin_simulator::StreamDigest;
use citytwin_simulator::generate::{EventMaker, Generator, Plan, Truth};
use citytwin_simulator::report::{AlertSeen, Report, ReportBuilder};
use citytwin_simulator::scenario::{self, Scenario};
use citytwin_twin::bus::Filter;
use citytwin_twin::cell::CellConfig;
use citytwin_twin::city::{Twin, TwinConfig};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// Options of `citytwin validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// The scenario file.
    scenario: PathBuf,
}

/// Options of `citytwin run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The scenario file (see docs/scenarios.md).
    scenario: PathBuf,
    /// Where to write report.json and report.html (default: reports/<scenario name>).
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// Keep the twin's event log here (an empty or new directory); by default the log lives
    /// in a temporary directory removed at the end.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Generator threads (the stream is the same for any number).
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// Run at this multiple of real time (1 = real time, 60 = a minute per second) instead
    /// of as fast as possible.
    #[arg(long)]
    realtime: Option<f64>,
    /// Most events per ingest call (a call also ends after 10 minutes of simulated time, 5
    /// for calls under 1M, 20 for 2M and more, and with --realtime after each simulated
    /// minute). By default 2M when the scenario has at most three quarters of --max-live
    /// assets, else 20k. Big calls carry several readings of an asset, which its actor takes
    /// in one wake-up: at 100k assets reporting each minute, 500k ran 1.4x faster than 20k,
    /// 1M (ten readings per asset) another 1.1x, and 2M (twenty) used a tenth less CPU than
    /// 1M, with two calls' worth of events in memory (about 3 GB more than 20k). With more
    /// assets than live actors, big calls wake more actors than fit and ran 1.4-1.5x slower,
    /// hence 20k there.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Log durability: `always`, `interval` (5 ms group commit) or `never`.
    #[arg(long, default_value = "interval", value_parser = Durability::parse)]
    durability: Durability,
    /// Most live asset actors (0: no limit); beyond it some of the least recently active
    /// passivate (by a fixed rank per asset, so the same ones stay live).
    /// A scenario whose assets all report within a few seconds of wall time (a big city run
    /// as fast as possible) rehydrates an actor for nearly every reading once it has more
    /// assets than this: raise it if memory allows (about 13 KB per live asset).
    #[arg(long, default_value_t = citytwin_twin::city::DEFAULT_MAX_LIVE_ASSETS, value_name = "N")]
    max_live: usize,
    /// No progress bar (logs only).
    #[arg(long)]
    quiet: bool,
    /// Serve the twin while the scenario runs (gRPC + HTTP, as `citytwin serve`), so that a
    /// viewer (`citytwin view`) or any client can watch; once the run is over the final state
    /// stays served until Ctrl-C or SIGTERM. The scenario's geometry is served too.
    #[arg(long)]
    serve: bool,
    /// With --serve: the gRPC address (port 0 picks a free one).
    #[arg(long, requires = "serve", default_value = "127.0.0.1:50051")]
    grpc: std::net::SocketAddr,
    /// With --serve: the HTTP / WebSocket address (port 0 picks a free one).
    #[arg(long, requires = "serve", default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// With --serve: a server configuration file (organizations and tokens, limits, TLS;
    /// see citytwin.example.toml). Its data directory and `[twin]` section are not used:
    /// the run's are.
    #[arg(long, requires = "serve", value_name = "FILE")]
    serve_config: Option<PathBuf>,
}

/// Where the run's twin lives: embedded only, or also behind the server's listeners.
enum Host {
    Embedded(Twin),
    Served(crate::serve::Running),
}

impl Host {
    fn twin(&self) -> &Twin {
        match self {
            Host::Embedded(twin) => twin,
            Host::Served(running) => &running.gateway().twin,
        }
    }

    /// Ingests the events of `batch`, leaving it empty (its buffer can be reused).
    async fn ingest(&self, batch: &mut Vec<Event>) -> Vec<Result<usize, citytwin_twin::city::IngestError>> {
        match self {
            Host::Embedded(twin) => twin.ingest_batch(&mut *batch).await,
            Host::Served(running) => running.gateway().ingest_local(batch).await,
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Host::Embedded(twin) => twin.shutdown().await.map_err(|e| anyhow::anyhow!("stopping the twin: {e}")),
            Host::Served(running) => {
                let stop = crate::serve::termination();
                println!("run finished; still serving its final state (Ctrl-C or SIGTERM stops)");
                stop.await;
                tracing::info!("stopping: finishing requests in flight, flushing the log");
                running.stop().await
            }
        }
    }
}

/// Puts the run's twin behind the server's listeners.
async fn serve(
    args: &RunArgs,
    scenario: &Scenario,
    twin: Twin,
    cells: CellConfig,
    data_dir: &Path,
) -> anyhow::Result<Host> {
    let mut config = match &args.serve_config {
        Some(path) => crate::serve::config::ServeConfig::load(path)?,
        None => crate::serve::config::ServeConfig::default(),
    };
    config.data_dir = data_dir.to_owned();
    config.grpc.listen = args.grpc;
    config.http.listen = args.http;
    let geometry = scenario.geometry.as_deref().map(crate::serve::gateway::CityGeometry::load).transpose()?;
    let running = crate::serve::start_with(config, twin, cells, geometry).await?;
    // The same line as `citytwin serve`, for people and scripts that wait for the server.
    println!("citytwin serving: grpc={} http={}", running.grpc, running.http);
    tracing::info!(grpc = %running.grpc, http = %running.http, scenario = %scenario.name, "serving the run");
    Ok(Host::Served(running))
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Events per ingest call: `--batch` when given; else big calls, so that an asset's
/// readings share its actor's wake-ups, unless the scenario has more assets than three
/// quarters of the live-actor limit (0: none): the shards passivate past seven eighths of
/// their share and are filled unevenly, and a big call then wakes more actors than fit.
fn batch_size(requested: Option<usize>, assets: u64, max_live: usize) -> usize {
    let fits = max_live == 0 || assets <= (max_live - max_live / 4) as u64;
    requested.unwrap_or(if fits { 2_000_000 } else { 20_000 }).max(1)
}

/// How much simulated time one ingest call spans at most; the cells' watermark trails the
/// newest event by twice this (a call's events commit in any order across assets). Twenty
/// minutes for calls of 2M (twenty readings of an asset reporting each minute, one drain:
/// a 3-hour slice of `day-100k.toml` took 38 s of user CPU against 42–46 s in calls of 1M and
/// ten minutes, at 3.8 GB peak RSS against 2.8 GB), ten for calls of 1M, five for smaller
/// ones: the cells keep their windows open that much longer, and the first hour of
/// `city-scale.toml` (1M assets in calls of 20k) peaked at 6.1 GB with ten against 5.3 GB.
fn batch_span(batch_size: usize) -> Duration {
    Duration::from_secs(if batch_size >= 2_000_000 {
        1200
    } else if batch_size >= 1_000_000 {
        600
    } else {
        300
    })
}

fn load(path: &Path) -> anyhow::Result<Result<(Scenario, Vec<Rule>), String>> {
    let scenario = match scenario::load(path) {
        Ok(scenario) => scenario,
        Err(errors) => return Ok(Err(errors.to_string())),
    };
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for file in &scenario.rules {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        match parse_rules(&text) {
            Ok(parsed) => rules.extend(parsed),
            Err(errors) => problems.push(format!("{}: {errors}", file.display())),
        }
    }
    if problems.is_empty() { Ok(Ok((scenario, rules))) } else { Ok(Err(problems.join("\n"))) }
}

pub(crate) fn validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    match load(&args.scenario)? {
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::from(1))
        }
        Ok((scenario, rules)) => {
            let per_day: f64 = scenario
                .populations
                .iter()
                .map(|p| f64::from(p.count) * (86_400.0 / p.interval.as_secs_f64()) * p.metrics.len() as f64)
                .sum();
            println!(
                "{}: valid. {} populations, {} assets, {} incident processes, {} interventions, {} rules; \
                 {} from {}; about {:.1} M readings",
                args.scenario.display(),
                scenario.populations.len(),
                scenario.asset_count(),
                scenario.incidents.len(),
                scenario.interventions.len(),
                rules.len(),
                citytwin_core::duration::format_duration(scenario.duration),
                scenario.start,
                per_day * scenario.duration.as_secs_f64() / 86_400.0 / 1e6
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn rule_minutes(rules: &[Rule]) -> BTreeMap<String, f64> {
    rules.iter().filter_map(|rule| Some((rule.id.clone(), rule.window_length()?.as_secs_f64() / 60.0))).collect()
}

/// What the generator thread hands back at the end.
struct Generated {
    digest: StreamDigest,
    report: ReportBuilder,
    truth: Truth,
    assets: u64,
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let (scenario, rules) = match load(&args.scenario)? {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(1));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args, scenario, rules))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a loaded scenario, writes its report directory, prints a summary, returns the report.
async fn run_async(args: &RunArgs, scenario: Scenario, rules: Vec<Rule>) -> anyhow::Result<Report> {
    let stem = args.scenario.file_stem().map_or_else(|| "run".to_owned(), |s| s.to_string_lossy().into_owned());
    let report_dir = args.report_dir.clone().unwrap_or_else(|| PathBuf::from("reports").join(&stem));
    let temp = tempfile::tempdir()?;
    let data_dir = match &args.data_dir {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                anyhow::bail!("{} is not empty: give a new or empty directory for the run's log", dir.display());
            }
            dir.clone()
        }
        None => temp.path().to_owned(),
    };
    let durability = args.durability;
    let scenario = Arc::new(scenario);
    let minutes = rule_minutes(&rules);
    let mut cells = CellConfig::new(rules);
    cells.resolution = scenario.resolution;
    let batch_size = batch_size(args.batch, scenario.asset_count(), args.max_live);
    let span = batch_span(batch_size);
    cells.engine.max_out_of_orderness = span * 2;
    let config = TwinConfig {
        cells: Some(cells.clone()),
        log: LogConfig { durability, ..LogConfig::default() },
        max_live_assets: args.max_live,
        ..TwinConfig::new(&data_dir)
    };
    let twin = Twin::start(config).await.map_err(|e| anyhow::anyhow!("starting the twin: {e}"))?;
    tracing::info!(scenario = %scenario.name, data_dir = %data_dir.display(), "twin started");
    let host = if args.serve { serve(args, &scenario, twin, cells, &data_dir).await? } else { Host::Embedded(twin) };
    let twin = host.twin();

    // Alerts, counted live for the progress bar and kept for the report (only what it counts
    // of each: a run may raise millions). The subscription is complete (paced, and it catches
    // up from the log if it lags anyway), so the report needs no second pass over the log: at
    // a day of 100k assets that re-read 30 GB.
    let alerts = Arc::new(AtomicU64::new(0));
    let mut subscription = twin.bus().subscribe_paced(Filter {
        types: vec![TypePattern::new("com.smartcities.alert.triggered")],
        ..Filter::default()
    });
    let counter = Arc::clone(&alerts);
    // Once the run is over: the position before which every alert has been committed.
    let (end_tx, mut end_rx) = tokio::sync::oneshot::channel::<u64>();
    let alert_task = tokio::spawn(async move {
        let mut collected: Vec<AlertSeen> = Vec::new();
        // Until the end is known, everything; then up to it (a sender gone: what is at hand).
        let mut end: Option<u64> = None;
        loop {
            tokio::select! {
                next = subscription.recv_until(end.unwrap_or(u64::MAX)) => match next {
                    Some(alert) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        collected.extend(AlertSeen::of(&alert.event));
                    }
                    None => return collected,
                },
                received = &mut end_rx, if end.is_none() => end = Some(received.unwrap_or(0)),
            }
        }
    });

    let started = Instant::now();
    let total_s = scenario.duration.as_secs();
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(total_s) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:32} sim {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );

    // The generator thread. It starts a batch only once the channel's one slot is free, so at
    // most two batches exist at once: the one the twin is ingesting and the next (big batches
    // are what lets an asset take several readings per wake-up, see `--batch`).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<Event>, Timestamp)>(1);
    // Emptied batches go back to the generator, which fills them again: a batch of 1M
    // events is a few hundred MB, which fresh from the allocator are fresh pages the kernel
    // zeroes every time.
    let (spare_tx, spare_rx) = std::sync::mpsc::sync_channel::<Vec<Event>>(2);
    let plan_scenario = Arc::clone(&scenario);
    let (threads, realtime) = (args.threads, args.realtime);
    let runtime = tokio::runtime::Handle::current();
    let generator = std::thread::Builder::new().name("generator".into()).spawn(move || {
        // The slot the batch being built will take; `None` once the ingest loop is gone.
        let reserve = || runtime.block_on(tx.reserve()).ok();
        let mut slot: Option<tokio::sync::mpsc::Permit<'_, _>> = None;
        let plan = Arc::new(Plan::new(Arc::clone(&plan_scenario)));
        let assets = plan.assets.len() as u64;
        let mut generator = Generator::new(Arc::clone(&plan), threads);
        let mut maker = EventMaker::new(Arc::clone(&plan));
        let mut digest = StreamDigest::default();
        let mut report = ReportBuilder::new(&plan_scenario, minutes);
        let mut samples = Vec::new();
        let mut batch: Vec<Event> = Vec::new();
        // The length of the last full batch, to size the next.
        let mut last_len = 0;
        let mut batch_start: Option<i64> = None;
        let start = plan_scenario.start.as_nanos();
        let wall = Instant::now();
        let step = 60_000_000_000i64;
        while !generator.finished() {
            let until = Timestamp::from_nanos(generator.now().as_nanos() + step);
            if let Some(factor) = realtime {
                let due = Duration::from_secs_f64((until.as_nanos() - start) as f64 / 1e9 / factor.max(1e-6));
                if let Some(wait) = due.checked_sub(wall.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            samples.clear();
            generator.window(until, &mut samples);
            for (at, sample) in samples.iter().enumerate() {
                if let Some(ahead) = samples.get(at + 2) {
                    plan.prefetch(ahead);
                }
                let event = maker.event(sample);
                digest.add(&event);
                report.observe(&event);
                let span_full = batch_start.is_some_and(|t| sample.time - t >= span.as_nanos() as i64);
                if batch.len() >= batch_size || span_full {
                    last_len = batch.len();
                    slot.take()?.send((std::mem::take(&mut batch), Timestamp::from_nanos(sample.time)));
                    batch_start = None;
                }
                if batch.is_empty() {
                    // Once the slot is free, the ingest loop has taken the batch just sent, so
                    // it has already handed back the one before.
                    slot = Some(reserve()?);
                    batch = spare_rx.try_recv().unwrap_or_default();
                    batch.reserve(last_len);
                }
                batch_start.get_or_insert(sample.time);
                batch.push(event);
            }
            if realtime.is_some() && !batch.is_empty() {
                // In real time, deliver each minute as it happens.
                slot.take()?.send((std::mem::take(&mut batch), until));
                batch_start = None;
            }
        }
        if !batch.is_empty() {
            slot.take()?.send((batch, generator.now()));
        }
        Some(Generated { digest, report, truth: generator.truth(), assets })
    })?;

    let mut ingested = 0u64;
    let mut refused = 0u64;
    while let Some((mut batch, reached)) = rx.recv().await {
        let n = batch.len() as u64;
        refused += host.ingest(&mut batch).await.iter().filter(|r| r.is_err()).count() as u64;
        // Fails only once the generator has returned (it takes each spare back before the
        // next one comes: see the reservation above).
        let _ = spare_tx.try_send(batch);
        ingested += n;
        let sim_s = (reached.as_nanos() - scenario.start.as_nanos()).max(0) as u64 / 1_000_000_000;
        bar.set_position(sim_s.min(total_s));
        let rate = ingested as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{} · {:.0} events/s · {} alerts",
            Timestamp::from_nanos(reached.as_nanos()),
            rate,
            alerts.load(Ordering::Relaxed)
        ));
    }
    let generated = generator.join().map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
    let Some(Generated { digest, mut report, truth, assets }) = generated else {
        anyhow::bail!("the generator stopped early");
    };
    twin.flush_cells(scenario.end()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    // Every alert committed by now (the cells have flushed); counting them does not depend on
    // the order commits interleaved in across cells.
    let _ = end_tx.send(twin.bus().published_upto());
    let alerts_seen = alert_task.await.context("the alert collector failed")?;
    for alert in &alerts_seen {
        report.count_alert(alert);
    }
    let stats = twin.stats();
    let actors = twin.occupancy().await.unwrap_or_default();

    let report = report.finish(digest.hex(), assets, truth);
    let rate = report.events as f64 / elapsed.as_secs_f64();
    let timing = format!("Ran in {:.1} s of wall time ({:.0} events/s through the twin).", elapsed.as_secs_f64(), rate);
    std::fs::create_dir_all(&report_dir).with_context(|| format!("creating {}", report_dir.display()))?;
    std::fs::write(report_dir.join("report.json"), report.to_json())?;
    std::fs::write(report_dir.join("report.html"), report.to_html(&timing))?;
    print_summary(&report, &timing, refused, stats.accepted, &report_dir);
    if actors.waited > 0 {
        println!(
            "live-actor limit: assets waited {} times for room among {} actors in memory (more were active at once \
             than --max-live allows, so many readings woke a passivated asset); a larger --max-live runs faster \
             if memory allows (about 15 KB per live asset)",
            actors.waited, args.max_live
        );
    }
    host.stop().await?;
    Ok(report)
}

/// Options of `citytwin compare`.
#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// The base: a scenario file (run first) or a report directory of an earlier run.
    base: PathBuf,
    /// The variant: a scenario file or a report directory.
    variant: PathBuf,
    /// Where to write compare.html (and the runs' reports, when scenarios are given).
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// Generator threads for runs.
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
}

pub(crate) fn compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let stem = |p: &Path| p.file_stem().map_or_else(|| "run".to_owned(), |s| s.to_string_lossy().into_owned());
    let out = args.report_dir.clone().unwrap_or_else(|| {
        PathBuf::from("reports").join(format!("compare-{}-vs-{}", stem(&args.base), stem(&args.variant)))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut reports = Vec::new();
    for (input, role) in [(&args.base, "base"), (&args.variant, "variant")] {
        let report = if input.is_dir() {
            let path = input.join("report.json");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<Report>(&text)
                .with_context(|| format!("{} is not a citytwin report", path.display()))?
        } else {
            let (scenario, rules) = match load(input)? {
                Ok(loaded) => loaded,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(1));
                }
            };
            let run = RunArgs {
                scenario: input.clone(),
                report_dir: Some(out.join(role)),
                data_dir: None,
                threads: args.threads,
                realtime: None,
                batch: None,
                durability: Durability::Interval(Duration::from_millis(5)),
                max_live: citytwin_twin::city::DEFAULT_MAX_LIVE_ASSETS,
                quiet: false,
                serve: false,
                grpc: std::net::SocketAddr::from(([127, 0, 0, 1], 50051)),
                http: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
                serve_config: None,
            };
            println!("== {role}: {}", input.display());
            runtime.block_on(run_async(&run, scenario, rules))?
        };
        reports.push(report);
    }
    let comparison = citytwin_simulator::report::Comparison::new(&reports[0], &reports[1]);
    println!();
    print!("{}", comparison.to_text());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("compare.html"), comparison.to_html())?;
    std::fs::write(out.join("compare.json"), comparison.to_json())?;
    println!("comparison: {}  {}", out.join("compare.html").display(), out.join("compare.json").display());
    Ok(ExitCode::SUCCESS)
}

fn print_summary(report: &Report, timing: &str, refused: u64, accepted: u64, report_dir: &Path) {
    println!(
        "{}: {} events from {} assets, {} → {}",
        report.scenario, report.events, report.assets, report.start, report.end
    );
    println!("{timing}");
    println!("twin: {accepted} events accepted, {refused} refused (dead-lettered with the reason)");
    println!("alerts: {}", report.alerts_total);
    for (rule, count) in &report.alerts_by_rule {
        let cells = report.alerts_by_rule_and_cell.get(rule).map_or(0, |c| c.keys().filter(|k| *k != "-").count());
        println!("  {rule:<20} {count:>7} in {cells} cells");
    }
    let k = &report.kpis;
    println!(
        "KPIs: congestion {:.0} cell-minutes, PM2.5 exceedance {:.0} cell-hours, offline {:.0} asset-minutes, \
         {} quality failures, {} traffic incidents, {} outages",
        k.congestion_minutes,
        k.pm25_exceedance_hours,
        k.offline_minutes,
        k.quality_failures,
        k.traffic_incidents,
        k.outages
    );
    println!("stream digest: {}", report.digest);
    println!("report: {}  {}", report_dir.join("report.json").display(), report_dir.join("report.html").display());
}

#[cfg(test)]
mod tests {
    use super::{batch_size, batch_span};

    #[test]
    fn calls_are_big_only_well_under_the_live_actor_limit() {
        assert_eq!(batch_size(None, 100_000, 250_000), 2_000_000);
        assert_eq!(batch_size(None, 187_500, 250_000), 2_000_000);
        assert_eq!(batch_size(None, 187_501, 250_000), 20_000, "near the limit the shards passivate");
        assert_eq!(batch_size(None, 10_000_000, 0), 2_000_000, "0: no limit");
        assert_eq!(batch_size(Some(777), 1_000_000, 250_000), 777, "--batch wins");
        assert_eq!(batch_size(Some(0), 10, 0), 1);
    }

    #[test]
    fn only_big_calls_span_long() {
        // The cells keep windows open for two spans: smaller calls keep the shorter ones.
        let minutes = |batch| batch_span(batch).as_secs() / 60;
        assert_eq!(minutes(batch_size(None, 100_000, 250_000)), 20);
        assert_eq!(minutes(batch_size(None, 1_000_000, 250_000)), 5);
        assert_eq!(minutes(1_999_999), 10);
        assert_eq!(minutes(1_000_000), 10);
        assert_eq!(minutes(999_999), 5);
    }
}
