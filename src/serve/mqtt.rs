//! The MQTT gateway (`rumqttc`, MQTT 5): subscribes to configured topic filters on a broker,
//! maps each message to events, and acknowledges a QoS 1 message only once its events are
//! durably appended (or durably dead-lettered).
//!
//! Formats per subscription:
//! - `cloudevents`: MQTT 5 binary mode (attributes as user properties, data as payload), or
//!   structured JSON (`application/cloudevents+json`, or any payload without user
//!   properties);
//! - `raw`: sensor JSON turned into `metric_recorded` events by a declared [`Transform`]
//!   (field mapping, units, scale and offset), the asset id taken from a topic level.
//!
//! Each subscription names the organization its messages belong to: they go through the
//! same authorization as every other protocol (an event claiming another organization, or
//! about another organization's asset, is refused and dead-lettered).

use std::sync::Arc;
use std::time::Duration;

use citytwin_core::codec::{json, mqtt as mqtt_codec};
use citytwin_core::event::{Event, Location, MetricRecorded, Timestamp, Unit};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::{QoS, matches};
use rumqttc::v5::{AsyncClient, Event as MqttEvent, Incoming, MqttOptions};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::auth::Principal;
use super::gateway::{Gateway, Input, RequestError};

/// `[mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MqttConfig {
    /// `host:port` of the broker.
    pub(crate) broker: String,
    /// Client id (the broker keeps its session: unacknowledged messages come back after a
    /// restart).
    #[serde(default = "default_client_id")]
    pub(crate) client_id: String,
    #[serde(default)]
    pub(crate) username: Option<String>,
    #[serde(default)]
    pub(crate) password: Option<String>,
    /// Most messages ingested in one batch.
    #[serde(default = "default_batch")]
    pub(crate) max_batch: usize,
    pub(crate) subscriptions: Vec<Subscription>,
}

fn default_client_id() -> String {
    "citytwin".into()
}

fn default_batch() -> usize {
    1024
}

/// One topic filter and how to read its messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subscription {
    /// MQTT topic filter (`city/+/events`, `sensors/#`).
    pub(crate) filter: String,
    /// The organization its messages belong to.
    pub(crate) organization: String,
    /// `cloudevents` or `raw`.
    #[serde(default)]
    pub(crate) format: Format,
    /// 0-based topic level holding the asset id (required for `raw`; for `cloudevents`, the
    /// event's asset must match it).
    #[serde(default)]
    pub(crate) asset_level: Option<usize>,
    /// How `raw` payloads become events.
    #[serde(default)]
    pub(crate) transform: Option<Transform>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Format {
    #[default]
    Cloudevents,
    Raw,
}

/// Raw sensor JSON → `metric_recorded` events, one per mapped field present.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Transform {
    /// Field with the reading time: RFC 3339 text, or a number of seconds (milliseconds when
    /// above 10¹¹) since the epoch. Required: the twin works in event time.
    #[serde(default = "default_time_field")]
    pub(crate) time: String,
    /// Fields with latitude and longitude, when the sensor reports its position.
    #[serde(default)]
    pub(crate) lat: Option<String>,
    #[serde(default)]
    pub(crate) lng: Option<String>,
    pub(crate) metrics: Vec<MetricMapping>,
}

fn default_time_field() -> String {
    "time".into()
}

/// One field → one metric: `value * scale + offset`, in `unit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricMapping {
    /// Field name; dots reach into objects (`readings.pm25`).
    pub(crate) field: String,
    /// The metric's name in citytwin (`pm25`).
    pub(crate) metric: String,
    /// Its unit after conversion (`ug/m3`).
    pub(crate) unit: String,
    #[serde(default = "one")]
    pub(crate) scale: f64,
    #[serde(default)]
    pub(crate) offset: f64,
}

fn one() -> f64 {
    1.0
}

impl MqttConfig {
    /// Every problem a parsed section can still have.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.subscriptions.is_empty() {
            problems.push("mqtt.subscriptions: at least one is needed".to_owned());
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            if s.format == Format::Raw {
                if s.asset_level.is_none() {
                    problems.push(format!("mqtt.subscriptions[{i}].asset_level: required for raw messages"));
                }
                match &s.transform {
                    None => problems.push(format!("mqtt.subscriptions[{i}].transform: required for raw messages")),
                    Some(t) if t.metrics.is_empty() => {
                        problems.push(format!("mqtt.subscriptions[{i}].transform.metrics: at least one is needed"));
                    }
                    Some(_) => {}
                }
            }
        }
        problems
    }
}

/// The value at a dotted path.
fn field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn time_of(value: &Value) -> Option<Timestamp> {
    match value {
        Value::String(text) => Timestamp::parse_rfc3339(text).ok(),
        Value::Number(n) => {
            let n = n.as_f64()?;
            let millis = if n.abs() > 1e11 { n } else { n * 1000.0 };
            Some(Timestamp::from_nanos((millis * 1e6) as i64))
        }
        _ => None,
    }
}

