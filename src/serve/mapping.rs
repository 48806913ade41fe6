//! What the broker gateways (MQTT, AMQP) share: how a message source maps to events.
//!
//! A source (an MQTT topic filter, an AMQP queue) names the organization its messages
//! belong to and a format:
//! - `cloudevents`: the protocol's CloudEvents binding (binary or structured mode);
//! - `raw`: sensor JSON turned into `metric_recorded` events by a declared [`Transform`]
//!   (field mapping, units, scale and offset), the asset id taken from one level of the
//!   message's address (MQTT topic levels split on `/`, AMQP routing-key words on `.`).
//!
//! The events then go through the same authorization as every other protocol (an event
//! claiming another organization, or about another organization's asset, is refused and
//! dead-lettered).

use citytwin_core::event::{Event, Location, MetricRecorded, Timestamp, Unit};
use serde::Deserialize;
use serde_json::Value;

use std::sync::Arc;
use std::time::Duration;

use super::auth::Principal;
use super::gateway::{Gateway, Input, RequestError};

/// The part of a source's configuration every broker gateway shares (flattened into
/// `[[mqtt.subscriptions]]` and `[[amqp.queues]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Mapping {
    /// The organization its messages belong to.
    pub(crate) organization: String,
    /// `cloudevents` or `raw`.
    #[serde(default)]
    pub(crate) format: Format,
    /// 0-based level of the address holding the asset id (required for `raw`; for
    /// `cloudevents`, the event's asset must match it).
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

impl Mapping {
    /// Every problem of a source's mapping; `path` names it (`mqtt.subscriptions[0]`).
    pub(crate) fn problems(&self, path: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.format == Format::Raw {
            if self.asset_level.is_none() {
                problems.push(format!("{path}.asset_level: required for raw messages"));
            }
            match &self.transform {
                None => problems.push(format!("{path}.transform: required for raw messages")),
                Some(t) if t.metrics.is_empty() => {
                    problems.push(format!("{path}.transform.metrics: at least one is needed"));
                }
                Some(_) => {}
            }
        }
        problems
    }
}

/// One broker message being mapped: what it is (`MQTT message`), where it came from (its
/// topic, or queue and routing key) and its body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    /// The kind of message, for refusals (`MQTT message`, `AMQP message`).
    pub(crate) what: &'static str,
    /// The URI scheme of the events' `source` (`mqtt`, `amqp`).
    pub(crate) scheme: &'static str,
    /// The topic, or `queue/routing.key`.
    pub(crate) address: &'a str,
    /// The words of the address `asset_level` indexes.
    pub(crate) levels: &'a str,
    /// The separator of those words (`/` for MQTT, `.` for AMQP).
    pub(crate) separator: char,
    pub(crate) payload: &'a [u8],
}

impl Message<'_> {
    /// Refuses the message with a reason (dead-lettered with its raw bytes).
    pub(crate) fn bad(&self, id: Option<String>, reason: impl Into<String>) -> Input {
        Input::Bad {
            id,
            error: citytwin_core::Error::Malformed {
                format: self.what,
                reason: format!("{}: {}", self.address, reason.into()),
            },
            raw: self.payload.to_vec(),
            wire_type: None,
        }
    }

    /// The asset id at `level` of the address.
    pub(crate) fn asset(&self, level: Option<usize>) -> Option<&str> {
        level.and_then(|level| self.levels.split(self.separator).nth(level)).filter(|asset| !asset.is_empty())
    }

    /// The message's events under `mapping`; `decode` reads the protocol's CloudEvents
    /// binding.
    pub(crate) fn inputs(
        &self,
        mapping: &Mapping,
        decode: impl FnOnce() -> citytwin_core::Result<Event>,
    ) -> Vec<Input> {
        let asset = self.asset(mapping.asset_level);
        match mapping.format {
            Format::Raw => match (&mapping.transform, asset) {
                (Some(t), Some(asset)) => self.transform(t, asset),
                _ => vec![self.bad(None, "no asset id at the configured address level")],
            },
            Format::Cloudevents => vec![match decode() {
                Ok(event) => match (asset, event.asset_id()) {
                    (Some(expected), Some(found)) if expected != found => self.bad(
                        Some(event.id.to_string()),
                        format!("the address names asset {expected:?} but the event is about {found:?}"),
                    ),
                    _ => Input::Event(event),
                },
                Err(error) => Input::Bad { id: None, error, raw: self.payload.to_vec(), wire_type: None },
            }],
        }
    }

    /// Raw sensor JSON → events, or why not.
    pub(crate) fn transform(&self, transform: &Transform, asset: &str) -> Vec<Input> {
        let value: Value = match serde_json::from_slice(self.payload) {
            Ok(value @ Value::Object(_)) => value,
            Ok(_) => return vec![self.bad(None, "a raw payload must be a JSON object")],
            Err(error) => return vec![self.bad(None, format!("not JSON: {error}"))],
        };
        let Some(time) = field(&value, &transform.time).and_then(time_of) else {
            return vec![self.bad(
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
                out.push(self.bad(None, format!("field {:?} must be a number, not {raw_value}", mapping.field)));
                continue;
            };
            let metric = MetricRecorded {
                asset_id: asset.into(),
                metric_type: mapping.metric.as_str().into(),
                value: number * mapping.scale + mapping.offset,
                unit: Unit::new(mapping.unit.as_str()),
                location,
            };
            // Deterministic: a redelivered message gives the same ids (consumers deduplicate by id).
            let id = format!("{asset}:{}:{}", mapping.metric, time.as_nanos());
            let event = Event::new(id, format!("{}://{}", self.scheme, self.address), metric).with_time(time);
            out.push(match event.validate() {
                Ok(()) => Input::Event(event),
                Err(error) => Input::Bad {
                    id: Some(event.id.to_string()),
                    error: error.into(),
                    raw: self.payload.to_vec(),
                    wire_type: None,
                },
            });
        }
        if out.is_empty() {
            out.push(self.bad(None, "none of the mapped metric fields is present"));
        }
        out
    }
}

