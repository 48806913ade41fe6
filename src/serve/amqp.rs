//! The AMQP 0-9-1 gateway (`lapin`, RabbitMQ): consumes configured queues with manual
//! acknowledgements and acknowledges a message only once its events are durably appended (or
//! durably dead-lettered).
//!
//! Formats per queue (see [`super::mapping`]):
//! - `cloudevents`: the CloudEvents AMQP binding, binary mode (`cloudEvents:*` headers,
//!   typed; `content-type` is `datacontenttype`) or structured JSON
//!   (`application/cloudevents+json`, or any message without CloudEvents headers);
//! - `raw`: sensor JSON through a declared transform, the asset id taken from a word of the
//!   routing key (split on `.`, as topic exchanges do).
//!
//! One connection; per queue, one channel with a prefetch window and one consumer (delivery
//! tags count per channel, and one consumer's deliveries arrive in tag order). Deliveries are
//! taken as they arrive and ingested in batches; a batch is acknowledged with one
//! `basic.ack(multiple)` per queue, of that queue's highest tag in the batch (every earlier
//! delivery of that channel was in this batch or an earlier one). When the connection drops, what was not acknowledged is
//! redelivered by the broker, and the gateway reconnects with a growing delay.

use std::sync::Arc;
use std::time::Duration;

use citytwin_core::codec::amqp::{self as amqp_codec, AmqpMessage};
use citytwin_core::codec::binary::AttributeValue;
use citytwin_core::event::Timestamp;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde::Deserialize;

use super::gateway::{Gateway, Input};
use super::mapping::{Mapping, Message, by_organization, ingest_retrying};

/// `[amqp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AmqpConfig {
    /// The broker: `amqp://user:password@host:port/vhost` (`%2f` is the default vhost `/`).
    pub(crate) uri: String,
    /// Unacknowledged messages the broker may send ahead, per queue (also the largest batch).
    #[serde(default = "default_prefetch")]
    pub(crate) prefetch: u16,
    pub(crate) queues: Vec<QueueConfig>,
}

fn default_prefetch() -> u16 {
    1024
}

/// One queue and how to read its messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueConfig {
    /// The queue's name.
    pub(crate) queue: String,
    /// Declare the queue (durable) and its bindings at startup; otherwise it must exist.
    #[serde(default = "yes")]
    pub(crate) declare: bool,
    /// Exchanges and routing keys to bind the queue to (with `declare`).
    #[serde(default)]
    pub(crate) bindings: Vec<Binding>,
    /// Organization, format, asset level (a word of the routing key) and transform.
    #[serde(flatten)]
    pub(crate) mapping: Mapping,
}

fn yes() -> bool {
    true
}

/// A queue binding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Binding {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
}

impl AmqpConfig {
    /// Every problem a parsed section can still have.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.uri.starts_with("amqp://") && !self.uri.starts_with("amqps://") {
            problems.push(format!("amqp.uri: {:?} must start with amqp:// (or amqps://)", self.uri));
        }
        if self.prefetch == 0 {
            problems.push("amqp.prefetch: must be at least 1".to_owned());
        }
        if self.queues.is_empty() {
            problems.push("amqp.queues: at least one is needed".to_owned());
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.queue.is_empty() {
                problems.push(format!("amqp.queues[{i}].queue: must not be empty"));
            }
            if !q.declare && !q.bindings.is_empty() {
                problems.push(format!("amqp.queues[{i}].bindings: only made with declare = true"));
            }
            problems.extend(q.mapping.problems(&format!("amqp.queues[{i}]")));
        }
        problems
    }
}

/// An AMQP header value as a CloudEvents attribute value (the binding's type mapping), or
/// `None` for types no attribute can have.
fn attribute_value(value: &AMQPValue) -> Option<AttributeValue> {
    Some(match value {
        AMQPValue::LongString(text) => AttributeValue::Text(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => AttributeValue::Text(text.as_str().to_owned()),
        AMQPValue::Boolean(flag) => AttributeValue::Bool(*flag),
        AMQPValue::ShortShortInt(n) => AttributeValue::Integer(i32::from(*n)),
        AMQPValue::ShortShortUInt(n) => AttributeValue::Integer(i32::from(*n)),
        AMQPValue::ShortInt(n) => AttributeValue::Integer(i32::from(*n)),
        AMQPValue::ShortUInt(n) => AttributeValue::Integer(i32::from(*n)),
        AMQPValue::LongInt(n) => AttributeValue::Integer(*n),
        AMQPValue::LongUInt(n) => AttributeValue::Integer(i32::try_from(*n).ok()?),
        AMQPValue::LongLongInt(n) => AttributeValue::Integer(i32::try_from(*n).ok()?),
        // AMQP timestamps are seconds since the epoch.
        AMQPValue::Timestamp(secs) => AttributeValue::Time(Timestamp::from_secs(i64::try_from(*secs).ok()?)),
        _ => return None,
    })
}

/// A CloudEvents attribute value as an AMQP header value.
pub(crate) fn header_value(value: &AttributeValue) -> AMQPValue {
    match value {
        AttributeValue::Text(text) => AMQPValue::LongString(text.as_str().into()),
        AttributeValue::Bool(flag) => AMQPValue::Boolean(*flag),
        AttributeValue::Integer(n) => AMQPValue::LongInt(*n),
        // Sub-second precision does not fit an AMQP timestamp: text keeps it.
        AttributeValue::Time(time) => AMQPValue::LongString(time.to_rfc3339().into()),
    }
}

/// An event as an AMQP binary-mode message: (content type, headers, body).
pub(crate) fn encode(event: &citytwin_core::event::Event) -> (Option<String>, FieldTable, Vec<u8>) {
    let message = amqp_codec::encode(event);
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(name.as_str().into(), header_value(value));
    }
    (message.content_type, headers, message.body)
}

