//! `citytwin loadtest`: drives a running server with a scenario's events over gRPC, HTTP,
//! MQTT or AMQP and measures what a client sees.
//!
//! - Events come from the scenario generator (deterministic by seed), in event-time order;
//!   each asset's events go through one connection (assets are spread over `--connections`
//!   by hash), so per-asset order holds.
//! - Before the first event, a gRPC `Subscribe` stream is opened (`--watch`, the target
//!   itself for gRPC). Every event id sent is remembered with the instant its request left;
//!   when the id comes back on the stream, the difference is one sample of the
//!   *ingest→visible* latency (HdrHistogram, microseconds). It is measured from the send, so
//!   it includes the network and the durable append: the acknowledgement itself usually
//!   arrives after the event is already visible.
//! - For gRPC and HTTP every request's answer is timed too (*acknowledgement latency*), its
//!   refusals are counted by reason, and rate-limit answers are retried after the hinted
//!   delay (counted, with the time waited: the backpressure the server applied).
//! - For MQTT, a plain subscriber on the same topic filter measures what the broker delivers
//!   to any client, to compare with what citytwin ingests.
//! - `--rate` paces the sending (events per second); without it the client sends as fast as
//!   the server answers, which measures the maximum.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use citytwin_core::codec::{json, mqtt as mqtt_codec};
use citytwin_core::event::{EcoString, Event};
use citytwin_proto::convert::{event_to_proto, reading_from_event};
use citytwin_proto::v1;
use citytwin_simulator::generate::{EventMaker, Generator, Plan};
use citytwin_simulator::scenario;
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rustc_hash::FxHashMap;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;

/// Options of `citytwin loadtest`.
#[derive(Debug, Args)]
pub(crate) struct LoadtestArgs {
    /// The scenario whose events are sent (see docs/scenarios.md).
    scenario: PathBuf,
    /// Where to send: grpc://HOST:PORT (grpcs:// for TLS), http://HOST:PORT,
    /// mqtt://HOST:PORT or amqp://USER:PASSWORD@HOST:PORT/VHOST.
    #[arg(long)]
    target: String,
    /// The organization's API token (`citytwin serve` prints a development one).
    #[arg(long, env = "CITYTWIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The server's gRPC address, for the Subscribe stream that measures visibility
    /// (default: the target for grpc://, else grpc://127.0.0.1:50051).
    #[arg(long)]
    watch: Option<String>,
    /// Events per second to send (default: as fast as the server takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many events (default: the whole scenario).
    #[arg(long)]
    events: Option<u64>,
    /// Events per request (gRPC, HTTP) or per confirmed publish window (AMQP).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent connections (each carries a share of the assets).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// MQTT topic prefix (`PREFIX/<asset>/events`) or AMQP routing-key prefix
    /// (`PREFIX.<asset>.events`); the server's gateway must subscribe to it.
    #[arg(long, default_value = "citytwin")]
    prefix: String,
    /// Stamp this organization on every event (the scenario's own otherwise). The server
    /// refuses events naming another organization than the token's, or the broker
    /// source's (`organization` of the MQTT subscription or AMQP queue).
    #[arg(long)]
    organization: Option<String>,
    /// AMQP exchange to publish to.
    #[arg(long, default_value = "amq.topic")]
    exchange: String,
    /// After the last send, how long to wait for events still to become visible.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain: Duration,
    /// Send every event over gRPC as a CloudEvent, and watch them come back as CloudEvents.
    /// By default telemetry readings travel as typed `Reading`s both ways (what a
    /// high-volume client should do); this measures the plain CloudEvents path instead.
    #[arg(long)]
    cloudevents: bool,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    tls: ClientTls,
}

/// TLS for `grpcs://` addresses (target and `--watch`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientTls {
    /// PEM CA certificate the server's certificate must chain to (default: the system's roots).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that asks for one (`[grpc.tls] client_ca`).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ClientTls {
    fn config(&self) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let mut config = ClientTlsConfig::new();
        config = match &self.tls_ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    citytwin_core::duration::parse_duration(text).map_err(|e| e.to_string())
}

/// Where events go.
#[derive(Debug, Clone)]
enum Target {
    Grpc(String),
    Http(String),
    Mqtt { host: String, port: u16 },
    Amqp(String),
}