/// Items grouped by the organization of the source each arrived by, in order of first
/// appearance.
pub(crate) fn by_organization<'a, S, T>(
    items: impl IntoIterator<Item = (&'a S, T)>,
    mapping: impl Fn(&S) -> &Mapping,
) -> Vec<(&'a str, Vec<(&'a S, T)>)> {
    let mut groups: Vec<(&'a str, Vec<(&'a S, T)>)> = Vec::new();
    for (source, item) in items {
        let org = mapping(source).organization.as_str();
        match groups.iter_mut().find(|(o, _)| *o == org) {
            Some((_, group)) => group.push((source, item)),
            None => groups.push((org, vec![(source, item)])),
        }
    }
    groups
}

/// Ingests one organization's messages (`inputs` decodes them; called again on a retry, so
/// no copies are kept), retrying with the hinted delay while the twin is rate-limited or
/// unavailable: a broker message is acknowledged only after this returns, when its events
/// are durably appended or durably dead-lettered.
pub(crate) async fn ingest_retrying(gateway: &Gateway, org: &str, protocol: &str, inputs: impl Fn() -> Vec<Input>) {
    let who = Principal { org: Arc::from(org), admin: false };
    let origin = format!("{protocol}:{org}");
    let mut attempt = 0u32;
    loop {
        match gateway.ingest(&who, &origin, inputs()).await {
            Ok(outcome) => {
                if !outcome.refusals.is_empty() {
                    tracing::debug!(
                        protocol,
                        refused = outcome.refusals.len(),
                        "broker events refused (dead-lettered)"
                    );
                }
                return;
            }
            Err(RequestError::RateLimited { retry_after, .. }) => tokio::time::sleep(retry_after).await,
            Err(error) => {
                attempt += 1;
                tracing::warn!(protocol, %error, attempt, "broker batch not ingested; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Message<'_> {
        Message {
            what: "MQTT message",
            scheme: "mqtt",
            address: "s/a1/raw",
            levels: "s/a1/raw",
            separator: '/',
            payload,
        }
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
        let inputs = message(br#"{"ts": 1767225600, "pm": {"25": 12.5}, "temp_f": 212}"#).transform(&t, "a1");
        let events: Vec<Event> = inputs
            .into_iter()
            .map(|i| match i {
                Input::Event(e) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].time, Some(Timestamp::from_secs(1_767_225_600)));
        assert_eq!(events[0].source, "mqtt://s/a1/raw");
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
        let missing = message(br#"{"pm": {"25": 1}}"#).transform(&t, "a1");
        assert!(matches!(&missing[..], [Input::Bad { error, .. }] if error.to_string().contains("\"ts\"")));
    }

    #[test]
    fn the_asset_comes_from_the_configured_level_of_either_separator() {
        let amqp = Message {
            what: "AMQP message",
            scheme: "amqp",
            address: "q/city.a7.pm",
            levels: "city.a7.pm",
            separator: '.',
            payload: b"",
        };
        assert_eq!(amqp.asset(Some(1)), Some("a7"));
        assert_eq!(amqp.asset(Some(5)), None);
        assert_eq!(message(b"").asset(Some(1)), Some("a1"));
        assert_eq!(message(b"").asset(None), None);
    }

    #[test]
    fn a_flattened_mapping_still_refuses_unknown_keys() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Source {
            #[allow(dead_code)]
            queue: String,
            #[serde(flatten)]
            mapping: Mapping,
        }
        let ok: Source = toml::from_str("queue = \"q\"\norganization = \"acme\"\nformat = \"raw\"\n").unwrap();
        assert_eq!(ok.mapping.format, Format::Raw);
        assert_eq!(ok.mapping.problems("amqp.queues[0]").len(), 2);
        let error = toml::from_str::<Source>("queue = \"q\"\norganization = \"acme\"\nasset_lvl = 1\n").unwrap_err();
        assert!(error.to_string().contains("unknown field `asset_lvl`"), "{error}");
    }
}