/// One delivery → its inputs.
fn decode(queue: &QueueConfig, delivery: &Delivery) -> Vec<Input> {
    let routing_key = delivery.routing_key.as_str();
    let address = format!("{}/{routing_key}", queue.queue);
    let message = Message {
        what: "AMQP message",
        scheme: "amqp",
        address: &address,
        levels: routing_key,
        separator: '.',
        payload: &delivery.data,
    };
    message.inputs(&queue.mapping, || {
        let mut headers = Vec::new();
        let mut untyped = Vec::new();
        if let Some(table) = delivery.properties.headers() {
            for (name, value) in table {
                let name = name.as_str();
                if amqp_codec::attribute_name(name).is_none() {
                    continue;
                }
                match attribute_value(value) {
                    Some(value) => headers.push((name.to_owned(), value)),
                    None => untyped.push(name.to_owned()),
                }
            }
        }
        if !untyped.is_empty() {
            return Err(citytwin_core::Error::Malformed {
                format: "AMQP message",
                reason: format!("headers {} have an AMQP type no CloudEvents attribute can have", untyped.join(", ")),
            });
        }
        let content_type = delivery.properties.content_type().as_ref().map(|c| c.as_str().to_owned());
        amqp_codec::decode_any(&AmqpMessage { content_type, headers, body: delivery.data.clone() })
    })
}

/// Starts the gateway. Setting `stop` ends it cleanly: the batch in hand is ingested and
/// acknowledged, then the connection closes (the broker redelivers the rest to the next run).
pub(crate) async fn start(
    config: AmqpConfig,
    gateway: Arc<Gateway>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // The first connection is made before `serve` reports ready, so a wrong URI or queue is
    // a startup error, not a log line.
    let first = connect(&config).await?;
    let config = Arc::new(config);
    Ok(tokio::spawn(async move {
        let mut session = Some(first);
        let mut attempt = 0u32;
        loop {
            let (connection, consumers) = match session.take() {
                Some(session) => session,
                None => match connect(&config).await {
                    Ok(session) => {
                        attempt = 0;
                        session
                    }
                    Err(error) => {
                        attempt += 1;
                        let delay = Duration::from_millis(250 << attempt.min(5));
                        tracing::warn!(%error, ?delay, "AMQP connection failed; retrying");
                        tokio::select! {
                            _ = stop.wait_for(|stop| *stop) => return,
                            () = tokio::time::sleep(delay) => continue,
                        }
                    }
                },
            };
            tracing::info!(queues = config.queues.len(), "AMQP gateway consuming");
            let channels: Vec<lapin::Channel> = consumers.iter().map(|(_, channel, _)| channel.clone()).collect();
            let stopped = consume(&config, &gateway, consumers, &mut stop).await;
            // A channel's close is answered by the broker only after it processed what came
            // before it on the channel, the last acknowledgement included; closing the
            // connection alone may overtake frames still queued in the client.
            for channel in channels {
                let _ = channel.close(200, "citytwin gateway stopping".into()).await;
            }
            let _ = connection.close(200, "citytwin gateway stopping".into()).await;
            if stopped {
                return;
            }
        }
    }))
}

/// The connection and, per queue (by index), its channel and consumer.
type Session = (Connection, Vec<(usize, lapin::Channel, lapin::Consumer)>);

