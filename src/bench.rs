//! `citytwin bench`: end-to-end throughput of an embedded twin (asset actors, batching log
//! writer, bus, cell actors running the shipped rules), with a report of where time goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use citytwin_core::cep::parse_rules;
use citytwin_core::event::{AssetCommissioned, AssetCreated, Event, Location, MetricRecorded, Timestamp, Unit};
use citytwin_core::log::{Durability, LogConfig};
use citytwin_twin::cell::CellConfig;
use citytwin_twin::city::{Twin, TwinConfig};
use citytwin_twin::read::LiveReadModels;
use clap::Args;
use h3o::Resolution;
use hdrhistogram::Histogram;

/// Options of `citytwin bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Assets to create (spread over a 20 km square around Manhattan).
    #[arg(long, default_value_t = 10_000)]
    assets: u32,
    /// `metric.recorded` events to ingest after setup.
    #[arg(long, default_value_t = 200_000)]
    events: u32,
    /// Concurrent ingest tasks (each awaits its acknowledgement).
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Events per `ingest_batch` call (1: one `ingest` call per event).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Commands in flight through the actors at most; beyond it telemetry is shed (counted)
    /// and everything else waits. Offer more concurrency than this to see overload behaviour.
    #[arg(long, default_value_t = 65_536)]
    max_in_flight: usize,
    /// Shards (asset supervisors).
    #[arg(long, default_value_t = 8)]
    shards: usize,
    /// Durability: `always`, `interval` (5 ms) or `never`.
    #[arg(long, default_value = "interval", value_parser = Durability::parse)]
    durability: Durability,
    /// Also run cell actors with the shipped rules named by `--rules`.
    #[arg(long)]
    cells: bool,
    /// Which shipped rules the cell actors run (with `--cells`): comma-separated names of
    /// `scenarios/rules/*.toml`.
    #[arg(long, default_value = "congestion,air-quality", value_delimiter = ',')]
    rules: Vec<String>,
    /// Also keep the CQRS read models (asset state, inventory, cell activity, open alerts)
    /// current from the bus, and wait for them to catch up before stopping the clock.
    #[arg(long)]
    read_models: bool,
    /// Pace the readings at this many events per second (default: as fast as possible), and
    /// report memory and live actors in the steady state: e.g. 1,000,000 assets reporting once
    /// a minute is `--rate 16667`.
    #[arg(long)]
    rate: Option<f64>,
    /// Passivate asset actors after this many idle milliseconds, and report memory with every
    /// asset live and after they all passivated.
    #[arg(long)]
    idle_ms: Option<u64>,
    /// Most live asset actors (0: no limit); beyond it some of the least recently active
    /// passivate at once (by a fixed rank per asset, so the same ones stay live). Bounds the
    /// memory of a burst (creating a million assets) whatever `--idle-ms`.
    #[arg(long, default_value_t = citytwin_twin::city::DEFAULT_MAX_LIVE_ASSETS, value_name = "N")]
    max_live: usize,
    /// After the run, restart the twin and rebuild every asset from the log and snapshots,
    /// reporting how long recovery takes.
    #[arg(long)]
    recover: bool,
    /// With `--recover`: delete every snapshot first (the worst case: each asset is rebuilt
    /// from all of its events).
    #[arg(long, requires = "recover")]
    cold: bool,
    /// Where to put the data (default: a temporary directory, removed afterwards).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

fn location(i: u32) -> Location {
    Location::new(40.70 + f64::from(i % 200) * 0.0009, -74.02 + f64::from(i / 200 % 200) * 0.0012)
}

