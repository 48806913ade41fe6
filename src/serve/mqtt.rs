//! The MQTT gateway (`rumqttc`, MQTT 5): subscribes to configured topic filters on a broker,
//! maps each message to events, and acknowledges a QoS 1 message only once its events are
//! durably appended (or durably dead-lettered).
//!
//! Formats per subscription (see [`super::mapping`]):
//! - `cloudevents`: MQTT 5 binary mode (attributes as user properties, data as payload), or
//!   structured JSON (`application/cloudevents+json`, or any payload without user
//!   properties);
//! - `raw`: sensor JSON through a declared transform, the asset id taken from a topic level.
//!
//! Each subscription names the organization its messages belong to.

use std::sync::Arc;
use std::time::Duration;

use citytwin_core::codec::{json, mqtt as mqtt_codec};
use rumqttc::v5::mqttbytes::v5::{Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::{QoS, matches};
use rumqttc::v5::{AsyncClient, Event as MqttEvent, Incoming, MqttOptions};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::gateway::{Gateway, Input};
use super::mapping::{Mapping, Message, by_organization, ingest_retrying};

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
    /// Organization, format, asset level (a topic level) and transform.
    #[serde(flatten)]
    pub(crate) mapping: Mapping,
}

impl MqttConfig {
    /// Every problem a parsed section can still have.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.subscriptions.is_empty() {
            problems.push("mqtt.subscriptions: at least one is needed".to_owned());
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            problems.extend(s.mapping.problems(&format!("mqtt.subscriptions[{i}]")));
        }
        problems
    }
}

/// One MQTT message → its inputs.
pub(crate) fn decode(subscription: &Subscription, publish: &Publish) -> Vec<Input> {
    let topic = String::from_utf8_lossy(&publish.topic);
    let message = Message {
        what: "MQTT message",
        scheme: "mqtt",
        address: &topic,
        levels: &topic,
        separator: '/',
        payload: &publish.payload,
    };
    message.inputs(&subscription.mapping, || {
        let properties = publish.properties.clone().unwrap_or_default();
        let structured = properties.user_properties.is_empty()
            || properties.content_type.as_deref().is_some_and(|c| c.starts_with("application/cloudevents+json"));
        if structured {
            json::decode(&publish.payload)
        } else {
            mqtt_codec::decode_v5(&mqtt_codec::Mqtt5Message {
                content_type: properties.content_type,
                user_properties: properties.user_properties,
                payload: publish.payload.to_vec(),
            })
        }
    })
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
    // MQTT 5 receive maximum: how many unacknowledged QoS 1 messages the broker may send
    // ahead. Messages are acknowledged per batch, so the window must hold a batch (the
    // broker's default for a client that says nothing is small, and batches would be too).
    options.set_receive_maximum(Some(u16::try_from(config.max_batch.max(1)).unwrap_or(u16::MAX)));
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options.set_credentials(user.clone(), password.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    // Unbounded on purpose, and still bounded: the broker sends at most `receive_maximum`
    // (one batch) unacknowledged messages, and none is acknowledged before it is ingested. A
    // bounded channel here deadlocked: the connection task waited for room while the worker
    // waited for the connection task to take its acknowledgements.
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    let filters: Vec<String> = config.subscriptions.iter().map(|s| s.filter.clone()).collect();
    let subscriber = client.clone();
    // The connection: (re)subscribes on every ConnAck; hands publishes to the worker; never
    // waits on it, so acknowledgements always go out.
    // `start` returns once the broker confirmed every subscription of the first connection:
    // messages published after `serve` reports ready reach the twin.
    let (ready, mut confirmed) = tokio::sync::watch::channel(Ok::<usize, String>(0));
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
                Ok(MqttEvent::Incoming(Incoming::SubAck(ack))) => {
                    let refused: Vec<String> = ack
                        .return_codes
                        .iter()
                        .filter(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                        .map(|code| format!("{code:?}"))
                        .collect();
                    ready.send_modify(|state| {
                        *state = match (&*state, refused.is_empty()) {
                            (Ok(n), true) => Ok(n + 1),
                            (Ok(_), false) => Err(format!("the broker refused a subscription: {}", refused.join(", "))),
                            (Err(e), _) => Err(e.clone()),
                        };
                    });
                }
                Ok(MqttEvent::Incoming(Incoming::Publish(publish))) => {
                    if tx.send(publish).is_err() {
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
    let wanted = config.subscriptions.len();
    let subscribed = tokio::time::timeout(
        Duration::from_secs(30),
        confirmed.wait_for(|state| state.as_ref().map_or(true, |n| *n >= wanted)),
    )
    .await;
    match subscribed {
        Ok(Ok(state)) => {
            if let Err(reason) = &*state {
                anyhow::bail!("MQTT broker {}: {reason}", config.broker);
            }
        }
        Ok(Err(_)) => anyhow::bail!("MQTT broker {}: the connection task ended", config.broker),
        Err(_) => anyhow::bail!("MQTT broker {}: no subscription confirmed within 30 s", config.broker),
    }
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
    let matched = batch.iter().filter_map(|publish| {
        let topic = String::from_utf8_lossy(&publish.topic);
        let subscription = subscriptions.iter().find(|s| matches(&topic, &s.filter));
        if subscription.is_none() {
            tracing::warn!(%topic, "MQTT message on a topic no subscription matches; acknowledged and ignored");
        }
        Some((subscription?, publish))
    });
    for (org, messages) in by_organization(matched, |s: &Subscription| &s.mapping) {
        // Decoding is pure: a retry decodes again rather than keeping copies.
        let inputs = || messages.iter().flat_map(|(subscription, publish)| decode(subscription, publish)).collect();
        ingest_retrying(gateway, org, "mqtt", inputs).await;
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
}
