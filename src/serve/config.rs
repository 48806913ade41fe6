//! `citytwin serve`'s configuration: a TOML file (see `citytwin.example.toml`) plus flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The whole file. Every section has defaults; only `[[organizations]]` is needed to let
/// clients in (without any, `serve` creates a local development token and prints it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeConfig {
    /// Where the event log lives.
    #[serde(default = "default_data_dir")]
    pub(crate) data_dir: PathBuf,
    #[serde(default)]
    pub(crate) grpc: GrpcConfig,
    #[serde(default)]
    pub(crate) http: HttpConfig,
    #[serde(default)]
    pub(crate) twin: TwinSection,
    #[serde(default)]
    pub(crate) limits: Limits,
    /// Who may connect.
    #[serde(default)]
    pub(crate) organizations: Vec<Organization>,
    /// The MQTT gateway, when set.
    #[serde(default)]
    pub(crate) mqtt: Option<super::mqtt::MqttConfig>,
    /// The AMQP 0-9-1 gateway, when set.
    #[serde(default)]
    pub(crate) amqp: Option<super::amqp::AmqpConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        toml::from_str("").expect("an empty configuration is valid")
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

/// The gRPC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct GrpcConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port and prints it).
    pub(crate) listen: SocketAddr,
    /// Largest request message accepted.
    pub(crate) max_message_bytes: usize,
    /// TLS, and with `client_ca` mutual TLS; plain HTTP/2 when absent.
    pub(crate) tls: Option<GrpcTls>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig { listen: SocketAddr::from(([127, 0, 0, 1], 50051)), max_message_bytes: 16 << 20, tls: None }
    }
}

/// `[grpc.tls]`: the server's certificate, and the CA its clients' certificates must chain to.
///
/// With `client_ca`, a client without a certificate signed by that CA cannot even open a
/// connection (mutual TLS); requests still carry an organization's token, which decides what
/// they may see.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrpcTls {
    /// PEM certificate chain of the server (leaf first).
    pub(crate) cert: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: PathBuf,
    /// PEM CA certificate(s) client certificates must chain to; sets mutual TLS.
    pub(crate) client_ca: Option<PathBuf>,
}

impl GrpcTls {
    /// The tonic configuration, with every file read.
    ///
    /// # Errors
    /// A file that cannot be read, named.
    pub(crate) fn server_config(&self) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path).with_context(|| format!("grpc.tls.{what}: reading {}", path.display()))
        };
        let identity = tonic::transport::Identity::from_pem(read(&self.cert, "cert")?, read(&self.key, "key")?);
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca, "client_ca")?));
        }
        Ok(config)
    }

    fn relative_to(&mut self, base: &Path) {
        for path in [&mut self.cert, &mut self.key].into_iter().chain(self.client_ca.as_mut()) {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}

/// The HTTP / WebSocket listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpConfig {
    /// Address to listen on.
    pub(crate) listen: SocketAddr,
    /// Largest request body accepted (HTTP 413 beyond).
    pub(crate) max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8080)), max_body_bytes: 4 << 20 }
    }
}

/// The embedded twin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TwinSection {
    /// Asset shards (supervisors).
    pub(crate) shards: usize,
    /// H3 resolution of the cell actors.
    pub(crate) resolution: u8,
    /// CEP rule files the cells run.
    pub(crate) rules: Vec<PathBuf>,
    /// Events of one snapshot interval per asset.
    pub(crate) snapshot_every: Option<u64>,
    /// Most live asset actors; beyond it some of the least recently active
    /// passivate, by a fixed rank per asset (0: no limit).
    pub(crate) max_live_assets: Option<usize>,
    /// When an ingested event counts as stored (`Durability::parse`): `always` (fsynced
    /// before the answer, the default), `interval` / `interval:<duration>` or `never`.
    pub(crate) durability: Option<String>,
    /// How often, at most, the event log writes its heads checkpoint at a segment roll (a
    /// duration, or `off` for only at shutdown): after a crash, a restart indexes the records
    /// since the last one.
    pub(crate) checkpoint_every: Option<String>,
    /// The city's roads and buildings (a GeoJSON FeatureCollection), served to viewers by
    /// `Query.Geometry` and `GET /v1/geometry`.
    pub(crate) geometry: Option<PathBuf>,
}

