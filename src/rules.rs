//! `citytwin rules ...`: check CEP rule files and run them over events.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use citytwin_core::cep::{Engine, EngineConfig, Output, Rule, parse_rules};
use citytwin_core::codec::json;
use citytwin_core::duration::{format_duration, parse_duration};
use citytwin_core::event::Timestamp;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum RulesCommand {
    /// Validate rule files and report every error with its file and path.
    #[command(after_help = "Example:\n  citytwin rules check scenarios/rules/*.toml")]
    Check {
        /// Rule files (TOML, see docs/rules.md).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rules over events and print window results, alerts and late events.
    ///
    /// Events are read as for `citytwin events check` (CloudEvents JSON, batch, JSON lines or
    /// envelopes), in file order; at the end the watermark is advanced past the last event so
    /// every window closes and every negation is decided.
    #[command(after_help = "Example:\n  citytwin rules run --rules scenarios/rules/congestion.toml events.jsonl")]
    Run {
        /// Rule files.
        #[arg(long = "rules", required = true)]
        rules: Vec<PathBuf>,
        /// The events file, or `-` for standard input.
        events: PathBuf,
        /// How far the watermark trails the newest event time.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        max_out_of_orderness: std::time::Duration,
        /// Print alerts as `alert.triggered` CloudEvents (JSON lines) instead of text.
        #[arg(long)]
        alerts_as_events: bool,
    },
}

pub(crate) fn run(command: RulesCommand) -> anyhow::Result<ExitCode> {
    match command {
        RulesCommand::Check { files } => {
            let mut failed = false;
            for file in &files {
                match load(file) {
                    Ok(rules) => {
                        for rule in rules {
                            println!("{}: {} ok", file.display(), rule.id);
                        }
                    }
                    Err(errors) => {
                        failed = true;
                        eprintln!("{errors}");
                    }
                }
            }
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        RulesCommand::Run { rules, events, max_out_of_orderness, alerts_as_events } => {
            let mut all = Vec::new();
            for file in &rules {
                all.extend(load(file).map_err(anyhow::Error::msg)?);
            }
            let config = EngineConfig { max_out_of_orderness, ..EngineConfig::default() };
            tracing::info!(rules = all.len(), max_out_of_orderness = %format_duration(max_out_of_orderness), "running rules");
            let mut engine = Engine::new(all, config);
            let mut outputs = Vec::new();
            let mut newest = None::<Timestamp>;
            let (_, invalid) = crate::events::for_each_event(&events, |event| {
                newest = newest.max(event.time);
                engine.process(event, &mut outputs);
                print_outputs(&mut outputs, alerts_as_events);
                Ok(())
            })?;
            if let Some(newest) = newest {
                engine.advance_watermark(
                    newest.saturating_add(std::time::Duration::from_secs(365 * 86_400)),
                    &mut outputs,
                );
                print_outputs(&mut outputs, alerts_as_events);
            }
            eprintln!("{} late events, {invalid} invalid events", engine.late_count());
            Ok(if invalid == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// Rules of one file, or every error prefixed with the file name.
fn load(file: &PathBuf) -> Result<Vec<Rule>, String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading {}", file.display()))
        .map_err(|e| format!("{e:#}"))?;
    parse_rules(&text).map_err(|errors| {
        errors.0.iter().map(|e| format!("{}: {}: {}", file.display(), e.path, e.message)).collect::<Vec<_>>().join("\n")
    })
}

fn print_outputs(outputs: &mut Vec<Output>, alerts_as_events: bool) {
    for output in outputs.drain(..) {
        match output {
            Output::Window(w) => {
                let values: Vec<String> = w.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "window {} {} [{}, {}) {:?} count={} {}",
                    w.rule_id,
                    w.key,
                    w.start,
                    w.end,
                    w.emission,
                    w.count,
                    values.join(" ")
                );
            }
            Output::Alert(a) if alerts_as_events => {
                println!("{}", String::from_utf8_lossy(&json::encode(&a.to_event())))
            }
            Output::Alert(a) => {
                let values: Vec<String> = a.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "ALERT {} {} {} at {} {} causes={} actions={}",
                    a.severity,
                    a.rule_id,
                    a.key,
                    a.time,
                    values.join(" "),
                    a.causes.join(","),
                    a.actions.join(",")
                );
            }
            Output::Late(l) => println!("late {} {} time={} watermark={}", l.rule_id, l.event_id, l.time, l.watermark),
            Output::Untimed { event_id } => println!("untimed {event_id} (no time attribute)"),
        }
    }
}
