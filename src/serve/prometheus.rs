//! Prometheus metrics, served at `GET /metrics` on the HTTP listener (no token: scrapers
//! carry none; the figures are totals, no organization's data).
//!
//! Per-request figures are recorded where they happen through the `metrics` facade
//! (`citytwin_gateway_events_total{protocol,outcome}`, `citytwin_gateway_ingest_seconds`
//! {protocol}, `citytwin_rate_limited_total`); the twin's own totals are read at scrape
//! time from [`Gateway::stats`], so there is one source for each figure.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::gateway::Gateway;

/// Seconds of one ingest request, from decode to durable append (histogram buckets).
const INGEST_SECONDS_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use.
///
/// # Errors
/// When another recorder was installed in this process.
pub(crate) fn handle() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("citytwin_gateway_ingest_seconds".into()), &INGEST_SECONDS_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("citytwin_gateway_events_total", "Inputs the gateways received, by protocol and outcome");
    describe_histogram!(
        "citytwin_gateway_ingest_seconds",
        Unit::Seconds,
        "One ingest request, from decoded inputs to durable append, by protocol"
    );
    describe_counter!("citytwin_events_accepted_total", "Events the twin durably appended");
    describe_counter!("citytwin_events_rejected_total", "Events refused by business rules");
    describe_counter!("citytwin_events_invalid_total", "Inputs refused as invalid");
    describe_counter!("citytwin_events_shed_total", "At-most-once events shed under overload (dead-lettered)");
    describe_counter!("citytwin_unauthorized_total", "Inputs refused for writing another organization's data");
    describe_counter!("citytwin_rate_limited_total", "Requests refused by a rate limit");
    describe_gauge!("citytwin_log_next_position", "The event log's next position (events ever appended)");
    describe_gauge!("citytwin_live_assets", "Live asset actors (the rest are passivated or stopping)");
    describe_gauge!("citytwin_stopping_assets", "Asset actors passivating or restarting, still in memory");
    describe_gauge!("citytwin_waiting_assets", "Assets whose messages wait for room under the live-actor limit");
    describe_counter!(
        "citytwin_asset_waits_total",
        "Times an asset waited for room under the live-actor limit (grows when more assets are active than the limit allows)"
    );
    describe_gauge!("citytwin_registered_assets", "Assets in the read model");
    describe_gauge!("citytwin_open_alerts", "Alerts triggered and not resolved");
}

/// The exposition text, with the twin's totals as of now.
pub(crate) async fn render(handle: &PrometheusHandle, gateway: &Gateway) -> String {
    let stats = gateway.stats().await;
    metrics::counter!("citytwin_events_accepted_total").absolute(stats.accepted);
    metrics::counter!("citytwin_events_rejected_total").absolute(stats.rejected);
    metrics::counter!("citytwin_events_invalid_total").absolute(stats.invalid);
    metrics::counter!("citytwin_events_shed_total").absolute(stats.shed);
    metrics::counter!("citytwin_unauthorized_total").absolute(stats.unauthorized);
    metrics::counter!("citytwin_rate_limited_total").absolute(stats.rate_limited);
    metrics::gauge!("citytwin_log_next_position").set(stats.log_position as f64);
    metrics::gauge!("citytwin_live_assets").set(stats.actors.live as f64);
    metrics::gauge!("citytwin_stopping_assets").set(stats.actors.stopping as f64);
    metrics::gauge!("citytwin_waiting_assets").set(stats.actors.waiting as f64);
    metrics::counter!("citytwin_asset_waits_total").absolute(stats.actors.waited);
    let (assets, alerts) = gateway.models.read(|m| (m.assets.len(), m.open_alerts.len()));
    metrics::gauge!("citytwin_registered_assets").set(assets as f64);
    metrics::gauge!("citytwin_open_alerts").set(alerts as f64);
    handle.render()
}