impl TwinSection {
    /// The configured durability, when one is set.
    ///
    /// # Errors
    /// `twin.durability: ` and why the value is not one.
    pub(crate) fn durability(&self) -> Result<Option<citytwin_core::log::Durability>, String> {
        self.durability
            .as_deref()
            .map(citytwin_core::log::Durability::parse)
            .transpose()
            .map_err(|error| format!("twin.durability: {error}"))
    }

    /// The configured checkpoint interval (`Some(None)`: `off`), when one is set.
    ///
    /// # Errors
    /// `twin.checkpoint_every: ` and why the value is not one.
    pub(crate) fn checkpoint_every(&self) -> Result<Option<Option<std::time::Duration>>, String> {
        self.checkpoint_every
            .as_deref()
            .map(|text| match text {
                "off" => Ok(None),
                every => citytwin_core::duration::parse_duration(every).map(Some),
            })
            .transpose()
            .map_err(|error| format!("twin.checkpoint_every: {error} (or \"off\")"))
    }
}

impl Default for TwinSection {
    fn default() -> Self {
        TwinSection {
            shards: 8,
            resolution: 8,
            rules: Vec::new(),
            snapshot_every: None,
            max_live_assets: None,
            durability: None,
            checkpoint_every: None,
            geometry: None,
        }
    }
}

/// Per-organization rate limits (token buckets) and sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    /// Sustained events per second one organization may ingest.
    pub(crate) events_per_second: u32,
    /// Events one organization may ingest in a burst (the largest accepted batch).
    pub(crate) event_burst: u32,
    /// Sustained other requests (queries, subscriptions) per second per organization.
    pub(crate) requests_per_second: u32,
    /// Burst of other requests.
    pub(crate) request_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { events_per_second: 1_000_000, event_burst: 200_000, requests_per_second: 1_000, request_burst: 2_000 }
    }
}

/// An organization and its API token (stored as a SHA-256 hash: `citytwin token` makes both).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Organization {
    /// The organization's name (the `organization` attribute of its events).
    pub(crate) name: String,
    /// Hex SHA-256 of its token(s): one string or a list (to rotate tokens).
    #[serde(deserialize_with = "one_or_many")]
    pub(crate) token_sha256: Vec<String>,
    /// Sees and administers every organization's data (operators).
    #[serde(default)]
    pub(crate) admin: bool,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