impl Target {
    fn parse(text: &str) -> anyhow::Result<Target> {
        let (scheme, rest) = text
            .split_once("://")
            .context("the target needs a scheme: grpc://, grpcs://, http://, mqtt://, amqp://")?;
        Ok(match scheme {
            "grpc" => Target::Grpc(format!("http://{rest}")),
            "grpcs" => Target::Grpc(format!("https://{rest}")),
            "http" => Target::Http(text.trim_end_matches('/').to_owned()),
            "mqtt" => {
                let (host, port) = rest.trim_end_matches('/').rsplit_once(':').context("mqtt://HOST:PORT")?;
                Target::Mqtt { host: host.to_owned(), port: port.parse().context("mqtt://HOST:PORT")? }
            }
            "amqp" | "amqps" => Target::Amqp(text.to_owned()),
            other => anyhow::bail!("unknown target scheme {other:?}: use grpc, grpcs, http, mqtt or amqp"),
        })
    }

    fn protocol(&self) -> &'static str {
        match self {
            Target::Grpc(_) => "grpc",
            Target::Http(_) => "http",
            Target::Mqtt { .. } => "mqtt",
            Target::Amqp(_) => "amqp",
        }
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Latency {
    samples: u64,
    p50_us: u64,
    p95_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        Latency {
            samples: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p95_us: histogram.value_at_quantile(0.95),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "p50 {:.2} ms · p95 {:.2} ms · p99 {:.2} ms · max {:.2} ms ({} samples)",
            ms(self.p50_us),
            ms(self.p95_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.samples
        )
    }
}

/// The report, as printed and as `--json` writes it.
#[derive(Debug, Serialize)]
struct Report {
    target: String,
    protocol: &'static str,
    scenario: String,
    rate_limit: Option<f64>,
    connections: usize,
    batch: usize,
    sent: u64,
    accepted: Option<u64>,
    refused: HashMap<String, u64>,
    visible: u64,
    not_visible: u64,
    send_seconds: f64,
    send_events_per_second: f64,
    visible_seconds: f64,
    visible_events_per_second: f64,
    ingest_to_visible: Latency,
    acknowledgement: Option<Latency>,
    rate_limited_answers: u64,
    rate_limited_wait_seconds: f64,
    errors: u64,
    baseline: Option<Baseline>,
}

/// What a plain MQTT subscriber on the same broker received meanwhile.
#[derive(Debug, Clone, Copy, Serialize)]
struct Baseline {
    received: u64,
    seconds: f64,
    events_per_second: f64,
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    started: Instant,
    /// Event id → when its request left.
    pending: Mutex<FxHashMap<EcoString, Instant>>,
    visible: Mutex<Histogram<u64>>,
    acks: Mutex<Histogram<u64>>,
    refused: Mutex<HashMap<String, u64>>,
    accepted: AtomicU64,
    seen: AtomicU64,
    /// Microseconds since `started` of the last visible event.
    last_seen_us: AtomicU64,
    rate_limited: AtomicU64,
    rate_limited_wait_us: AtomicU64,
    errors: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Shared {
    fn new() -> Shared {
        Shared {
            started: Instant::now(),
            pending: Mutex::new(FxHashMap::default()),
            visible: Mutex::new(histogram()),
            acks: Mutex::new(histogram()),
            refused: Mutex::new(HashMap::new()),
            accepted: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            last_seen_us: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            rate_limited_wait_us: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Remembers a batch as sent now.
    fn sending(&self, events: &[Event]) -> Instant {
        let now = Instant::now();
        let mut pending = self.pending.lock().expect("pending lock");
        for event in events {
            pending.insert(event.id.clone(), now);
        }
        now
    }

    fn answered(&self, sent: Instant, accepted: u64, refusals: impl IntoIterator<Item = (String, String)>) {
        let micros = sent.elapsed().as_micros() as u64;
        let _ = self.acks.lock().expect("acks lock").record(micros.max(1));
        self.accepted.fetch_add(accepted, Ordering::Relaxed);
        let mut refused = self.refused.lock().expect("refused lock");
        let mut pending = self.pending.lock().expect("pending lock");
        for (id, reason) in refusals {
            pending.remove(id.as_str());
            *refused.entry(reason).or_default() += 1;
        }
    }

    fn limited(&self, wait: Duration) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        self.rate_limited_wait_us.fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
    }

    /// An event seen on the Subscribe stream.
    fn seen(&self, id: &str) {
        let Some(sent) = self.pending.lock().expect("pending lock").remove(id) else { return };
        let micros = sent.elapsed().as_micros() as u64;
        let _ = self.visible.lock().expect("visible lock").record(micros.max(1));
        self.seen.fetch_add(1, Ordering::Relaxed);
        self.last_seen_us.store(self.started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn outstanding(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }
}

/// `Subscribe.Events`, each delivery decoded only as far as its event's id
/// ([`v1::DeliveryId`]): decoding whole events would make the measuring client, which shares
/// the machine with the server, the bottleneck.
async fn subscribe_ids(
    channel: tonic::transport::Channel,
    request: tonic::Request<v1::SubscribeRequest>,
) -> Result<tonic::Streaming<v1::DeliveryId>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("the Subscribe service is not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/citytwin.v1.Subscribe/Events");
    let codec = tonic_prost::ProstCodec::<v1::SubscribeRequest, v1::DeliveryId>::default();
    Ok(grpc.server_streaming(request, path, codec).await?.into_inner())
}

fn authed<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().context("the token is not valid header text")?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

async fn grpc_channel(address: &str, tls: &ClientTls) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Channel::from_shared(address.to_owned())
        .with_context(|| format!("bad gRPC address {address}"))?
        .tcp_nodelay(true);
    if address.starts_with("https://") {
        endpoint = endpoint.tls_config(tls.config()?).context("TLS configuration")?;
    }
    endpoint.connect().await.with_context(|| format!("connecting to {address}"))
}

/// `citytwin loadtest`.
pub(crate) fn run(args: &LoadtestArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.target)?;
    let scenario = scenario::load(&args.scenario).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(drive(args, target, scenario))?;
    print(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn drive(args: &LoadtestArgs, target: Target, scenario: scenario::Scenario) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared::new());
    let watch = match (&args.watch, &target) {
        (Some(watch), _) => Target::parse(watch)?,
        (None, Target::Grpc(_)) => target.clone(),
        (None, _) => Target::Grpc("http://127.0.0.1:50051".into()),
    };
    let Target::Grpc(watch) = watch else { anyhow::bail!("--watch must be a grpc:// or grpcs:// address") };

    // The visibility stream is open before the first event leaves.
    let request = v1::SubscribeRequest { readings: !args.cloudevents, ..Default::default() };
    let mut stream = subscribe_ids(grpc_channel(&watch, &args.tls).await?, authed(request, &args.token)?)
        .await
        .context("opening the Subscribe stream")?;
    let watcher_shared = Arc::clone(&shared);
    let watcher = tokio::spawn(async move {
        while let Ok(Some(delivery)) = stream.message().await {
            if let Some(id) = delivery.event.as_ref().or(delivery.reading.as_ref()) {
                watcher_shared.seen(&id.id);
            }
        }
    });
    let baseline = match &target {
        Target::Mqtt { host, port } => Some(mqtt_baseline(host, *port, &args.prefix).await?),
        _ => None,
    };

    // The generator on its own thread; batches of events in time order.
    let (events_tx, mut events_rx) = mpsc::channel::<Vec<Event>>(8);
    let limit = args.events.unwrap_or(u64::MAX);
    let chunk = args.batch.max(1);
    let scenario = Arc::new(scenario);
    let organization = args.organization.clone();
    let generator = std::thread::Builder::new().name("generator".into()).spawn(move || {
        let plan = Arc::new(Plan::new(scenario));
        let mut generator = Generator::new(Arc::clone(&plan), 1);
        let mut maker = EventMaker::new(Arc::clone(&plan));
        let (mut samples, mut made) = (Vec::new(), 0u64);
        let mut out = Vec::with_capacity(chunk);
        while !generator.finished() && made < limit {
            let until = citytwin_core::event::Timestamp::from_nanos(generator.now().as_nanos() + 60_000_000_000);
            samples.clear();
            generator.window(until, &mut samples);
            for sample in &samples {
                if made == limit {
                    break;
                }
                let mut event = maker.event(sample);
                if let Some(org) = &organization {
                    event.ext.organization = Some(org.as_str().into());
                }
                out.push(event);
                made += 1;
                if out.len() == chunk
                    && events_tx.blocking_send(std::mem::replace(&mut out, Vec::with_capacity(chunk))).is_err()
                {
                    return;
                }
            }
        }
        if !out.is_empty() {
            let _ = events_tx.blocking_send(out);
        }
    })?;

    // One sender task per connection, each with its own share of the assets.
    let connections = args.connections.max(1);
    let mut lanes = Vec::new();
    let mut tasks = Vec::new();
    for lane in 0..connections {
        let (tx, rx) = mpsc::channel::<Vec<Event>>(4);
        lanes.push(tx);
        let sender = Sender::connect(&target, args, lane).await?;
        tasks.push(tokio::spawn(sender.run(rx, Arc::clone(&shared), args.token.clone())));
    }

    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(args.events.unwrap_or(0)) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:32} {pos} sent · {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let send_started = Instant::now();
    let mut sent = 0u64;
    let mut parts: Vec<Vec<Event>> = (0..connections).map(|_| Vec::with_capacity(chunk)).collect();
    while let Some(batch) = events_rx.recv().await {
        for event in batch {
            let lane = event.asset_id().map_or(0, |asset| lane_of(asset, connections));
            parts[lane].push(event);
            if parts[lane].len() >= chunk {
                let full = std::mem::replace(&mut parts[lane], Vec::with_capacity(chunk));
                sent += full.len() as u64;
                lanes[lane].send(full).await.map_err(|_| anyhow::anyhow!("a sender stopped"))?;
                pace(args.rate, send_started, sent).await;
            }
        }
        bar.set_position(sent);
        bar.set_message(format!(
            "{} visible · {:.0} events/s",
            shared.seen.load(Ordering::Relaxed),
            sent as f64 / send_started.elapsed().as_secs_f64().max(1e-9)
        ));
    }
    for (lane, part) in parts.into_iter().enumerate() {
        if !part.is_empty() {
            sent += part.len() as u64;
            lanes[lane].send(part).await.map_err(|_| anyhow::anyhow!("a sender stopped"))?;
        }
    }
    drop(lanes);
    generator.join().map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
    for task in tasks {
        task.await??;
    }
    let send_seconds = send_started.elapsed().as_secs_f64();

    // Wait for the rest to become visible, at most `drain`.
    let deadline = tokio::time::Instant::now() + args.drain;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while shared.outstanding() > 0 && tokio::time::Instant::now() < deadline {
        bar.set_message(format!("draining: {} not yet visible", shared.outstanding()));
        tick.tick().await;
    }
    bar.finish_and_clear();
    watcher.abort();
    let baseline = match baseline {
        Some(baseline) => Some(baseline.finish().await),
        None => None,
    };

    let visible = shared.seen.load(Ordering::Relaxed);
    let first_send_us = send_started.duration_since(shared.started).as_micros() as u64;
    let visible_seconds = shared.last_seen_us.load(Ordering::Relaxed).saturating_sub(first_send_us) as f64 / 1e6;
    let acked = matches!(target, Target::Grpc(_) | Target::Http(_));
    Ok(Report {
        target: args.target.clone(),
        protocol: target.protocol(),
        scenario: args.scenario.display().to_string(),
        rate_limit: args.rate,
        connections,
        batch: chunk,
        sent,
        accepted: acked.then(|| shared.accepted.load(Ordering::Relaxed)),
        refused: shared.refused.lock().expect("refused lock").clone(),
        visible,
        not_visible: shared.outstanding() as u64,
        send_seconds,
        send_events_per_second: sent as f64 / send_seconds.max(1e-9),
        visible_seconds,
        visible_events_per_second: visible as f64 / visible_seconds.max(1e-9),
        ingest_to_visible: Latency::of(&shared.visible.lock().expect("visible lock")),
        acknowledgement: acked.then(|| Latency::of(&shared.acks.lock().expect("acks lock"))),
        rate_limited_answers: shared.rate_limited.load(Ordering::Relaxed),
        rate_limited_wait_seconds: shared.rate_limited_wait_us.load(Ordering::Relaxed) as f64 / 1e6,
        errors: shared.errors.load(Ordering::Relaxed),
        baseline,
    })
}

/// The connection an asset's events travel on (FNV-1a: stable across runs).
fn lane_of(asset: &str, lanes: usize) -> usize {
    let hash = asset.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % lanes as u64) as usize
}

/// Sleeps until `sent` events are due at `rate` per second (no-op without a rate).
async fn pace(rate: Option<f64>, started: Instant, sent: u64) {
    if let Some(rate) = rate.filter(|r| *r > 0.0) {
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
    }
}

/// One connection to the target (a handful per run: their sizes do not matter).
#[expect(clippy::large_enum_variant, reason = "one value per connection")]
enum Sender {
    Grpc {
        client: v1::ingest_client::IngestClient<tonic::transport::Channel>,
        /// Telemetry as typed readings (not `--cloudevents`).
        readings: bool,
    },
    Http {
        client: reqwest::Client,
        url: String,
    },
    Mqtt {
        client: rumqttc::v5::AsyncClient,
        prefix: String,
        /// Messages handed to the client, and PUBACKs from the broker so far: the connection
        /// closes only once every message is in the broker.
        published: AtomicU64,
        acked: tokio::sync::watch::Receiver<u64>,
    },
    Amqp {
        channel: lapin::Channel,
        exchange: String,
        prefix: String,
        _connection: lapin::Connection,
    },
}

impl Sender {
    async fn connect(target: &Target, args: &LoadtestArgs, lane: usize) -> anyhow::Result<Sender> {
        Ok(match target {
            Target::Grpc(address) => {
                let max = 64 << 20;
                Sender::Grpc {
                    client: v1::ingest_client::IngestClient::new(grpc_channel(address, &args.tls).await?)
                        .max_encoding_message_size(max)
                        .max_decoding_message_size(max),
                    readings: !args.cloudevents,
                }
            }
            Target::Http(base) => Sender::Http { client: reqwest::Client::new(), url: format!("{base}/v1/events") },
            Target::Mqtt { host, port } => {
                let id = format!("citytwin-loadtest-{}-{lane}", std::process::id());
                let mut options = rumqttc::v5::MqttOptions::new(id, host.clone(), *port);
                options.set_keep_alive(Duration::from_secs(30));
                options.set_outgoing_inflight_upper_limit(1024);
                let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 4096);
                let (acks, acked) = tokio::sync::watch::channel(0u64);
                tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::PubAck(_))) => {
                                acks.send_modify(|n| *n += 1);
                            }
                            Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(%error, "MQTT publisher connection failed");
                                return;
                            }
                        }
                    }
                });
                Sender::Mqtt { client, prefix: args.prefix.clone(), published: AtomicU64::new(0), acked }
            }
            Target::Amqp(uri) => {
                let connection = lapin::Connection::connect(uri, lapin::ConnectionProperties::default())
                    .await
                    .context("connecting to the AMQP broker")?;
                let channel = connection.create_channel().await?;
                channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await?;
                Sender::Amqp {
                    channel,
                    exchange: args.exchange.clone(),
                    prefix: args.prefix.clone(),
                    _connection: connection,
                }
            }
        })
    }

    async fn run(self, mut rx: mpsc::Receiver<Vec<Event>>, shared: Arc<Shared>, token: String) -> anyhow::Result<()> {
        while let Some(batch) = rx.recv().await {
            if let Err(error) = self.send(&batch, &shared, &token).await {
                tracing::warn!(%error, "a batch failed");
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Sender::Mqtt { client, published, acked, .. } = &self {
            let published = published.load(Ordering::Relaxed);
            let mut acked = acked.clone();
            acked.wait_for(|n| *n >= published).await.context("the MQTT connection closed before every PUBACK")?;
            client.disconnect().await?;
        }
        Ok(())
    }

    async fn send(&self, batch: &[Event], shared: &Shared, token: &str) -> anyhow::Result<()> {
        match self {
            Sender::Grpc { client, readings } => {
                loop {
                    // Built again for a retry rather than kept (and copied) for one.
                    let request = ingest_request(batch, *readings);
                    let sent = shared.sending(batch);
                    match client.clone().ingest(authed(request, token)?).await {
                        Ok(response) => {
                            let response = response.into_inner();
                            let refusals = response.rejections.into_iter().map(|r| {
                                let reason = v1::RejectionReason::try_from(r.reason)
                                    .map_or_else(|_| "unknown".to_owned(), |r| r.as_str_name().to_ascii_lowercase());
                                (r.event_id, reason.trim_start_matches("rejection_reason_").to_owned())
                            });
                            shared.answered(sent, response.accepted, refusals);
                            return Ok(());
                        }
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            let wait = status
                                .metadata()
                                .get("retry-after-ms")
                                .and_then(|v| v.to_str().ok()?.parse().ok())
                                .map_or(Duration::from_millis(100), Duration::from_millis);
                            shared.limited(wait);
                            tokio::time::sleep(wait).await;
                        }
                        Err(status) => anyhow::bail!("ingest failed: {status}"),
                    }
                }
            }
            Sender::Http { client, url } => {
                let body = json::encode_batch(batch);
                loop {
                    let sent = shared.sending(batch);
                    let response = client
                        .post(url)
                        .bearer_auth(token)
                        .header("content-type", "application/cloudevents-batch+json")
                        .body(body.clone())
                        .send()
                        .await?;
                    if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                        let wait = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                            .map_or(Duration::from_millis(100), Duration::from_secs);
                        shared.limited(wait);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    let status = response.status();
                    let outcome: serde_json::Value = response.json().await?;
                    anyhow::ensure!(status.is_success(), "HTTP {status}: {outcome}");
                    let refusals = outcome["refusals"].as_array().cloned().unwrap_or_default().into_iter().map(|r| {
                        (
                            r["event_id"].as_str().unwrap_or_default().to_owned(),
                            r["reason"].as_str().unwrap_or("unknown").to_owned(),
                        )
                    });
                    shared.answered(sent, outcome["accepted"].as_u64().unwrap_or(0), refusals);
                    return Ok(());
                }
            }
            Sender::Mqtt { client, prefix, published, .. } => {
                shared.sending(batch);
                for event in batch {
                    let message = mqtt_codec::encode_v5(event);
                    let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                        user_properties: message.user_properties,
                        content_type: message.content_type,
                        ..Default::default()
                    };
                    let topic = format!("{prefix}/{}/events", event.asset_id().unwrap_or("_city"));
                    client
                        .publish_with_properties(
                            topic,
                            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                            false,
                            message.payload,
                            properties,
                        )
                        .await?;
                    published.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Sender::Amqp { channel, exchange, prefix, .. } => {
                shared.sending(batch);
                let mut confirms = Vec::with_capacity(batch.len());
                for event in batch {
                    let (content_type, headers, body) = crate::serve::amqp::encode(event);
                    let mut properties = lapin::BasicProperties::default().with_headers(headers).with_delivery_mode(2);
                    if let Some(content_type) = content_type {
                        properties = properties.with_content_type(content_type.into());
                    }
                    let key = format!("{prefix}.{}.events", event.asset_id().unwrap_or("_city"));
                    confirms.push(
                        channel
                            .basic_publish(
                                exchange.as_str().into(),
                                key.into(),
                                lapin::options::BasicPublishOptions::default(),
                                &body,
                                properties,
                            )
                            .await?,
                    );
                }
                // The broker's confirms: the window's messages are stored.
                for confirm in confirms {
                    anyhow::ensure!(confirm.await?.is_ack(), "the broker refused a message");
                }
                Ok(())
            }
        }
    }
}

/// A plain MQTT subscriber on the load's topics, counting what the broker delivers.
struct MqttBaseline {
    received: Arc<AtomicU64>,
    first_last: Arc<Mutex<Option<(Instant, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A batch as one ingest request: readings typed when `readings`, every other event (and
/// every event without it) a CloudEvent, all in order.
fn ingest_request(batch: &[Event], readings: bool) -> v1::IngestRequest {
    if !readings {
        return v1::IngestRequest { events: batch.iter().map(event_to_proto).collect(), items: Vec::new() };
    }
    let items = batch
        .iter()
        .map(|event| {
            let item = match reading_from_event(event) {
                Some(reading) => v1::ingest_item::Item::Reading(reading),
                None => v1::ingest_item::Item::Event(event_to_proto(event)),
            };
            v1::IngestItem { item: Some(item) }
        })
        .collect();
    v1::IngestRequest { events: Vec::new(), items }
}

async fn mqtt_baseline(host: &str, port: u16, prefix: &str) -> anyhow::Result<MqttBaseline> {
    let id = format!("citytwin-loadtest-baseline-{}", std::process::id());
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(rumqttc::v5::MqttOptions::new(id, host, port), 1024);
    client.subscribe(format!("{prefix}/+/events"), rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await?;
    let received = Arc::new(AtomicU64::new(0));
    let first_last = Arc::new(Mutex::new(None::<(Instant, Instant)>));
    let (counter, times) = (Arc::clone(&received), Arc::clone(&first_last));
    // Wait for the SUBACK so no message is missed.
    loop {
        match eventloop.poll().await? {
            rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(_)) => break,
            _ => continue,
        }
    }
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(_)) = event {
                counter.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let mut times = times.lock().expect("baseline lock");
                *times = Some(times.map_or((now, now), |(first, _)| (first, now)));
            }
        }
    });
    Ok(MqttBaseline { received, first_last, task })
}