fn rules(names: &[String]) -> anyhow::Result<Vec<citytwin_core::cep::Rule>> {
    let mut all = Vec::new();
    for name in names {
        let path = format!("{}/scenarios/rules/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        all.extend(parse_rules(&text).map_err(anyhow::Error::msg)?);
    }
    Ok(all)
}

/// Makes event number `n` of a phase; events are built by the workers batch by batch, so the
/// bench holds no pre-generated events (which would blur the memory figures).
type MakeEvent = Arc<dyn Fn(u32) -> Event + Send + Sync>;

async fn ingest_all(
    twin: &Arc<Twin>,
    count: u32,
    make: MakeEvent,
    concurrency: u32,
    batch: usize,
    rate: Option<f64>,
) -> anyhow::Result<(Duration, u64, Histogram<u64>)> {
    let started = Instant::now();
    let start_at = tokio::time::Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let batch = u32::try_from(batch.max(1)).unwrap_or(u32::MAX);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (twin, next, make) = (Arc::clone(twin), Arc::clone(&next), Arc::clone(&make));
        tasks.push(tokio::spawn(async move {
            let mut failures = 0u64;
            // Acknowledgement latency of each call, in microseconds.
            let mut latency =
                Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds and precision");
            loop {
                let first = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                if first >= count {
                    return (failures, latency);
                }
                if let Some(rate) = rate {
                    // Paced load: event n is due n / rate seconds after the start.
                    tokio::time::sleep_until(start_at + Duration::from_secs_f64(f64::from(first) / rate)).await;
                }
                let events: Vec<Event> = (first..count.min(first.saturating_add(batch))).map(|n| make(n)).collect();
                let sent = Instant::now();
                if batch <= 1 {
                    for event in events {
                        failures += u64::from(twin.ingest(event).await.is_err());
                    }
                } else {
                    failures += twin.ingest_batch(events).await.iter().filter(|r| r.is_err()).count() as u64;
                }
                latency.saturating_record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
        }));
    }
    let mut failures = 0;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds and precision");
    for task in tasks {
        let (failed, task_latency) = task.await?;
        failures += failed;
        latency.add(task_latency).context("merging latency histograms")?;
    }
    Ok((started.elapsed(), failures, latency))
}

/// CPU time this process has used (user + system), from /proc: on a shared machine, CPU time
/// per event is a steadier figure than wall time.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
}

/// A memory figure of this process from /proc (kB).
fn rss_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.trim_start_matches(field).trim_start_matches(':').trim().trim_end_matches("kB").trim().parse().ok()
}

pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let durability = args.durability;
    let cells = if args.cells { Some(CellConfig::new(rules(&args.rules)?)) } else { None };
    let mut asset = citytwin_twin::asset::actor::AssetConfig::default();
    if let Some(idle) = args.idle_ms {
        asset.idle_timeout = Duration::from_millis(idle);
    }
    let config = TwinConfig {
        asset,
        max_in_flight: args.max_in_flight,
        shards: args.shards,
        log: LogConfig { durability, ..LogConfig::default() },
        cells,
        max_live_assets: args.max_live,
        ..TwinConfig::new(&dir)
    };
    let rss_start = rss_kb("VmRSS");
    let twin = Arc::new(Twin::start(config).await.map_err(|e| anyhow::anyhow!("starting the twin: {e}"))?);
    let mut read_models = args.read_models.then(|| LiveReadModels::start(twin.bus(), Resolution::Eight));
    let t0 = Timestamp::from_secs(1_736_899_200);
    let created: MakeEvent = Arc::new(move |i| {
        let id = format!("sensor_{i:07}");
        Event::new(
            format!("{id}-created"),
            "/bench",
            AssetCreated {
                asset_id: id.clone(),
                asset_type: if i % 2 == 0 { "traffic_counter" } else { "air_quality_sensor" }.into(),
                name: None,
                location: Some(location(i)),
                reporting_interval_s: Some(60),
                attributes: Default::default(),
            },
        )
        .with_time(t0)
    });
    let mut shard_events = twin.shard_events();
    let (created_in, _, _) = ingest_all(&twin, args.assets, created, args.concurrency, args.batch, None).await?;
    let rss_live = rss_kb("VmRSS");
    let live_after_setup = twin.live_assets().await?;
    let commissioned: MakeEvent = Arc::new(move |i| {
        let id = format!("sensor_{i:07}");
        Event::new(
            format!("{id}-commissioned"),
            "/bench",
            AssetCommissioned { asset_id: id, commissioned_by: None, firmware_version: None },
        )
        .with_time(t0)
    });
    ingest_all(&twin, args.assets, commissioned, args.concurrency, args.batch, None).await?;
    let metrics = ["vehicle_count", "avg_speed", "pm25"];
    let assets = args.assets.max(1);
    // Sensors stay put: each one's cell is computed once, as a sensor configured with its
    // place would send it (the generator is not what is measured).
    let cells: Arc<Vec<Option<h3o::CellIndex>>> =
        Arc::new((0..assets).map(|i| location(i).cell(Resolution::Ten)).collect());
    let reading: MakeEvent = Arc::new(move |n| {
        let i = n % assets;
        let id = format!("sensor_{i:07}");
        let mut event = Event::new(
            format!("r{n}"),
            "/bench",
            MetricRecorded {
                asset_id: id.into(),
                metric_type: metrics[(n % 3) as usize].into(),
                value: f64::from(n % 97),
                unit: Unit::from("1"),
                location: Some(location(i)),
            },
        )
        .with_time(Timestamp::from_millis(t0.as_millis() + 60_000 + i64::from(n)));
        event.ext.h3cell = cells[i as usize];
        event
    });
    let cpu_before = cpu_time();
    let drains_before = citytwin_twin::asset::inbox::DRAINS.totals();
    let started = Instant::now();
    // With a paced load, sample memory and live actors every second (the steady state is
    // what a city running at that rate costs).
    let (stop_sampling, mut stopped) = tokio::sync::watch::channel(false);
    let sampler = args.rate.map(|_| {
        let twin = Arc::clone(&twin);
        tokio::spawn(async move {
            let mut samples: Vec<(u64, usize)> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let live = twin.live_assets().await.unwrap_or(0);
                        samples.push((rss_kb("VmRSS").unwrap_or(0), live));
                    }
                    _ = stopped.changed() => return samples,
                }
            }
        })
    });
    let (_, failures, latency) =
        ingest_all(&twin, args.events, reading, args.concurrency, args.batch, args.rate).await?;
    let _ = stop_sampling.send(true);
    if let Some(models) = &mut read_models {
        // Until the projection has applied everything published so far.
        let published = twin.bus().published();
        models.wait_applied(published).await.context("the read models stopped")?;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    let drains = citytwin_twin::asset::inbox::DRAINS.totals();
    let (drains, drained) = (drains.0 - drains_before.0, drains.1 - drains_before.1);
    let rate = f64::from(args.events) / elapsed.as_secs_f64();
    println!("setup: {} assets created in {:.2?}", args.assets, created_in);
    if let (Some(start), Some(live)) = (rss_start, rss_live) {
        println!(
            "memory: RSS {start} kB before setup, {live} kB with {live_after_setup} live asset actors: about {:.1} KB per live asset",
            (live.saturating_sub(start)) as f64 / f64::from(live_after_setup.max(1) as u32)
        );
    }
    println!(
        "ingest: {} events in {:.2?} = {:.0} events/s ({} refused), durability {}, {} shards, {} concurrent producers, batches of {}{}",
        args.events,
        elapsed,
        rate,
        failures,
        args.durability,
        args.shards,
        args.concurrency,
        args.batch,
        if args.cells { format!(", cell actors running {}", args.rules.join(" + ")) } else { String::new() }
    );
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1e3;
    println!(
        "acknowledgement latency per call: p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms ({} calls)",
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1e3,
        latency.len()
    );
    if let Some(models) = &read_models {
        println!("read models: {} events applied, caught up before the clock stopped", models.applied());
    }
    if let Some(sampler) = sampler {
        let samples = sampler.await?;
        // The second half: past the warm-up, when every asset has reported at least once.
        let steady = &samples[samples.len() / 2..];
        let max_rss = steady.iter().map(|s| s.0).max().unwrap_or(0);
        let max_live = steady.iter().map(|s| s.1).max().unwrap_or(0);
        let mean_live = steady.iter().map(|s| s.1).sum::<usize>() as f64 / steady.len().max(1) as f64;
        println!(
            "paced at {:.0} events/s: steady state (second half, {} samples): RSS at most {max_rss} kB ({:.2} GB), live asset actors {mean_live:.0} on average, {max_live} at most",
            args.rate.unwrap_or(0.0),
            steady.len(),
            max_rss as f64 / 1e6
        );
    }
    if let Some(cpu) = cpu {
        println!(
            "cpu: {:.2?} of CPU time for the readings = {:.2} µs per event ({:.1} cores busy on average)",
            cpu,
            cpu.as_secs_f64() * 1e6 / f64::from(args.events.max(1)),
            cpu.as_secs_f64() / elapsed.as_secs_f64()
        );
    }
    println!(
        "asset actors: {drained} commands in {drains} inbox drains = {:.2} per drain (the batching per mailbox drain bought)",
        drained as f64 / drains.max(1) as f64
    );
    let stats = twin.stats();
    println!(
        "ingest counters: {} accepted, {} shed under overload (counted and dead-lettered), {} invalid, {} rejected",
        stats.accepted, stats.shed, stats.invalid, stats.rejected
    );
    println!("log: {} records, {:.1} MB", twin.log().next_position(), twin.log().size_bytes() as f64 / 1e6);
    let actors = twin.occupancy().await?;
    println!(
        "asset actors in memory: {} live, {} stopping; at most {} at once (the shards' peaks summed); \
         assets waited {} times for room under the live-actor limit",
        actors.live, actors.stopping, actors.peak, actors.waited
    );
    if args.idle_ms.is_some() {
        // Wait (bounded) for every asset to passivate, counting the notifications.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while twin.live_assets().await? > 0 && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_secs(1), shard_events.recv()).await;
        }
        println!(
            "after passivation: {} live asset actors, RSS {} kB (freed memory is not always returned to the OS)",
            twin.live_assets().await?,
            rss_kb("VmRSS").unwrap_or(0)
        );
    }
    if let Some(peak) = rss_kb("VmHWM") {
        println!("peak RSS: {peak} kB");
    }
    // The read models read the log through their subscription: gone before the restart, as
    // in a new process (the log's directory is open in one place at a time).
    drop(read_models);
    Arc::into_inner(twin).context("the twin is still in use")?.shutdown().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.recover {
        if args.cold {
            let snapshots = dir.join("log").join("snapshots");
            for entry in std::fs::read_dir(&snapshots).with_context(|| format!("listing {}", snapshots.display()))? {
                let path = entry?.path();
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        let started = Instant::now();
        let config = TwinConfig {
            shards: args.shards,
            log: LogConfig { durability, ..LogConfig::default() },
            ..TwinConfig::new(&dir)
        };
        let twin = Arc::new(Twin::start(config).await.map_err(|e| anyhow::anyhow!("restarting the twin: {e}"))?);
        let opened = started.elapsed();
        let fold = twin.recovery().clone();
        let ids: Vec<String> = (0..args.assets).map(|i| format!("sensor_{i:07}")).collect();
        let queue = Arc::new(std::sync::Mutex::new(ids));
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency.max(1) {
            let (twin, queue) = (Arc::clone(&twin), Arc::clone(&queue));
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().expect("queue lock").pop();
                    let Some(id) = next else { return Ok::<(), anyhow::Error>(()) };
                    twin.asset_state(&id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        println!(
            "recovery: twin restarted in {opened:.2?} (log reopened, every frame verified; {} asset events of {} assets folded into their snapshots in {:.2?}); {} asset states rebuilt in {:.2?} in all",
            fold.events,
            fold.assets,
            fold.elapsed,
            args.assets,
            started.elapsed()
        );
        println!(
            "live asset actors after recovery: {} (queries read snapshots; assets wake on their next command)",
            twin.live_assets().await?
        );
        Arc::into_inner(twin)
            .context("the twin is still in use")?
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
