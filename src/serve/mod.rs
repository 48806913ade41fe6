//! `citytwin serve`: the live twin behind a gRPC API and an HTTP / WebSocket gateway, with
//! authentication, per-organization rate limits and graceful shutdown; and `citytwin token`.
//!
//! - [`config`]: the configuration file and its checks.
//! - [`auth`]: tokens (stored hashed) and the authorization rule.
//! - [`gateway`]: what every protocol shares (ingest with precise refusals, queries).
//! - [`grpc`], [`http`], [`mqtt`] and [`amqp`]: the protocol translations; [`mapping`]: how
//!   broker messages (MQTT, AMQP) map to events.
//! - [`prometheus`]: `GET /metrics`.

pub(crate) mod amqp;
pub(crate) mod auth;
pub(crate) mod config;
pub(crate) mod gateway;
pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod mapping;
pub(crate) mod mqtt;
pub(crate) mod prometheus;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use citytwin_core::cep::{Rule, parse_rules};
use citytwin_proto::v1;
use citytwin_twin::cell::CellConfig;
use citytwin_twin::city::{Twin, TwinConfig};
use citytwin_twin::read::{LiveReadModels, ReadModels};
use clap::Args;
use h3o::Resolution;
use tokio::net::TcpListener;

use self::auth::{Tokens, hash_token, new_token};
use self::config::{Organization, ServeConfig};
use self::gateway::{CityGeometry, Gateway};

/// The rule files shipped with citytwin, run when the configuration names none.
const SHIPPED_RULES: [(&str, &str); 4] = [
    ("air-quality.toml", include_str!("../../scenarios/rules/air-quality.toml")),
    ("battery-low.toml", include_str!("../../scenarios/rules/battery-low.toml")),
    ("congestion.toml", include_str!("../../scenarios/rules/congestion.toml")),
    ("sensor-offline.toml", include_str!("../../scenarios/rules/sensor-offline.toml")),
];

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (see citytwin.example.toml); built-in defaults without it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory (overrides the file's `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC address (overrides `[grpc] listen`; port 0 picks a free one).
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// HTTP / WebSocket address (overrides `[http] listen`; port 0 picks a free one).
    #[arg(long)]
    http: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The organization the token is for (only used in the printed configuration snippet).
    #[arg(long, default_value = "my-organization")]
    org: String,
    /// Hash this token instead of making a new one.
    #[arg(long)]
    hash: Option<String>,
}

/// `citytwin token`: a new API token and the configuration lines that let it in.
pub(crate) fn token(args: &TokenArgs) {
    let token = args.hash.clone().unwrap_or_else(new_token);
    if args.hash.is_none() {
        println!("token (give it to the client; it is not stored anywhere): {token}");
    }
    println!("\n[[organizations]]\nname = {:?}\ntoken_sha256 = \"{}\"", args.org, hash_token(&token));
}

fn rules(config: &ServeConfig) -> anyhow::Result<Vec<Rule>> {
    let mut rules = Vec::new();
    if config.twin.rules.is_empty() {
        for (name, text) in SHIPPED_RULES {
            rules.extend(parse_rules(text).map_err(|e| anyhow::anyhow!("shipped rule {name}: {e}"))?);
        }
    }
    for path in &config.twin.rules {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        rules.extend(parse_rules(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?);
    }
    Ok(rules)
}

/// A running server (for `serve` and for tests in this crate).
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    grpc_task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
    mqtt_task: Option<tokio::task::JoinHandle<()>>,
    amqp_task: Option<tokio::task::JoinHandle<()>>,
    /// The gRPC response streams' feeding tasks (see `grpc::Api`).
    tasks: tokio_util::task::TaskTracker,
    gateway: Arc<Gateway>,
}

/// Where `serve` leaves its development token, for `citytwin view` and scripts.
pub(crate) fn dev_token_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("dev-token")
}

/// Writes the development token, readable by its owner only.
fn write_dev_token(data_dir: &std::path::Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let path = dev_token_path(data_dir);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("writing {}", path.display()))
}

/// Starts the twin (recovering it from its log), then the listeners.
pub(crate) async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    let resolution = Resolution::try_from(config.twin.resolution).context("twin.resolution")?;
    let mut cells = CellConfig::new(rules(&config)?);
    cells.resolution = resolution;
    let mut twin_config = TwinConfig {
        shards: config.twin.shards.max(1),
        cells: Some(cells.clone()),
        ..TwinConfig::new(&config.data_dir)
    };
    if let Some(every) = config.twin.snapshot_every {
        twin_config.asset.snapshot_every = every;
    }
    if let Some(limit) = config.twin.max_live_assets {
        twin_config.max_live_assets = limit;
    }
    if let Some(durability) = config.twin.durability().map_err(anyhow::Error::msg)? {
        twin_config.log.durability = durability;
    }
    if let Some(every) = config.twin.checkpoint_every().map_err(anyhow::Error::msg)? {
        twin_config.log.checkpoint_every = every;
    }
    let twin = Twin::start(twin_config).await.map_err(|e| anyhow::anyhow!("starting the twin: {e}"))?;
    let geometry = config.twin.geometry.as_deref().map(CityGeometry::load).transpose()?;
    start_with(config, twin, cells, geometry).await
}