fn bad(topic: &str, raw: &[u8], id: Option<String>, reason: impl Into<String>) -> Input {
    Input::Bad {
        id,
        error: citytwin_core::Error::Malformed {
            format: "MQTT message",
            reason: format!("{topic}: {}", reason.into()),
        },
        raw: raw.to_vec(),
    }
}

/// Raw sensor JSON → events, or why not.
pub(crate) fn transform(transform: &Transform, topic: &str, asset: &str, payload: &[u8]) -> Vec<Input> {
    let value: Value = match serde_json::from_slice(payload) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return vec![bad(topic, payload, None, "a raw payload must be a JSON object")],
        Err(error) => return vec![bad(topic, payload, None, format!("not JSON: {error}"))],
    };
    let Some(time) = field(&value, &transform.time).and_then(time_of) else {
        return vec![bad(
            topic,
            payload,
            None,
            format!("field {:?} must hold the reading time (RFC 3339 or epoch seconds)", transform.time),
        )];
    };
    let location = match (&transform.lat, &transform.lng) {
        (Some(lat), Some(lng)) => {
            match (field(&value, lat).and_then(Value::as_f64), field(&value, lng).and_then(Value::as_f64)) {
                (Some(lat), Some(lng)) => Some(Location::new(lat, lng)),
                _ => None,
            }
        }
        _ => None,
    };
    let mut out = Vec::new();
    for mapping in &transform.metrics {
        let Some(raw_value) = field(&value, &mapping.field) else { continue };
        let Some(number) = raw_value.as_f64() else {
            out.push(bad(topic, payload, None, format!("field {:?} must be a number, not {raw_value}", mapping.field)));
            continue;
        };
        let metric = MetricRecorded {
            asset_id: asset.to_owned(),
            metric_type: mapping.metric.clone(),
            value: number * mapping.scale + mapping.offset,
            unit: Unit::new(mapping.unit.as_str()),
            location,
        };
        // Deterministic: a redelivered message gives the same ids (consumers deduplicate by id).
        let id = format!("{asset}:{}:{}", mapping.metric, time.as_nanos());
        let event = Event::new(id, format!("mqtt://{topic}"), metric).with_time(time);
        out.push(match event.validate() {
            Ok(()) => Input::Event(event),
            Err(error) => Input::Bad { id: Some(event.id.clone()), error: error.into(), raw: payload.to_vec() },
        });
    }
    if out.is_empty() {
        out.push(bad(topic, payload, None, "none of the mapped metric fields is present"));
    }
    out
}

/// One MQTT message → its inputs.
pub(crate) fn decode(subscription: &Subscription, publish: &Publish) -> Vec<Input> {
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let asset = subscription.asset_level.and_then(|level| topic.split('/').nth(level)).map(str::to_owned);
    match subscription.format {
        Format::Raw => match (&subscription.transform, asset) {
            (Some(t), Some(asset)) => transform(t, &topic, &asset, &publish.payload),
            _ => vec![bad(&topic, &publish.payload, None, "no asset id at the configured topic level")],
        },
        Format::Cloudevents => {
            let properties = publish.properties.clone().unwrap_or_default();
            let structured = properties.user_properties.is_empty()
                || properties.content_type.as_deref().is_some_and(|c| c.starts_with("application/cloudevents+json"));
            let decoded = if structured {
                json::decode(&publish.payload)
            } else {
                mqtt_codec::decode_v5(&mqtt_codec::Mqtt5Message {
                    content_type: properties.content_type,
                    user_properties: properties.user_properties,
                    payload: publish.payload.to_vec(),
                })
            };
            let input = match decoded {
                Ok(event) => match (&asset, event.asset_id()) {
                    (Some(expected), Some(found)) if expected != found => bad(
                        &topic,
                        &publish.payload,
                        Some(event.id.clone()),
                        format!("the topic names asset {expected:?} but the event is about {found:?}"),
                    ),
                    _ => Input::Event(event),
                },
                Err(error) => Input::Bad { id: None, error, raw: publish.payload.to_vec() },
            };
            vec![input]
        }
    }
}

