//! `citytwin events ...`: check and convert events from files or standard input.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use citytwin_core::codec::envelope::Envelope;
use citytwin_core::codec::{http, json, mqtt, msgpack};
use citytwin_core::event::Event;
use clap::{Subcommand, ValueEnum};
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Validate every event and report every problem with each, by line.
    ///
    /// Input may be one CloudEvent (JSON), a batch (a JSON array), or JSON lines; each event
    /// may be CloudEvents structured JSON or the custom envelope (recognised by its
    /// `event_id` member). Exits 1 when any event is invalid.
    #[command(after_help = "Example:\n  citytwin events check scenarios/events/seed-examples.jsonl")]
    Check {
        /// The file to read, or `-` for standard input.
        input: PathBuf,
    },
    /// Validate events and write them in another encoding, one per line.
    ///
    /// Invalid events are reported on standard error and skipped (exit code 1).
    #[command(after_help = "Example:\n  citytwin events convert --to http scenarios/events/seed-examples.jsonl")]
    Convert {
        /// The file to read, or `-` for standard input.
        input: PathBuf,
        /// The encoding to write.
        #[arg(long, value_enum, default_value_t = Encoding::Json)]
        to: Encoding,
    },
}

/// Output encodings.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Encoding {
    /// CloudEvents JSON structured mode, one event per line.
    Json,
    /// The custom envelope (`event_id`, `event_type`, `payload`...).
    Envelope,
    /// HTTP binary mode: headers then the body, as JSON.
    Http,
    /// MQTT 5 binary mode: content type, user properties, payload, as JSON.
    Mqtt5,
    /// The MessagePack storage encoding, in hex.
    Msgpack,
}

pub(crate) fn run(command: EventsCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventsCommand::Check { input } => {
            let (valid, invalid) = for_each_event(&input, |_| Ok(()))?;
            println!("{valid} valid, {invalid} invalid");
            Ok(if invalid == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        EventsCommand::Convert { input, to } => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let (_, invalid) = for_each_event(&input, |event| {
                let line = encode(event, to);
                writeln!(out, "{line}").context("writing to standard output")
            })?;
            Ok(if invalid == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn encode(event: &Event, encoding: Encoding) -> String {
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    match encoding {
        Encoding::Json => text(json::encode(event)),
        Encoding::Envelope => text(Envelope::from_event(event).to_json()),
        Encoding::Http => {
            let message = http::encode(event);
            serde_json::json!({"headers": message.headers, "body": text(message.body)}).to_string()
        }
        Encoding::Mqtt5 => {
            let message = mqtt::encode_v5(event);
            serde_json::json!({"content_type": message.content_type, "user_properties": message.user_properties, "payload": text(message.payload)})
                .to_string()
        }
        Encoding::Msgpack => msgpack::encode(event).iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// Reads every event in `input`, calls `each` on the valid ones, and reports the invalid
/// ones on standard error with their location. Returns (valid, invalid) counts.
pub(crate) fn for_each_event(
    input: &PathBuf,
    mut each: impl FnMut(&Event) -> anyhow::Result<()>,
) -> anyhow::Result<(usize, usize)> {
    let text = read_input(input)?;
    let items = split_items(&text).with_context(|| format!("reading {}", input.display()))?;
    let (mut valid, mut invalid) = (0, 0);
    for (location, value) in items {
        match decode_any(value) {
            Ok(event) => {
                valid += 1;
                each(&event)?;
            }
            Err(error) => {
                invalid += 1;
                eprintln!("{}:{location}: {error}", input.display());
            }
        }
    }
    Ok((valid, invalid))
}

fn read_input(input: &PathBuf) -> anyhow::Result<String> {
    if input.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))
    }
}

/// Splits input into JSON values with a location for messages: `line N` for JSON lines,
/// `event N` for the elements of a batch.
fn split_items(text: &str) -> anyhow::Result<Vec<(String, Value)>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let Value::Array(items) = serde_json::from_str(text).context("not a JSON array of events")? else {
            unreachable!("a JSON text starting with [ is an array")
        };
        return Ok(items.into_iter().enumerate().map(|(i, value)| (format!("event {i}"), value)).collect());
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Ok(vec![("event 0".to_owned(), value)]);
    }
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        items.push((format!("line {}", i + 1), value));
    }
    Ok(items)
}

fn decode_any(value: Value) -> citytwin_core::Result<Event> {
    if value.get("event_id").is_some() { Envelope::from_value(value)?.into_event() } else { json::from_value(value) }
}