impl MqttBaseline {
    async fn finish(self) -> Baseline {
        self.task.abort();
        let _ = self.task.await;
        let received = self.received.load(Ordering::Relaxed);
        let seconds = self.first_last.lock().expect("baseline lock").map_or(0.0, |(a, b)| (b - a).as_secs_f64());
        Baseline { received, seconds, events_per_second: received as f64 / seconds.max(1e-9) }
    }
}

fn print(report: &Report) {
    println!(
        "loadtest {} → {} ({}, {} connections, batches of {})",
        report.scenario, report.target, report.protocol, report.connections, report.batch
    );
    if let Some(rate) = report.rate_limit {
        println!("paced at {rate:.0} events/s");
    }
    println!(
        "sent:     {} events in {:.2} s = {:.0} events/s{}",
        report.sent,
        report.send_seconds,
        report.send_events_per_second,
        report.accepted.map_or(String::new(), |a| format!(" ({a} accepted)"))
    );
    if !report.refused.is_empty() {
        let mut refused: Vec<_> = report.refused.iter().collect();
        refused.sort();
        println!("refused:  {}", refused.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "));
    }
    println!(
        "visible:  {} on Subscribe in {:.2} s = {:.0} events/s; {} never became visible",
        report.visible, report.visible_seconds, report.visible_events_per_second, report.not_visible
    );
    println!("ingest→visible (send to Subscribe): {}", report.ingest_to_visible);
    if let Some(acks) = &report.acknowledgement {
        println!("acknowledgement (send to answer):   {acks}");
    }
    println!(
        "backpressure: {} rate-limit answers ({:.2} s waited); {} failed batches",
        report.rate_limited_answers, report.rate_limited_wait_seconds, report.errors
    );
    if let Some(baseline) = &report.baseline {
        println!(
            "broker baseline: a plain subscriber received {} in {:.2} s = {:.0} events/s (citytwin: {:.0} events/s visible)",
            baseline.received, baseline.seconds, baseline.events_per_second, report.visible_events_per_second
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_a_precise_error() {
        assert!(
            matches!(Target::parse("grpc://127.0.0.1:50051").unwrap(), Target::Grpc(a) if a == "http://127.0.0.1:50051")
        );
        assert!(matches!(Target::parse("mqtt://localhost:1883").unwrap(), Target::Mqtt { port: 1883, .. }));
        assert!(matches!(Target::parse("amqp://g:g@h:5672/%2f").unwrap(), Target::Amqp(_)));
        assert!(Target::parse("ftp://x").unwrap_err().to_string().contains("unknown target scheme"));
        assert!(Target::parse("127.0.0.1:1").unwrap_err().to_string().contains("scheme"));
    }

    #[test]
    fn an_asset_always_travels_on_one_lane() {
        let lanes: Vec<usize> = ["a", "b", "c", "a"].iter().map(|a| lane_of(a, 4)).collect();
        assert_eq!(lanes[0], lanes[3]);
        assert!(lanes.iter().all(|l| *l < 4));
        assert_eq!(lane_of("anything", 1), 0);
    }

    #[test]
    fn latencies_are_read_from_the_histogram() {
        let mut h = histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.samples, 1000);
        assert!((495..=505).contains(&l.p50_us) && (985..=995).contains(&l.p99_us), "{l:?}");
        assert_eq!(l.max_us, h.max());
    }
}