/// Serves a twin that is already running (`citytwin run --serve` starts its own): rebuilds
/// the read models from its log, then starts the listeners. `cells` are the twin's cell
/// settings (for aggregate queries).
pub(crate) async fn start_with(
    mut config: ServeConfig,
    twin: Twin,
    cells: CellConfig,
    geometry: Option<CityGeometry>,
) -> anyhow::Result<Running> {
    let resolution = cells.resolution;
    if config.organizations.is_empty() {
        let token = new_token();
        eprintln!(
            "no organizations configured: development token for the admin organization \"local\" \
             (valid until this server stops; also in {}):\n  {token}",
            dev_token_path(&config.data_dir).display()
        );
        write_dev_token(&config.data_dir, &token)?;
        config.organizations.push(Organization {
            name: "local".into(),
            token_sha256: vec![hash_token(&token)],
            admin: true,
        });
    }
    let tokens = Arc::new(Tokens::new(&config.organizations));
    // The read side, rebuilt from the log before any client can write.
    let log = twin.log().clone();
    let models = tokio::task::spawn_blocking(move || ReadModels::rebuild(&log, resolution)).await??;
    tracing::info!(assets = models.assets.len(), events = models.applied, "read models rebuilt from the log");
    let models = LiveReadModels::start_from(twin.bus(), models);
    let mut gateway = Gateway::new(twin, models, cells, &config.limits);
    gateway.geometry = geometry;
    let gateway = Arc::new(gateway);

    let (shutdown, mut grpc_stop) = tokio::sync::watch::channel(false);
    let mut http_stop = grpc_stop.clone();

    let grpc_listener = TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("binding gRPC on {}", config.grpc.listen))?;
    let grpc = grpc_listener.local_addr()?;
    let http_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http.listen))?;
    let http = http_listener.local_addr()?;

    let tasks = tokio_util::task::TaskTracker::new();
    let api = grpc::Api::new(Arc::clone(&gateway), shutdown.subscribe(), tasks.clone());
    let auth = grpc::authenticate(Arc::clone(&tokens));
    let max = config.grpc.max_message_bytes;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<v1::ingest_server::IngestServer<grpc::Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.grpc.tls {
        server = server.tls_config(tls.server_config()?).context("grpc.tls")?;
        let mutual = if tls.client_ca.is_some() { "mutual TLS" } else { "TLS" };
        tracing::info!(cert = %tls.cert.display(), "gRPC over {mutual}");
    }
    let router = server
        .add_service(health)
        .add_service(reflection)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            v1::ingest_server::IngestServer::new(api.clone()).max_decoding_message_size(max),
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            v1::query_server::QueryServer::new(api.clone()).max_decoding_message_size(max),
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            v1::subscribe_server::SubscribeServer::new(api.clone()),
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            v1::replay_server::ReplayServer::new(api.clone()),
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            v1::admin_server::AdminServer::new(api),
            auth,
        ));
    let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let grpc_task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = grpc_stop.wait_for(|stop| *stop).await;
    }));

    let app = http::router(Arc::clone(&gateway), tokens, prometheus::handle()?, config.http.max_body_bytes);
    let http_task = tokio::spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    let mqtt_task = match config.mqtt.clone() {
        Some(mqtt) => Some(mqtt::start(mqtt, Arc::clone(&gateway), shutdown.subscribe()).await?),
        None => None,
    };
    let amqp_task = match config.amqp.clone() {
        Some(amqp) => Some(amqp::start(amqp, Arc::clone(&gateway), shutdown.subscribe()).await?),
        None => None,
    };
    Ok(Running { grpc, http, shutdown, grpc_task, http_task, mqtt_task, amqp_task, tasks, gateway })
}

impl Running {
    /// The gateway in front of the twin being served.
    pub(crate) fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Stops accepting, lets requests in flight finish, stops the actors and flushes the log.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.grpc_task.await??;
        self.http_task.await??;
        for task in [self.mqtt_task, self.amqp_task].into_iter().flatten() {
            task.await?;
        }
        // The streams are gone with the server; the tasks that fed them end on their next
        // turn, each dropping its hold on the gateway.
        self.tasks.close();
        self.tasks.wait().await;
        let gateway = Arc::into_inner(self.gateway).context("a connection still holds the twin")?;
        gateway.twin.shutdown().await.map_err(|e| anyhow::anyhow!("stopping the twin: {e}"))?;
        Ok(())
    }
}

/// Ctrl-C or SIGTERM, listened for from this call on: the handlers are installed before it
/// returns, so a signal sent as soon as the caller announces that it serves is a graceful stop
/// (installed only once the future ran, a SIGTERM in between killed the process).
pub(crate) fn termination() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
        async move {
            match handlers {
                Ok((mut term, mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `citytwin serve`.
pub(crate) fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => ServeConfig::load(path)?,
        None => ServeConfig::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir.clone_from(dir);
    }
    if let Some(addr) = args.grpc {
        config.grpc.listen = addr;
    }
    if let Some(addr) = args.http {
        config.http.listen = addr;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let running = start(config).await?;
        let stop = termination();
        // One line on stdout, for people and for scripts that wait for the server.
        println!("citytwin serving: grpc={} http={}", running.grpc, running.http);
        tracing::info!(grpc = %running.grpc, http = %running.http, "serving; Ctrl-C or SIGTERM stops");
        stop.await;
        tracing::info!("stopping: finishing requests in flight, flushing the log");
        running.stop().await?;
        tracing::info!("stopped");
        Ok(())
    })
}