async fn connect(config: &AmqpConfig) -> anyhow::Result<Session> {
    let connection = Connection::connect(&config.uri, ConnectionProperties::default())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to AMQP broker {}: {e}", redact(&config.uri)))?;
    let mut consumers = Vec::new();
    for (i, queue) in config.queues.iter().enumerate() {
        let channel = connection.create_channel().await?;
        channel.basic_qos(config.prefetch, BasicQosOptions::default()).await?;
        if queue.declare {
            channel
                .queue_declare(queue.queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default())
                .await
                .map_err(|e| anyhow::anyhow!("declaring AMQP queue {:?}: {e}", queue.queue))?;
            for binding in &queue.bindings {
                channel
                    .queue_bind(
                        queue.queue.as_str().into(),
                        binding.exchange.as_str().into(),
                        binding.routing_key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("binding AMQP queue {:?} to {:?}: {e}", queue.queue, binding.exchange)
                    })?;
            }
        }
        let consumer = channel
            .basic_consume(
                queue.queue.as_str().into(),
                format!("citytwin-{i}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("consuming AMQP queue {:?}: {e}", queue.queue))?;
        consumers.push((i, channel, consumer));
    }
    Ok((connection, consumers))
}

/// The URI without its password, for messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &uri[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

/// Consumes until the connection fails (returns false: reconnect) or `stop` (returns true).
async fn consume(
    config: &AmqpConfig,
    gateway: &Gateway,
    consumers: Vec<(usize, lapin::Channel, lapin::Consumer)>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let channels: Vec<lapin::Channel> = consumers.iter().map(|(_, channel, _)| channel.clone()).collect();
    let mut deliveries = futures_util::stream::select_all(
        consumers.into_iter().map(|(i, _, consumer)| consumer.map(move |delivery| (i, delivery))),
    );
    let max_batch = usize::from(config.prefetch);
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return true,
            next = deliveries.next() => next,
        };
        let mut batch = Vec::new();
        let mut failed = false;
        let mut next = first;
        loop {
            match next {
                Some((i, Ok(delivery))) => batch.push((i, delivery)),
                Some((_, Err(error))) => {
                    tracing::warn!(%error, "AMQP consumer failed; reconnecting");
                    failed = true;
                    break;
                }
                None => {
                    tracing::warn!("AMQP consumers cancelled; reconnecting");
                    failed = true;
                    break;
                }
            }
            if batch.len() >= max_batch {
                break;
            }
            // Whatever has already arrived joins the batch; nothing waits for more.
            match deliveries.next().now_or_never() {
                Some(ready) => next = ready,
                None => break,
            }
        }
        // Deliveries in hand before a failure cannot be acknowledged any more (the broker
        // redelivers them on the next connection): ingesting them now would only duplicate.
        if failed {
            return false;
        }
        // Per queue, the highest tag in the batch.
        let mut last_tags: Vec<Option<u64>> = vec![None; channels.len()];
        for (i, delivery) in &batch {
            last_tags[*i] = last_tags[*i].max(Some(delivery.delivery_tag));
        }
        let with_queues = batch.iter().map(|(i, delivery)| (&config.queues[*i], delivery));
        for (org, messages) in by_organization(with_queues, |q: &QueueConfig| &q.mapping) {
            let inputs = || messages.iter().flat_map(|(queue, delivery)| decode(queue, delivery)).collect();
            ingest_retrying(gateway, org, "amqp", inputs).await;
        }
        for (channel, tag) in channels.iter().zip(last_tags) {
            let Some(tag) = tag else { continue };
            if let Err(error) = channel.basic_ack(tag, BasicAckOptions { multiple: true }).await {
                tracing::warn!(%error, "AMQP ack failed; the broker will redeliver");
                return false;
            }
            tracing::debug!(messages = batch.len(), tag, "AMQP batch ingested and acknowledged");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_types_map_to_attribute_types() {
        assert_eq!(attribute_value(&AMQPValue::LongString("x".into())), Some(AttributeValue::Text("x".into())));
        assert_eq!(attribute_value(&AMQPValue::ShortInt(-3)), Some(AttributeValue::Integer(-3)));
        assert_eq!(attribute_value(&AMQPValue::LongLongInt(1 << 40)), None);
        assert_eq!(
            attribute_value(&AMQPValue::Timestamp(1_767_225_600)),
            Some(AttributeValue::Time(Timestamp::from_secs(1_767_225_600)))
        );
        assert_eq!(attribute_value(&AMQPValue::Double(1.5)), None);
        for value in [AttributeValue::Text("t".into()), AttributeValue::Bool(true), AttributeValue::Integer(7)] {
            assert_eq!(attribute_value(&header_value(&value)), Some(value));
        }
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }

    #[test]
    fn every_problem_is_reported() {
        let config: AmqpConfig = toml::from_str(
            "uri = \"http://x\"\nprefetch = 0\n[[queues]]\nqueue = \"\"\norganization = \"a\"\ndeclare = false\nbindings = [{ exchange = \"e\", routing_key = \"k\" }]\nformat = \"raw\"\n",
        )
        .unwrap();
        let problems = config.problems().join("\n");
        for expected in [
            "amqp.uri",
            "amqp.prefetch",
            "amqp.queues[0].queue",
            "amqp.queues[0].bindings",
            "amqp.queues[0].asset_level",
            "amqp.queues[0].transform",
        ] {
            assert!(problems.contains(expected), "{expected} missing from:\n{problems}");
        }
    }
}
