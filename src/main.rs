//! The `citytwin` command: thin glue that parses arguments, installs tracing and calls the
//! library crates. Logic lives in the libraries.

mod allocator;
mod bench;
mod dlq;
mod events;
mod loadtest;
mod replay;
mod rules;
mod run;
mod serve;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// citytwin: an event-driven, actor-model digital twin for smart cities.
///
/// Every asset is an event-sourced actor, every H3 cell runs complex event processing, and
/// everything speaks CloudEvents 1.0.
#[derive(Debug, Parser)]
#[command(name = "citytwin", version, propagate_version = true, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  Simulate a district for a day against an embedded twin, with a report and plots:
    citytwin run scenarios/demo.toml
  Check a scenario file (every problem, with file, line and key):
    citytwin validate scenarios/demo.toml
  Check every event in a file (CloudEvents JSON, a JSON batch, JSON lines, or envelopes):
    citytwin events check scenarios/events/seed-examples.jsonl
  Convert events to another encoding:
    citytwin events convert --to envelope scenarios/events/seed-examples.jsonl
  Read from standard input:
    cat events.json | citytwin events check -
  Validate CEP rules, then run them over events:
    citytwin rules check scenarios/rules/*.toml
    citytwin rules run --rules scenarios/rules/congestion.toml events.jsonl

Logs go to standard error; set RUST_LOG=debug for more.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, convert and inspect events.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Check CEP rule files and run them over events.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Inspect and reprocess the dead-letter queue of a local twin.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Run a scenario file against an embedded twin and write a report (JSON + HTML plots).
    #[command(
        after_help = "Examples:\n  citytwin run scenarios/demo.toml\n  citytwin run scenarios/demo.toml --report-dir /tmp/demo --threads 1\n  citytwin run scenarios/demo.toml --realtime 600   # ten simulated minutes per second\n  citytwin run scenarios/helsinki-centre.toml --realtime 120 --serve   # then, in another terminal: citytwin view\n\nThe same scenario and seed give the same event stream (its digest is printed) and the same\nreport.json, whatever --threads is."
    )]
    Run(run::RunArgs),
    /// Compare two scenarios (run both) or two report directories: KPI differences.
    #[command(
        after_help = "Examples:\n  citytwin compare scenarios/downtown-air-quality.toml scenarios/downtown-heatwave.toml\n  citytwin compare reports/downtown-air-quality reports/downtown-heatwave\n\nPrints a KPI table (base, variant, change) and writes compare.html with side-by-side plots."
    )]
    Compare(run::CompareArgs),
    /// Replay a filtered slice of a twin's log: to stdout as CloudEvents JSON lines, or into a fresh twin.
    #[command(
        after_help = "Examples:\n  citytwin run scenarios/demo.toml --data-dir /tmp/demo-log\n  citytwin replay /tmp/demo-log --type 'com.smartcities.alert.*' | head\n  citytwin replay /tmp/demo-log --from 2025-01-15T12:00:00Z --to 2025-01-15T13:00:00Z --cell 882a100d67fffff\n  citytwin replay /tmp/demo-log --type com.smartcities.asset.metric_recorded --into /tmp/replayed"
    )]
    Replay(replay::ReplayArgs),
    /// Check a scenario file and the rule files it names; report every problem.
    #[command(after_help = "Example:\n  citytwin validate scenarios/demo.toml")]
    Validate(run::ValidateArgs),
    /// Serve the live twin: gRPC API, HTTP / WebSocket gateway, tokens, rate limits.
    #[command(
        after_help = "Examples:\n  citytwin serve                                   # built-in defaults, prints a development token\n  citytwin serve --config citytwin.example.toml\n  citytwin serve --grpc 127.0.0.1:0 --http 127.0.0.1:0 --data-dir /tmp/twin\n\nThen, with the printed token:\n  curl -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/cloudevents+json' \\\n       --data @event.json http://127.0.0.1:8080/v1/events\n  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/v1/inventory\n\nStartup recovers the twin from its log; Ctrl-C or SIGTERM finishes requests in flight and\nflushes the log."
    )]
    Serve(serve::ServeArgs),
    /// Make an API token and the configuration lines (its SHA-256) that let it in.
    #[command(
        after_help = "Examples:\n  citytwin token --org acme\n  citytwin token --org acme --hash ct_existing_token"
    )]
    Token(serve::TokenArgs),
    /// Drive a running server with a scenario's events; report throughput and latencies.
    #[command(
        after_help = "Examples:\n  citytwin serve --data-dir /tmp/twin            # prints a development token\n  citytwin loadtest scenarios/demo.toml --target grpc://127.0.0.1:50051 --token $TOKEN --events 200000\n  citytwin loadtest scenarios/demo.toml --target grpc://127.0.0.1:50051 --token $TOKEN --rate 20000 --json half-load.json\n  citytwin loadtest scenarios/demo.toml --target http://127.0.0.1:8080 --token $TOKEN\n  citytwin loadtest scenarios/demo.toml --target mqtt://127.0.0.1:1883 --token $TOKEN   # needs an [mqtt] subscription on citytwin/+/events\n  citytwin loadtest scenarios/demo.toml --target amqp://guest:guest@127.0.0.1:5672/%2f --token $TOKEN\n\nIngest→visible latency is measured from the moment a request leaves until its event\nappears on a gRPC Subscribe stream (--watch); the acknowledgement latency (gRPC, HTTP) is\nsend to answer. Run once without --rate for the maximum, then at half of it for latency."
    )]
    Loadtest(loadtest::LoadtestArgs),
    /// Watch a running twin in 3D (starts the citytwin-visualizer binary built beside this one).
    #[command(
        after_help = "Examples:\n  citytwin serve &                     # writes a development token to data/dev-token\n  citytwin view                        # connects to http://127.0.0.1:50051 with it\n  citytwin view --connect http://twin:50051 --token $TOKEN\n  xvfb-run -s '-screen 0 1280x720x24' citytwin view --screenshot city.png --after-frames 20\n\nBuild the visualizer first: cargo build --release -p citytwin-visualizer (see its --help for the keys)."
    )]
    View(view::ViewArgs),
    /// Measure end-to-end ingest throughput of an embedded twin.
    #[command(after_help = "Example:\n  cargo run --release -- bench --assets 10000 --events 200000 --cells")]
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    allocator::tune();
    tracing_subscriber::fmt()
        // ractor opens an INFO span per actor: at a million assets that is a span allocated per
        // actor start and entered on every message, for nothing a log shows by default.
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ractor=warn")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Events(command) => events::run(command),
        Command::Rules(command) => rules::run(command),
        Command::Run(args) => run::run(&args),
        Command::Validate(args) => run::validate(&args),
        Command::Compare(args) => run::compare(&args),
        Command::Replay(args) => replay::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Loadtest(args) => loadtest::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Dlq(command) => dlq::run(command).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve::serve(&args).map(|()| ExitCode::SUCCESS),
        Command::View(args) => view::run(&args),
        Command::Token(args) => {
            serve::token(&args);
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
