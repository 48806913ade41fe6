//! The `citytwin` binary, run as a user would.

use std::process::Command;

fn citytwin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_citytwin"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the citytwin binary runs")
}

#[test]
fn events_check_reports_every_problem_by_line() {
    let output = citytwin(&["events", "check", "scenarios/events/seed-examples.jsonl"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "one sample event is invalid; stderr: {stderr}");
    assert!(stdout.contains("3 valid, 1 invalid"), "{stdout}");
    for problem in [
        "line 4:",
        "specversion must be \"1.0\"",
        "time is not RFC 3339",
        "source is not a URI-reference",
        "data does not match the schema",
    ] {
        assert!(stderr.contains(problem), "stderr should contain {problem:?}: {stderr}");
    }
}

#[test]
fn events_convert_to_envelope_and_back() {
    let output = citytwin(&["events", "convert", "--to", "envelope", "scenarios/events/seed-examples.jsonl"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains("\"event_type\":\"metric.recorded\""), "{}", lines[0]);
    // Converting the envelopes back gives the same CloudEvents as converting the originals.
    let dir = std::env::temp_dir().join(format!("citytwin-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let envelopes = dir.join("envelopes.jsonl");
    std::fs::write(&envelopes, stdout.as_bytes()).unwrap();
    let via_envelope = citytwin(&["events", "convert", "--to", "json", envelopes.to_str().unwrap()]);
    let direct = citytwin(&["events", "convert", "--to", "json", "scenarios/events/seed-examples.jsonl"]);
    assert_eq!(via_envelope.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&via_envelope.stdout), String::from_utf8_lossy(&direct.stdout));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_teaches_with_examples() {
    let output = citytwin(&["--help"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("Examples:") && stdout.contains("citytwin events check"), "{stdout}");
}

#[test]
fn rules_run_finds_congestion_but_not_where_an_incident_was_reported() {
    let output = citytwin(&[
        "rules",
        "run",
        "--rules",
        "scenarios/rules/congestion.toml",
        "scenarios/events/congestion-sample.jsonl",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let alerts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ALERT")).collect();
    assert_eq!(alerts.len(), 1, "one congested cell without incident: {stdout}");
    assert!(alerts[0].contains("sum(vehicle_count)=110") && alerts[0].contains("causes=c1,c2,s1"), "{}", alerts[0]);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("window congestion")).count(), 2, "{stdout}");

    let as_events = citytwin(&[
        "rules",
        "run",
        "--alerts-as-events",
        "--rules",
        "scenarios/rules/congestion.toml",
        "scenarios/events/congestion-sample.jsonl",
    ]);
    let line = String::from_utf8_lossy(&as_events.stdout).lines().find(|l| l.starts_with('{')).unwrap().to_owned();
    let event = citytwin_core::codec::json::decode(line.as_bytes()).expect("alerts are valid CloudEvents");
    assert_eq!(event.ty.as_str(), "com.smartcities.alert.triggered");
    assert_eq!(event.ext.rare.causationid.as_deref(), Some("c1,c2,s1"));
}

#[test]
fn rules_check_reports_errors_with_file_and_path() {
    let dir = std::env::temp_dir().join(format!("citytwin-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[rules]]\nid = \"x\"\npattern = { sequence = [{ type = \"a\" }, { type = \"b\" }], within = \"soon\" }\n",
    )
    .unwrap();
    let output = citytwin(&["rules", "check", "scenarios/rules/congestion.toml", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("bad.toml: rules[0].pattern.within: expected a duration"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("congestion ok"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn dlq_list_and_reprocess_work_on_a_local_data_dir() {
    use citytwin_core::event::{Event, MetricRecorded, Timestamp, Unit};
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let twin = citytwin_twin::city::Twin::start(citytwin_twin::city::TwinConfig::new(dir.path())).await.unwrap();
        let reading = |source: &str| {
            Event::new(
                "r1",
                source,
                MetricRecorded {
                    asset_id: "ghost".into(),
                    metric_type: "pm25".into(),
                    value: 1.0,
                    unit: Unit::from("ug/m3"),
                    location: None,
                },
            )
            .with_time(Timestamp::from_secs(1_736_899_200))
        };
        assert!(twin.ingest(reading("not a uri")).await.is_err());
        assert!(twin.ingest(reading("/sensors")).await.is_err());
        twin.shutdown().await.unwrap();
    });
    let data_dir = dir.path().to_str().unwrap();
    let list = citytwin(&["dlq", "list", "--data-dir", data_dir]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(text.contains("invalid_format") && text.contains("rejected") && text.contains("2 dead letters"), "{text}");
    let reprocess = citytwin(&["dlq", "reprocess", "--data-dir", data_dir, "--attempts", "2", "--backoff", "1ms"]);
    let text = String::from_utf8_lossy(&reprocess.stdout);
    assert!(reprocess.status.success(), "{}", String::from_utf8_lossy(&reprocess.stderr));
    assert!(text.contains("0 resolved, 1 exhausted, 1 without an original, 2 attempts"), "{text}");
    let after = citytwin(&["dlq", "list", "--data-dir", data_dir]);
    assert!(String::from_utf8_lossy(&after.stdout).contains("exhausted"));
}

fn report_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("report.json")).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn run_gives_the_same_stream_and_report_whatever_the_thread_count_or_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let (one, three, paced) = (dir.path().join("one"), dir.path().join("three"), dir.path().join("paced"));
    let log = dir.path().join("log");
    let mut digests = Vec::new();
    // The first run takes the default batches (cut by their 5 simulated minutes here), the
    // second tiny ones; the third is paced (--realtime: 5 simulated hours in about half a
    // second, delivered minute by minute): different batches, the same stream and report.
    for (out, threads, batch) in [(&one, "1", "default"), (&three, "3", "777"), (&paced, "2", "realtime")] {
        let mut args = vec!["run", "tests/fixtures/tiny-city.toml", "--quiet", "--threads", threads];
        match batch {
            "default" => {}
            "realtime" => args.extend(["--realtime", "36000"]),
            size => args.extend(["--batch", size]),
        }
        args.extend(["--report-dir", out.to_str().unwrap()]);
        if threads == "1" {
            args.extend(["--data-dir", log.to_str().unwrap()]);
        }
        let output = citytwin(&args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        let digest = stdout.lines().find_map(|l| l.strip_prefix("stream digest: ")).map(str::to_owned);
        digests.push(digest.unwrap_or_else(|| panic!("no digest printed: {stdout}")));
    }
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digests[2]);
    assert_eq!(report_of(&one), report_of(&three), "report.json must be byte-identical (scenario seed 7)");
    assert_eq!(report_of(&one), report_of(&paced), "a paced run gives the same report (scenario seed 7)");
    let report: serde_json::Value = serde_json::from_str(&report_of(&one)).unwrap();
    assert!(report["events"].as_u64().unwrap() > 15_000, "{report}");
    assert!(report["alerts_by_rule"]["congestion"].as_u64().unwrap_or(0) > 0, "the rush hour congests: {report}");
    assert!(report["alerts_by_rule"]["sensor_offline"].as_u64().unwrap_or(0) > 0, "silent counters: {report}");
    let html = std::fs::read_to_string(one.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 4, "plots in the HTML report");

    // The kept log replays: the alerts, as CloudEvents JSON lines, are those of the report.
    let output = citytwin(&["replay", log.to_str().unwrap(), "--type", "com.smartcities.alert.*"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut replayed = 0;
    for line in stdout.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["type"], "com.smartcities.alert.triggered", "{line}");
        replayed += 1;
    }
    assert_eq!(replayed, report["alerts_total"].as_u64().unwrap());
    // A time slice of readings in one cell, into a fresh twin.
    let output = citytwin(&[
        "replay",
        log.to_str().unwrap(),
        "--type",
        "com.smartcities.asset.created",
        "--into",
        dir.path().join("fresh").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("replayed 150 events") && stdout.contains("(0 refused"), "{stdout}");
}

#[test]
fn validate_reports_every_problem_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(format!("{}/tests/fixtures/tiny-city.toml", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace("../../scenarios/rules/", "/nonexistent/")
        .replace("interval = \"5m\"", "interval = \"soon\"")
        .replace("lambda = 10", "lambda = -1");
    std::fs::write(&broken, &text).unwrap();
    let output = citytwin(&["validate", broken.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for expected in [
        format!("broken.toml:{}:", line_of("interval = \"soon\"")),
        "populations[0].interval: not a duration".to_owned(),
        format!("broken.toml:{}:", line_of("lambda = -1")),
        "populations[0].metrics[0].distribution.lambda".to_owned(),
        "rules[0]: no rule file".to_owned(),
    ] {
        assert!(stderr.contains(&expected), "stderr should contain {expected:?}:\n{stderr}");
    }
    let ok = citytwin(&["validate", "scenarios/demo.toml"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("valid"));
}

#[test]
fn compare_runs_a_base_and_its_extends_variant_and_shows_the_intervention() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/tests/fixtures/tiny-city.toml", env!("CARGO_MANIFEST_DIR"));
    // The variant lives elsewhere: the base's relative rule paths must still resolve.
    let variant = dir.path().join("slow-traffic.toml");
    std::fs::write(
        &variant,
        format!(
            "extends = {base:?}\n\n[city]\nname = \"Tiny city, slow morning\"\n\n\
             [[interventions]]\nname = \"slow\"\nfrom = \"06:00\"\nto = \"09:30\"\n\
             effect = {{ kind = \"scale\", metric = \"avg_speed\", factor = 0.3 }}\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("compare");
    let output = citytwin(&[
        "compare",
        &base,
        variant.to_str().unwrap(),
        "--report-dir",
        out.to_str().unwrap(),
        "--threads",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report = |role: &str| -> serde_json::Value { serde_json::from_str(&report_of(&out.join(role))).unwrap() };
    let (before, after) = (report("base"), report("variant"));
    assert_eq!(after["scenario"], "Tiny city, slow morning", "{after}");
    assert_eq!(before["assets"], after["assets"], "the variant keeps the base's assets");
    let congestion = |r: &serde_json::Value| r["kpis"]["congestion_minutes"].as_f64().unwrap();
    assert!(
        congestion(&after) > congestion(&before),
        "slower traffic congests more (scenario seed 7): {} vs {}",
        congestion(&after),
        congestion(&before)
    );
    assert!(out.join("compare.html").is_file() && out.join("compare.json").is_file());
    assert!(stdout.contains("congestion"), "the KPI table: {stdout}");
}

#[test]
fn a_data_dir_held_by_another_process_is_refused_with_its_process_id() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    std::fs::create_dir_all(&log).unwrap();
    // This test's process holds the directory, as a running server would.
    let mut lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(log.join("LOCK")).unwrap();
    lock.try_lock().unwrap();
    std::io::Write::write_all(&mut lock, std::process::id().to_string().as_bytes()).unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let refused = citytwin(&["dlq", "list", "--data-dir", data_dir]);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{}", String::from_utf8_lossy(&refused.stdout));
    assert!(text.contains(&format!("in use by process {}", std::process::id())), "{text}");
    drop(lock);
    let list = citytwin(&["dlq", "list", "--data-dir", data_dir]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(String::from_utf8_lossy(&list.stdout).contains("0 dead letters"));
}

#[test]
fn bench_restarts_its_twin_on_the_same_data_dir_and_reports_the_recovery() {
    let bench = citytwin(&[
        "bench",
        "--assets",
        "200",
        "--events",
        "2000",
        "--batch",
        "100",
        "--cells",
        "--read-models",
        "--recover",
    ]);
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "{}\n{}", text, String::from_utf8_lossy(&bench.stderr));
    assert!(text.contains("recovery: twin restarted in"), "{text}");
    assert!(text.contains("200 asset states rebuilt"), "{text}");
}