/// Starts the gateway: one task drives the connection, one ingests in batches and acks.
/// Setting `stop` ends it cleanly: the batch in hand is ingested and acknowledged, then the
/// client disconnects (what was not acknowledged, the broker redelivers to the next run).
pub(crate) async fn start(
    config: MqttConfig,
    gateway: Arc<Gateway>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (host, port) = config
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("mqtt.broker {:?}: expected host:port", config.broker))?;
    let mut options = MqttOptions::new(config.client_id.clone(), host, port);
    options.set_manual_acks(true).set_clean_start(false).set_session_expiry_interval(Some(24 * 3600));
    options.set_keep_alive(Duration::from_secs(30));
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options.set_credentials(user.clone(), password.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let (tx, mut rx) = mpsc::channel::<Publish>(config.max_batch.max(1) * 2);
    let filters: Vec<String> = config.subscriptions.iter().map(|s| s.filter.clone()).collect();
    let subscriber = client.clone();
    // The connection: (re)subscribes on every ConnAck; hands publishes to the worker (a
    // full channel stops reading the socket: backpressure to the broker).
    let connection = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Incoming::ConnAck(_))) => {
                    for filter in &filters {
                        if let Err(error) = subscriber.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                            tracing::error!(%error, filter, "MQTT subscribe failed");
                        }
                    }
                    tracing::info!(filters = ?filters, "MQTT gateway connected");
                }
                Ok(MqttEvent::Incoming(Incoming::Publish(publish))) => {
                    if tx.send(publish).await.is_err() {
                        return;
                    }
                }
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "MQTT connection lost; reconnecting in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let subscriptions = Arc::new(config.subscriptions);
    let max_batch = config.max_batch.max(1);
    let worker = tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                next = rx.recv() => match next {
                    Some(first) => first,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            ingest(&gateway, &subscriptions, &batch).await;
            for publish in &batch {
                if let Err(error) = client.ack(publish).await {
                    tracing::warn!(%error, "MQTT ack failed; the broker will redeliver");
                }
            }
        }
        // Queued behind the acks: they reach the broker first.
        if client.disconnect().await.is_err() {
            connection.abort();
        }
        let _ = connection.await;
    });
    Ok(worker)
}

/// Ingests one batch, grouped by organization, retrying (with the hinted delay) while the
/// twin is rate-limited or unavailable: a message is acknowledged only after this returns.
async fn ingest(gateway: &Gateway, subscriptions: &[Subscription], batch: &[Publish]) {
    // Each message with the subscription it arrived by (the first whose filter matches),
    // grouped by that subscription's organization.
    let mut by_org: Vec<(&str, Vec<(&Subscription, &Publish)>)> = Vec::new();
    for publish in batch {
        let topic = String::from_utf8_lossy(&publish.topic);
        let Some(subscription) = subscriptions.iter().find(|s| matches(&topic, &s.filter)) else {
            tracing::warn!(%topic, "MQTT message on a topic no subscription matches; acknowledged and ignored");
            continue;
        };
        let org = subscription.organization.as_str();
        match by_org.iter_mut().find(|(o, _)| *o == org) {
            Some((_, messages)) => messages.push((subscription, publish)),
            None => by_org.push((org, vec![(subscription, publish)])),
        }
    }
    for (org, messages) in by_org {
        let who = Principal { org: Arc::from(org), admin: false };
        let origin = format!("mqtt:{org}");
        let mut attempt = 0u32;
        loop {
            // Decoding is pure: a retry decodes again rather than keeping copies.
            let inputs = messages.iter().flat_map(|(subscription, publish)| decode(subscription, publish)).collect();
            match gateway.ingest(&who, &origin, inputs).await {
                Ok(outcome) => {
                    if !outcome.refusals.is_empty() {
                        tracing::debug!(refused = outcome.refusals.len(), "MQTT events refused (dead-lettered)");
                    }
                    break;
                }
                Err(RequestError::RateLimited { retry_after, .. }) => tokio::time::sleep(retry_after).await,
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "MQTT batch not ingested; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_like_mqtt() {
        // rumqttc's matcher takes (topic, filter).
        assert!(matches("city/a1/events", "city/+/events"));
        assert!(!matches("city/a1/b/events", "city/+/events"));
        assert!(matches("sensors/x/y", "sensors/#"));
        assert!(!matches("sensors/x/y", "sensors/x"));
    }

    #[test]
    fn raw_json_becomes_metric_events_with_units_converted() {
        let t = Transform {
            time: "ts".into(),
            lat: None,
            lng: None,
            metrics: vec![
                MetricMapping {
                    field: "pm.25".into(),
                    metric: "pm25".into(),
                    unit: "ug/m3".into(),
                    scale: 1.0,
                    offset: 0.0,
                },
                MetricMapping {
                    field: "temp_f".into(),
                    metric: "temperature".into(),
                    unit: "Cel".into(),
                    scale: 5.0 / 9.0,
                    offset: -160.0 / 9.0,
                },
            ],
        };
        let inputs = transform(&t, "s/a1/raw", "a1", br#"{"ts": 1767225600, "pm": {"25": 12.5}, "temp_f": 212}"#);
        let events: Vec<Event> = inputs
            .into_iter()
            .map(|i| match i {
                Input::Event(e) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].time, Some(Timestamp::from_secs(1_767_225_600)));
        match (events[0].payload(), events[1].payload()) {
            (
                Some(citytwin_core::event::Payload::MetricRecorded(a)),
                Some(citytwin_core::event::Payload::MetricRecorded(b)),
            ) => {
                assert_eq!((a.value, a.asset_id.as_str()), (12.5, "a1"));
                assert!((b.value - 100.0).abs() < 1e-9, "{}", b.value);
            }
            other => panic!("{other:?}"),
        }
        let missing = transform(&t, "s/a1/raw", "a1", br#"{"pm": {"25": 1}}"#);
        assert!(matches!(&missing[..], [Input::Bad { error, .. }] if error.to_string().contains("\"ts\"")));
    }
}