impl ServeConfig {
    /// Reads and checks a configuration file.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: ServeConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        // Relative paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        for rule in &mut config.twin.rules {
            if rule.is_relative() {
                *rule = base.join(&*rule);
            }
        }
        if let Some(tls) = &mut config.grpc.tls {
            tls.relative_to(base);
        }
        if let Some(geometry) = &mut config.twin.geometry
            && geometry.is_relative()
        {
            *geometry = base.join(&*geometry);
        }
        config.check().with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    /// Every problem a parsed file can still have.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, org) in self.organizations.iter().enumerate() {
            if org.name.is_empty() {
                problems.push(format!("organizations[{i}].name: must not be empty"));
            }
            if !names.insert(&org.name) {
                problems.push(format!("organizations[{i}].name: {:?} appears twice", org.name));
            }
            for hash in &org.token_sha256 {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    problems.push(format!(
                        "organizations[{i}].token_sha256: {hash:?} is not a hex SHA-256 (64 hex digits; `citytwin token` prints one)"
                    ));
                }
            }
        }
        if h3o::Resolution::try_from(self.twin.resolution).is_err() {
            problems.push(format!("twin.resolution: {} is not an H3 resolution (0..=15)", self.twin.resolution));
        }
        if let Err(error) = self.twin.durability() {
            problems.push(error);
        }
        if let Err(error) = self.twin.checkpoint_every() {
            problems.push(error);
        }
        for (name, value) in [
            ("limits.events_per_second", self.limits.events_per_second),
            ("limits.event_burst", self.limits.event_burst),
            ("limits.requests_per_second", self.limits.requests_per_second),
            ("limits.request_burst", self.limits.request_burst),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        if let Some(tls) = &self.grpc.tls {
            for (what, path) in
                [("cert", Some(&tls.cert)), ("key", Some(&tls.key)), ("client_ca", tls.client_ca.as_ref())]
            {
                if let Some(path) = path.filter(|p| !p.is_file()) {
                    problems.push(format!("grpc.tls.{what}: {} is not a file", path.display()));
                }
            }
        }
        if let Some(path) = self.twin.geometry.as_ref().filter(|p| !p.is_file()) {
            problems.push(format!("twin.geometry: {} is not a file", path.display()));
        }
        if let Some(mqtt) = &self.mqtt {
            problems.extend(mqtt.problems());
        }
        if let Some(amqp) = &self.amqp {
            problems.extend(amqp.problems());
        }
        if problems.is_empty() { Ok(()) } else { anyhow::bail!("{}", problems.join("\n")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid() {
        let config =
            ServeConfig::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/citytwin.example.toml"))).unwrap();
        assert!(config.organizations.len() >= 2);
        assert!(config.twin.rules.iter().all(|rule| rule.exists()), "{:?}", config.twin.rules);
    }

    #[test]
    fn the_example_gateways_are_valid_once_uncommented() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/citytwin.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let (head, gateways) = text.split_once("## Gateways").unwrap();
        let uncommented: String = gateways
            .lines()
            .filter_map(|line| line.strip_prefix("# ").or_else(|| line.strip_prefix('#').filter(|l| l.is_empty())))
            .map(|line| format!("{line}\n"))
            .collect();
        let config: ServeConfig = toml::from_str(&format!("{head}\n{uncommented}")).unwrap();
        config.check().unwrap();
        assert_eq!(config.mqtt.unwrap().subscriptions.len(), 2);
        let amqp = config.amqp.unwrap();
        assert_eq!((amqp.queues.len(), amqp.queues[0].mapping.asset_level), (1, Some(1)));
    }

    #[test]
    fn the_checkpoint_interval_is_a_duration_or_off() {
        let parse = |value: &str| {
            let config: ServeConfig = toml::from_str(&format!("[twin]\ncheckpoint_every = \"{value}\"\n")).unwrap();
            config.twin.checkpoint_every()
        };
        assert_eq!(parse("30s"), Ok(Some(Some(std::time::Duration::from_secs(30)))));
        assert_eq!(parse("off"), Ok(Some(None)));
        let unset: ServeConfig = toml::from_str("[twin]\n").unwrap();
        assert_eq!(unset.twin.checkpoint_every(), Ok(None));
    }

    #[test]
    fn every_problem_is_reported() {
        let config: ServeConfig = toml::from_str(
            "[twin]\nresolution = 16\ndurability = \"sometimes\"\ncheckpoint_every = \"often\"\n[limits]\nevent_burst = 0\n[[organizations]]\nname = \"a\"\ntoken_sha256 = \"xyz\"\n[[organizations]]\nname = \"a\"\ntoken_sha256 = []\n",
        )
        .unwrap();
        let message = config.check().unwrap_err().to_string();
        for expected in [
            "twin.resolution",
            "twin.durability: unknown durability \"sometimes\"",
            "twin.checkpoint_every: expected a duration",
            "limits.event_burst",
            "organizations[0].token_sha256",
            "appears twice",
        ] {
            assert!(message.contains(expected), "{expected} missing from:\n{message}");
        }
    }

    #[test]
    fn tls_files_are_relative_to_the_config_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("citytwin.toml");
        let tls = "[grpc.tls]\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\nclient_ca = \"tls/ca.pem\"\n";
        std::fs::write(&path, tls).unwrap();
        let message = format!("{:#}", ServeConfig::load(&path).unwrap_err());
        for what in ["cert", "key", "client_ca"] {
            assert!(message.contains(&format!("grpc.tls.{what}: {}", dir.path().join("tls").display())), "{message}");
        }

        std::fs::create_dir(dir.path().join("tls")).unwrap();
        for file in ["server.pem", "server.key", "ca.pem"] {
            std::fs::write(dir.path().join("tls").join(file), "-").unwrap();
        }
        let config = ServeConfig::load(&path).unwrap();
        let tls = config.grpc.tls.unwrap();
        assert_eq!(tls.client_ca.unwrap(), dir.path().join("tls/ca.pem"));
        assert_eq!(tls.cert, dir.path().join("tls/server.pem"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = toml::from_str::<ServeConfig>("[grpc]\nlisten = \"127.0.0.1:1\"\nport = 3\n").unwrap_err();
        assert!(error.to_string().contains("unknown field `port`"), "{error}");
    }
}
