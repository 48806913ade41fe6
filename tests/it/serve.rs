//! `citytwin serve` end to end over real sockets: the binary is started on free loopback
//! ports; clients speak gRPC (tonic), HTTP (reqwest) and WebSocket (tungstenite).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use citytwin_core::codec::json;
use citytwin_core::event::{AssetCommissioned, AssetCreated, Event, Location, MetricRecorded, Timestamp, Unit};
use citytwin_proto::convert::{event_from_proto, event_from_reading, event_to_proto, reading_from_event};
use citytwin_proto::v1;
use futures_util::StreamExt;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const ACME: &str = "acme-test-token";
const GLOBEX: &str = "globex-test-token";
const OPS: &str = "ops-test-token";
const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// A running `citytwin serve`, killed when dropped.
struct Server {
    child: Child,
    grpc: String,
    http: String,
    log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path, limits: &str) -> Server {
        let hash = |t: &str| {
            let out = Command::new(env!("CARGO_BIN_EXE_citytwin")).args(["token", "--hash", t]).output().unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            text.lines().find_map(|l| l.strip_prefix("token_sha256 = ")).unwrap().trim_matches('"').to_owned()
        };
        let config = format!(
            "data_dir = \"data\"\n[twin]\nshards = 2\n{limits}\n\
             [[organizations]]\nname = \"acme\"\ntoken_sha256 = \"{}\"\n\
             [[organizations]]\nname = \"globex\"\ntoken_sha256 = \"{}\"\n\
             [[organizations]]\nname = \"ops\"\nadmin = true\ntoken_sha256 = \"{}\"\n",
            hash(ACME),
            hash(GLOBEX),
            hash(OPS)
        );
        std::fs::write(dir.join("citytwin.toml"), config).unwrap();
        let log =
            dir.join(format!("server-{}.log", std::time::SystemTime::now().elapsed().map_or(0, |d| d.as_nanos())));
        let mut child = Command::new(env!("CARGO_BIN_EXE_citytwin"))
            .args(["serve", "--config", "citytwin.toml", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("citytwin serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addresses: BTreeMap<&str, &str> = line
            .trim()
            .strip_prefix("citytwin serving: ")
            .unwrap_or_else(|| {
                panic!("unexpected first line {line:?}; log:\n{}", std::fs::read_to_string(&log).unwrap())
            })
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Server {
            grpc: format!("http://{}", addresses["grpc"]),
            http: format!("http://{}", addresses["http"]),
            child,
            log,
        }
    }

    /// SIGTERM, then waits for the graceful stop; returns the server's log.
    fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "graceful stop failed ({exit}); log:\n{}", self.log());
        self.log()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone()).unwrap().connect().await.unwrap()
    }
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn created(asset: &str, org: Option<&str>) -> Event {
    created_at(asset, org, (60.1699, 24.9384))
}

fn created_at(asset: &str, org: Option<&str>, (lat, lng): (f64, f64)) -> Event {
    let mut event = Event::new(
        format!("{asset}-created"),
        "/test",
        AssetCreated {
            asset_id: asset.into(),
            asset_type: "air_quality_sensor".into(),
            name: None,
            location: Some(Location::new(lat, lng)),
            reporting_interval_s: Some(60),
            attributes: BTreeMap::new(),
        },
    )
    .with_time(Timestamp::from_secs(T0));
    event.ext.organization = org.map(Into::into);
    event
}

fn commissioned(asset: &str) -> Event {
    Event::new(
        format!("{asset}-commissioned"),
        "/test",
        AssetCommissioned { asset_id: asset.into(), commissioned_by: None, firmware_version: None },
    )
    .with_time(Timestamp::from_secs(T0 + 1))
}

fn reading(asset: &str, n: i64, value: f64) -> Event {
    reading_at(asset, n, value, (60.1699, 24.9384))
}

fn reading_at(asset: &str, n: i64, value: f64, (lat, lng): (f64, f64)) -> Event {
    Event::new(
        format!("{asset}-r{n}"),
        "/test",
        MetricRecorded {
            asset_id: asset.into(),
            metric_type: "pm25".into(),
            value,
            unit: Unit::new("ug/m3"),
            location: Some(Location::new(lat, lng)),
        },
    )
    .with_time(Timestamp::from_secs(T0 + 60 * n))
}

async fn ingest(channel: &Channel, token: &str, events: &[Event]) -> v1::IngestResponse {
    let mut client = v1::ingest_client::IngestClient::new(channel.clone());
    let request = v1::IngestRequest { events: events.iter().map(event_to_proto).collect(), ..Default::default() };
    client.ingest(authed(request, token)).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ingests_queries_streams_and_keeps_organizations_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let channel = server.channel().await;

    // Ingest over gRPC: acme's sensor, its lifecycle and readings.
    let answer = ingest(
        &channel,
        ACME,
        &[created("acme-1", None), commissioned("acme-1"), reading("acme-1", 1, 12.0), reading("acme-1", 2, 14.0)],
    )
    .await;
    assert_eq!((answer.accepted, answer.rejected), (4, 0), "{answer:?}\n{}", server.log());

    // A precise refusal for each kind of bad input, and the rest of the batch still lands.
    let mut foreign = reading("acme-1", 3, 99.0);
    foreign.ext.organization = Some("acme".into());
    let mut invalid = event_to_proto(&reading("acme-1", 4, 1.0));
    invalid.spec_version = "0.3".into();
    let globex_request = v1::IngestRequest {
        events: vec![
            event_to_proto(&created("globex-1", None)),
            event_to_proto(&reading("acme-1", 5, 1.0)),
            event_to_proto(&foreign),
            invalid,
            event_to_proto(&reading("nobody", 1, 1.0)),
        ],
        ..Default::default()
    };
    let mut client = v1::ingest_client::IngestClient::new(channel.clone());
    let answer = client.ingest(authed(globex_request, GLOBEX)).await.unwrap().into_inner();
    assert_eq!(answer.accepted, 1, "{answer:?}");
    let reasons: Vec<(u64, i32)> = answer.rejections.iter().map(|r| (r.index, r.reason)).collect();
    assert_eq!(
        reasons,
        [
            (1, v1::RejectionReason::Unauthorized as i32),
            (2, v1::RejectionReason::Unauthorized as i32),
            (3, v1::RejectionReason::Invalid as i32),
            (4, v1::RejectionReason::Refused as i32),
        ],
        "{answer:?}"
    );
    assert!(answer.rejections[2].violations.iter().any(|v| v.attribute == "specversion"), "{answer:?}");
    assert!(answer.rejections[3].message.contains("never created"), "{answer:?}");

    // No credentials, or unknown ones: UNAUTHENTICATED.
    let error = client.ingest(tonic::Request::new(v1::IngestRequest::default())).await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    let error = client.ingest(authed(v1::IngestRequest::default(), "forged")).await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);

    // Queries: acme sees its asset (now and in the past); globex does not.
    let mut query = v1::query_client::QueryClient::new(channel.clone());
    let state = query
        .get_asset(authed(v1::GetAssetRequest { asset_id: "acme-1".into(), at: None }, ACME))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (state.status.as_str(), state.metrics["pm25"].count, state.organization.as_str()),
        ("online", 2, "acme")
    );
    let at = citytwin_proto::convert::timestamp_to_proto(Timestamp::from_secs(T0 + 90));
    let past = query
        .get_asset(authed(v1::GetAssetRequest { asset_id: "acme-1".into(), at: Some(at) }, ACME))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(past.metrics["pm25"].count, 1, "time travel: one reading by T0+90 s");
    for token in [GLOBEX] {
        let error = query
            .get_asset(authed(v1::GetAssetRequest { asset_id: "acme-1".into(), at: None }, token))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{error:?}");
        let history = v1::AssetHistoryRequest { asset_id: "acme-1".into(), ..Default::default() };
        assert_eq!(query.asset_history(authed(history, token)).await.unwrap_err().code(), Code::NotFound);
    }
    let history = v1::AssetHistoryRequest {
        asset_id: "acme-1".into(),
        types: vec!["com.smartcities.asset.metric_recorded".into()],
        ..Default::default()
    };
    let history = query.asset_history(authed(history, ACME)).await.unwrap().into_inner();
    let ids: Vec<String> = history.events.iter().map(|e| event_from_proto(e).unwrap().id.to_string()).collect();
    assert_eq!(ids, ["acme-1-r1", "acme-1-r2"]);
    let inventory = query.inventory(authed(v1::InventoryRequest {}, GLOBEX)).await.unwrap().into_inner();
    assert_eq!((inventory.total, inventory.by_type.get("air_quality_sensor")), (1, Some(&1)));
    let inventory = query.inventory(authed(v1::InventoryRequest {}, OPS)).await.unwrap().into_inner();
    assert_eq!(inventory.total, 2, "the admin organization sees every asset");

    // Live: globex subscribes to everything; it must see its own events and none of acme's.
    let mut subscribe = v1::subscribe_client::SubscribeClient::new(channel.clone());
    let mut globex_stream =
        subscribe.events(authed(v1::SubscribeRequest::default(), GLOBEX)).await.unwrap().into_inner();
    let mut acme_stream = subscribe.events(authed(v1::SubscribeRequest::default(), ACME)).await.unwrap().into_inner();
    assert_eq!(ingest(&channel, ACME, &[reading("acme-1", 6, 20.0)]).await.accepted, 1);
    assert_eq!(ingest(&channel, GLOBEX, &[commissioned("globex-1")]).await.accepted, 1);
    let first = globex_stream.message().await.unwrap().unwrap();
    assert_eq!(event_from_proto(first.event.as_ref().unwrap()).unwrap().id, "globex-1-commissioned");
    let first = acme_stream.message().await.unwrap().unwrap();
    assert_eq!(event_from_proto(first.event.as_ref().unwrap()).unwrap().id, "acme-1-r6");

    // Replay: acme's history from the log, then live, without a gap or a duplicate.
    let mut replay = v1::replay_client::ReplayClient::new(channel.clone());
    let request = v1::ReplayRequest { follow: true, ..Default::default() };
    let mut stream = replay.replay(authed(request, ACME)).await.unwrap().into_inner();
    assert_eq!(ingest(&channel, ACME, &[reading("acme-1", 7, 21.0)]).await.accepted, 1);
    let mut seen = Vec::new();
    let mut positions = Vec::new();
    while !seen.iter().any(|id: &String| id == "acme-1-r7") {
        let delivery = tokio::time::timeout(Duration::from_secs(30), stream.message()).await.unwrap().unwrap().unwrap();
        positions.push(delivery.position);
        let event = event_from_proto(delivery.event.as_ref().unwrap()).unwrap();
        assert_ne!(event.ext.organization.as_deref(), Some("globex"), "replay leaked {event:?}");
        seen.push(event.id.to_string());
    }
    for id in ["acme-1-created", "acme-1-commissioned", "acme-1-r1", "acme-1-r2", "acme-1-r6", "acme-1-r7"] {
        assert_eq!(seen.iter().filter(|s| *s == id).count(), 1, "{id} in {seen:?}");
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions in order, no duplicate: {positions:?}");

    // HTTP: structured, binary and batch ingest; queries; errors.
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.http);
    let response = http
        .post(url("/v1/events"))
        .bearer_auth(ACME)
        .header("content-type", "application/cloudevents+json")
        .body(json::encode(&reading("acme-1", 8, 30.0)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let binary = citytwin_core::codec::http::encode(&reading("acme-1", 9, 31.0));
    let mut request = http.post(url("/v1/events")).bearer_auth(ACME).body(binary.body.clone());
    for (name, value) in &binary.headers {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 202);
    let batch = json::encode_batch(&[reading("acme-1", 10, 32.0), reading("acme-1", 11, 33.0)]);
    let mut batch: serde_json::Value = serde_json::from_slice(&batch).unwrap();
    batch.as_array_mut().unwrap().push(serde_json::json!({"specversion": "1.0", "id": "broken"}));
    let response = http
        .post(url("/v1/events"))
        .bearer_auth(ACME)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let outcome: serde_json::Value = response.json().await.unwrap();
    assert_eq!(outcome["accepted"], 2, "{outcome}");
    assert_eq!(outcome["refusals"][0]["index"], 2, "{outcome}");
    assert_eq!(outcome["refusals"][0]["reason"], "invalid", "{outcome}");
    let response = http
        .post(url("/v1/events"))
        .bearer_auth(GLOBEX)
        .header("content-type", "application/cloudevents+json")
        .body(json::encode(&reading("acme-1", 12, 1.0)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "cross-organization HTTP ingest");
    let response = http.get(url("/v1/assets/acme-1")).bearer_auth(ACME).send().await.unwrap();
    let state: serde_json::Value = response.json().await.unwrap();
    assert_eq!(state["metrics"]["pm25"]["count"], 8, "{state}");
    assert_eq!(state["status"], "online", "{state}");
    assert_eq!(http.get(url("/v1/assets/acme-1")).bearer_auth(GLOBEX).send().await.unwrap().status(), 404);
    assert_eq!(http.get(url("/v1/assets/acme-1/history")).bearer_auth(GLOBEX).send().await.unwrap().status(), 404);
    assert_eq!(http.get(url("/v1/inventory")).send().await.unwrap().status(), 401);
    let openapi: serde_json::Value = http.get(url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(openapi["paths"]["/v1/events"]["post"].is_object());
    // A body over [http] max_body_bytes (4 MiB by default) is refused whole, with 413.
    // The server answers before reading the body and closes that connection, so the
    // request goes on a client of its own: a pooled connection the server is closing
    // would fail the next request with `IncompleteMessage`.
    let huge = vec![b' '; 5 << 20];
    let response = reqwest::Client::new()
        .post(url("/v1/events"))
        .bearer_auth(ACME)
        .header("content-type", "application/cloudevents-batch+json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // Prometheus metrics, without a token: the twin's totals and per-protocol counters.
    let metrics = http.get(url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |prefix: &str, parts: &[&str]| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} {parts:?} in\n{metrics}"))
    };
    assert!(value("citytwin_events_accepted_total ", &[]) >= 8.0, "{metrics}");
    assert!(value("citytwin_unauthorized_total ", &[]) >= 1.0, "{metrics}");
    assert!(value("citytwin_gateway_events_total{", &["protocol=\"grpc\"", "outcome=\"accepted\""]) >= 4.0);
    assert!(value("citytwin_gateway_events_total{", &["protocol=\"grpc\"", "outcome=\"unauthorized\""]) >= 1.0);
    assert!(value("citytwin_gateway_ingest_seconds_count{", &["protocol=\"http\""]) >= 1.0, "{metrics}");
    assert!(value("citytwin_registered_assets ", &[]) >= 2.0, "{metrics}");
    // A handful of assets, far below the live-actor limit: nobody waited for room.
    assert_eq!(value("citytwin_waiting_assets ", &[]), 0.0, "{metrics}");
    assert_eq!(value("citytwin_asset_waits_total ", &[]), 0.0, "{metrics}");
    // Exported (`value` panics on a missing metric).
    assert!(value("citytwin_live_assets ", &[]) + value("citytwin_stopping_assets ", &[]) >= 0.0, "{metrics}");

    // Dead letters: globex's refused events are listed for globex, with reasons; not for acme.
    let letters: serde_json::Value =
        http.get(url("/v1/dead-letters")).bearer_auth(GLOBEX).send().await.unwrap().json().await.unwrap();
    let reasons: Vec<&str> =
        letters["dead_letters"].as_array().unwrap().iter().map(|l| l["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"unauthorized") && reasons.contains(&"invalid_format"), "{letters}");
    let letters: serde_json::Value =
        http.get(url("/v1/dead-letters")).bearer_auth(ACME).send().await.unwrap().json().await.unwrap();
    assert!(
        letters["dead_letters"].as_array().unwrap().iter().all(|l| l["reason"] != "unauthorized"),
        "acme sees globex's dead letters: {letters}"
    );

    // WebSocket: globex's stream never carries acme's events.
    let ws_url = format!("{}/v1/stream?access_token={GLOBEX}", server.http.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    assert_eq!(ingest(&channel, ACME, &[reading("acme-1", 13, 40.0)]).await.accepted, 1);
    let mut marker = reading("globex-1", 1, 5.0);
    marker.id = "globex-marker".into();
    assert_eq!(ingest(&channel, GLOBEX, &[marker]).await.accepted, 1);
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.unwrap().unwrap().unwrap();
        let value: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        assert_ne!(value["organization"], "acme", "WebSocket leaked {value}");
        if value["id"] == "globex-marker" {
            break;
        }
    }
    socket.close(None).await.unwrap();

    // Health.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "citytwin.v1.Ingest".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

/// The next delivery of a stream (in 30 s at most).
async fn next_delivery(stream: &mut tonic::Streaming<v1::Delivery>, server: &Server) -> v1::Delivery {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .unwrap_or_else(|_| panic!("no delivery in 30 s; server log:\n{}", server.log()))
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_readings_are_the_same_events_as_cloudevents_in_order_and_come_back_typed_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let channel = server.channel().await;
    assert_eq!(ingest(&channel, ACME, &[created("t1", None), commissioned("t1")]).await.accepted, 2);
    let mut subscribe = v1::subscribe_client::SubscribeClient::new(channel.clone());
    let typed = v1::SubscribeRequest { assets: vec!["t1".into()], readings: true, ..Default::default() };
    let mut typed = subscribe.events(authed(typed, ACME)).await.unwrap().into_inner();
    let plain = v1::SubscribeRequest { assets: vec!["t1".into()], ..Default::default() };
    let mut plain = subscribe.events(authed(plain, ACME)).await.unwrap().into_inner();

    // One request, every form in order: a CloudEvent in `events`, then items: a reading, a
    // CloudEvent, a reading the twin finds invalid, one the wire form already is, an empty
    // item, and a reading about another organization's asset.
    assert_eq!(ingest(&channel, GLOBEX, &[created("g1", None)]).await.accepted, 1);
    let item = |item: v1::ingest_item::Item| v1::IngestItem { item: Some(item) };
    let as_reading = |event: &Event| item(v1::ingest_item::Item::Reading(reading_from_event(event).unwrap()));
    let mut bad_cell = reading_from_event(&reading("t1", 5, 1.0)).unwrap();
    bad_cell.h3cell = 42;
    let request = v1::IngestRequest {
        events: vec![event_to_proto(&reading("t1", 1, 10.0))],
        items: vec![
            as_reading(&reading("t1", 2, 11.0)),
            item(v1::ingest_item::Item::Event(event_to_proto(&reading("t1", 3, 12.0)))),
            as_reading(&reading("t1", 4, f64::NAN)),
            item(v1::ingest_item::Item::Reading(bad_cell)),
            v1::IngestItem { item: None },
            as_reading(&reading("g1", 1, 1.0)),
        ],
    };
    let mut client = v1::ingest_client::IngestClient::new(channel.clone());
    let answer = client.ingest(authed(request, ACME)).await.unwrap().into_inner();
    assert_eq!((answer.accepted, answer.rejected), (3, 4), "{answer:?}");
    let rejections: Vec<(u64, i32, Vec<&str>)> = answer
        .rejections
        .iter()
        .map(|r| (r.index, r.reason, r.violations.iter().map(|v| v.attribute.as_str()).collect()))
        .collect();
    let invalid = v1::RejectionReason::Invalid as i32;
    assert_eq!(
        rejections,
        [
            (3, invalid, vec!["data.value"]),
            (4, invalid, vec!["h3cell"]),
            (5, invalid, vec!["item"]),
            (6, v1::RejectionReason::Unauthorized as i32, vec![])
        ],
        "{answer:?}"
    );
    assert_eq!(answer.rejections[0].event_id, "t1-r4", "{answer:?}");

    // Both subscribers see the same events in the same order: the readings typed for one and
    // as CloudEvents for the other, everything else (the asset going online) as CloudEvents.
    let form = |delivery: &v1::Delivery| match (&delivery.event, &delivery.reading) {
        (Some(event), None) => format!("event {}", event.id),
        (None, Some(reading)) => format!("reading {}", reading.id),
        other => panic!("a delivery with one form: {other:?}"),
    };
    let (mut typed_events, mut live_forms) = (Vec::new(), Vec::new());
    while typed_events.len() < 3 {
        let (typed, plain) = (next_delivery(&mut typed, &server).await, next_delivery(&mut plain, &server).await);
        assert_eq!(typed.position, plain.position);
        live_forms.push(form(&typed));
        let from_plain = event_from_proto(plain.event.as_ref().unwrap()).unwrap();
        match &typed.reading {
            Some(reading) => {
                let from_typed = event_from_reading(reading).unwrap();
                assert_eq!(from_typed, from_plain);
                let n = typed_events.len() + 1;
                assert_eq!(
                    (from_typed.id.as_str(), from_typed.ext.organization.as_deref()),
                    (&*format!("t1-r{n}"), Some("acme"))
                );
                typed_events.push(from_typed);
            }
            None => assert_eq!(event_from_proto(typed.event.as_ref().unwrap()).unwrap(), from_plain),
        }
    }
    // The log holds the same events whichever form they came in.
    let mut query = v1::query_client::QueryClient::new(channel.clone());
    let history = v1::AssetHistoryRequest {
        asset_id: "t1".into(),
        types: vec!["com.smartcities.asset.metric_recorded".into()],
        ..Default::default()
    };
    let history = query.asset_history(authed(history, ACME)).await.unwrap().into_inner();
    let stored: Vec<Event> = history.events.iter().map(|e| event_from_proto(e).unwrap()).collect();
    assert_eq!(stored, typed_events);

    // A replay that asks for readings: the lifecycle as CloudEvents, the readings typed.
    let mut replay = v1::replay_client::ReplayClient::new(channel.clone());
    let request = v1::ReplayRequest { assets: vec!["t1".into()], readings: true, ..Default::default() };
    let mut stream = replay.replay(authed(request, ACME)).await.unwrap().into_inner();
    let mut forms = Vec::new();
    while let Some(delivery) = stream.message().await.unwrap() {
        forms.push(form(&delivery));
    }
    // The log holds the asset's dead letters too (the invalid reading's), after its readings.
    let mut expected = vec!["event t1-created".to_owned(), "event t1-commissioned".to_owned()];
    expected.extend(live_forms);
    assert_eq!(forms[..expected.len().min(forms.len())], expected, "{forms:?}");
    assert_eq!(forms[expected.len()..], ["event dead-letter:t1-r4"], "{forms:?}");

    // The four refused are dead letters, with their reasons.
    let letters = dead_letters(&server, ACME).await;
    let mut reasons: Vec<&str> =
        letters["dead_letters"].as_array().unwrap().iter().map(|l| l["reason"].as_str().unwrap()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["invalid_format", "invalid_format", "invalid_format", "unauthorized"], "{letters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_with_retry_hints_and_a_killed_server_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let limits = "[limits]\nevents_per_second = 1\nevent_burst = 6\nrequests_per_second = 1\nrequest_burst = 3\n";
    let server = Server::start(dir.path(), limits);
    let channel = server.channel().await;
    let mut client = v1::ingest_client::IngestClient::new(channel.clone());

    let too_large: Vec<v1::CloudEvent> = (0..7).map(|n| event_to_proto(&reading("a", n, 1.0))).collect();
    let error =
        client.ingest(authed(v1::IngestRequest { events: too_large, ..Default::default() }, ACME)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("exceeds the burst limit of 6"), "{error:?}");

    // The bucket holds 6 events and refills one per second: after 6, another 6 need 6 s.
    let events = [
        created("a", None),
        commissioned("a"),
        reading("a", 1, 1.0),
        reading("a", 2, 2.0),
        reading("a", 3, 3.0),
        reading("a", 4, 4.0),
    ];
    assert_eq!(ingest(&channel, ACME, &events).await.accepted, 6);
    let more: Vec<v1::CloudEvent> = (5..11).map(|n| event_to_proto(&reading("a", n, 1.0))).collect();
    let error =
        client.ingest(authed(v1::IngestRequest { events: more, ..Default::default() }, ACME)).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    let retry: u64 = error.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{error:?}");
    // Another organization has its own bucket.
    assert_eq!(ingest(&channel, GLOBEX, &[created("g", None)]).await.accepted, 1);

    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = http.get(format!("{}/v1/inventory", server.http)).bearer_auth(GLOBEX).send().await.unwrap();
        statuses.push((response.status().as_u16(), response.headers().contains_key("retry-after")));
    }
    assert_eq!(statuses[..3], [(200, false); 3]);
    assert!(statuses[3..].contains(&(429, true)), "{statuses:?}");

    // SIGKILL: every acknowledged event survives the restart.
    let data = dir.path().to_owned();
    drop(server);
    let server = Server::start(&data, "");
    let channel = server.channel().await;
    let mut query = v1::query_client::QueryClient::new(channel);
    let state = query
        .get_asset(authed(v1::GetAssetRequest { asset_id: "a".into(), at: None }, ACME))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", server.log()))
        .into_inner();
    assert_eq!((state.status.as_str(), state.metrics["pm25"].count), ("online", 4));
    let error =
        query.get_asset(authed(v1::GetAssetRequest { asset_id: "a".into(), at: None }, GLOBEX)).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "ownership survives the restart");
}

/// A real mosquitto on a free loopback port, stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mosquitto {
    fn start(dir: &Path) -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.join("mosquitto.conf");
        // mosquitto drops QoS 1 messages beyond 1,000 queued for one client by default
        // (max_queued_messages): a load test must not lose messages in the broker.
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\n\
                 max_queued_messages 0\n"
            ),
        )
        .unwrap();
        let binary =
            ["/usr/sbin/mosquitto", "mosquitto"].into_iter().find(|b| Path::new(b).exists()).unwrap_or("mosquitto");
        let mut child = Command::new(binary)
            .args(["-c", config.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto is installed (scripts/test installs it)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            assert!(!line.contains("Error"), "mosquitto failed: {line}");
            if line.contains("running") {
                break;
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Mosquitto { child, port }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_gateway_ingests_cloudevents_and_raw_json_and_keeps_organizations_apart() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;

    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mqtt = format!(
        "[mqtt]\nbroker = \"127.0.0.1:{}\"\nclient_id = \"citytwin-test\"\n\
         [[mqtt.subscriptions]]\nfilter = \"acme/ce/+\"\norganization = \"acme\"\nasset_level = 2\n\
         [[mqtt.subscriptions]]\nfilter = \"acme/raw/+\"\norganization = \"acme\"\nformat = \"raw\"\nasset_level = 2\n\
         [mqtt.subscriptions.transform]\ntime = \"ts\"\nmetrics = [{{ field = \"pm25\", metric = \"pm25\", unit = \"ug/m3\" }}]\n",
        broker.port
    );
    let server = Server::start(dir.path(), &mqtt);
    let channel = server.channel().await;
    assert_eq!(ingest(&channel, GLOBEX, &[created("g1", None), commissioned("g1")]).await.accepted, 2);
    assert_eq!(ingest(&channel, ACME, &[created("m1", None), commissioned("m1")]).await.accepted, 2);
    let mut subscribe = v1::subscribe_client::SubscribeClient::new(channel.clone());
    let filter = v1::SubscribeRequest { assets: vec!["m1".into()], ..Default::default() };
    let mut live = subscribe.events(authed(filter, ACME)).await.unwrap().into_inner();

    let (client, mut eventloop) =
        rumqttc::v5::AsyncClient::new(rumqttc::v5::MqttOptions::new("test-publisher", "127.0.0.1", broker.port), 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let binary = citytwin_core::codec::mqtt::encode_v5(&reading("m1", 1, 10.0));
    let properties = PublishProperties {
        user_properties: binary.user_properties,
        content_type: binary.content_type,
        ..Default::default()
    };
    client.publish_with_properties("acme/ce/m1", QoS::AtLeastOnce, false, binary.payload, properties).await.unwrap();
    client.publish("acme/ce/m1", QoS::AtLeastOnce, false, json::encode(&reading("m1", 2, 11.0))).await.unwrap();
    let raw = format!("{{\"ts\": {}, \"pm25\": 17}}", T0 + 180);
    client.publish("acme/raw/m1", QoS::AtLeastOnce, false, raw).await.unwrap();
    // Cross-organization attempts through the mapping: another organization's asset, and an
    // event claiming another organization. Then garbage.
    client.publish("acme/raw/g1", QoS::AtLeastOnce, false, raw_json(T0 + 200, 99.0)).await.unwrap();
    let mut claims_globex = reading("m1", 3, 99.0);
    claims_globex.ext.organization = Some("globex".into());
    client.publish("acme/ce/m1", QoS::AtLeastOnce, false, json::encode(&claims_globex)).await.unwrap();
    client.publish("acme/ce/m1", QoS::AtLeastOnce, false, "not json").await.unwrap();
    client.publish("acme/raw/m1", QoS::AtLeastOnce, false, raw_json(T0 + 240, 1.0)).await.unwrap();

    let ids = ids_until(&mut live, &format!("m1:pm25:{}", Timestamp::from_secs(T0 + 240).as_nanos()), &server).await;
    assert_eq!(pm25_count(&channel, ACME, "m1").await, 4, "binary, structured, raw and the marker; ids {ids:?}");
    assert_eq!(pm25_count(&channel, GLOBEX, "g1").await, 0, "acme's MQTT mapping wrote to globex's asset");

    let letters = dead_letters(&server, ACME).await;
    let mut reasons: Vec<&str> =
        letters["dead_letters"].as_array().unwrap().iter().map(|l| l["reason"].as_str().unwrap()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["invalid_format", "unauthorized", "unauthorized"], "{letters}");
}

/// Event ids from a Subscribe stream until `marker` arrives (in a minute at most).
async fn ids_until(live: &mut tonic::Streaming<v1::Delivery>, marker: &str, server: &Server) -> Vec<String> {
    let mut ids = Vec::new();
    while !ids.iter().any(|id| id == marker) {
        let delivery = tokio::time::timeout(Duration::from_secs(60), live.message())
            .await
            .unwrap_or_else(|_| panic!("{marker} never arrived; ids {ids:?}; server log:\n{}", server.log()))
            .unwrap()
            .unwrap();
        ids.push(event_from_proto(delivery.event.as_ref().unwrap()).unwrap().id.to_string());
    }
    ids
}

/// The dead letters `token`'s organization sees, as the HTTP API lists them.
async fn dead_letters(server: &Server, token: &str) -> serde_json::Value {
    let url = format!("{}/v1/dead-letters", server.http);
    reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

/// How many pm25 readings an asset holds, as `token`'s organization sees it.
async fn pm25_count(channel: &Channel, token: &str, asset: &str) -> u64 {
    let mut query = v1::query_client::QueryClient::new(channel.clone());
    let state = query.get_asset(authed(v1::GetAssetRequest { asset_id: asset.into(), at: None }, token)).await.unwrap();
    state.into_inner().metrics.get("pm25").map_or(0, |m| m.count)
}

fn raw_json(secs: i64, pm25: f64) -> String {
    format!("{{\"ts\": {secs}, \"pm25\": {pm25}}}")
}

/// The RabbitMQ the tests use: `CITYTWIN_AMQP_URL`, or the local default (`scripts/test`
/// starts `rabbitmq-server` when nothing listens there).
fn amqp_url() -> String {
    std::env::var("CITYTWIN_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_gateway_acks_after_the_append_and_loses_nothing_while_the_twin_is_down() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
    use lapin::types::AMQPValue;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let dir = tempfile::tempdir().unwrap();
    // A queue of this run's own, bound to amq.topic under this run's own prefix.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let run = format!("ct{}x{}", std::process::id(), nanos % 1_000_000_007);
    let queue = format!("citytwin-test-{run}");
    let amqp = format!(
        "[amqp]\nuri = \"{}\"\nprefetch = 64\n\
         [[amqp.queues]]\nqueue = \"{queue}\"\norganization = \"acme\"\nasset_level = 2\n\
         bindings = [{{ exchange = \"amq.topic\", routing_key = \"{run}.ce.*\" }}]\n\
         [[amqp.queues]]\nqueue = \"{queue}-raw\"\norganization = \"acme\"\nformat = \"raw\"\nasset_level = 2\n\
         bindings = [{{ exchange = \"amq.topic\", routing_key = \"{run}.raw.*\" }}]\n\
         [amqp.queues.transform]\ntime = \"ts\"\nmetrics = [{{ field = \"pm25\", metric = \"pm25\", unit = \"ug/m3\" }}]\n",
        amqp_url()
    );
    let server = Server::start(dir.path(), &amqp);
    let channel = server.channel().await;
    assert_eq!(ingest(&channel, GLOBEX, &[created("g1", None), commissioned("g1")]).await.accepted, 2);
    assert_eq!(ingest(&channel, ACME, &[created("q1", None), commissioned("q1")]).await.accepted, 2);
    let mut subscribe = v1::subscribe_client::SubscribeClient::new(channel.clone());
    let filter = v1::SubscribeRequest { assets: vec!["q1".into()], ..Default::default() };
    let mut live = subscribe.events(authed(filter, ACME)).await.unwrap().into_inner();

    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let publisher = connection.create_channel().await.unwrap();
    publisher.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let publish = |routing_key: String, body: Vec<u8>, properties: BasicProperties| {
        let publisher = publisher.clone();
        async move {
            let confirm = publisher
                .basic_publish(
                    "amq.topic".into(),
                    routing_key.into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &body,
                    properties.with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack() && confirm.take_message().is_none(), "the broker routed and stored it");
        }
    };
    // Binary mode with typed headers, structured mode, raw JSON.
    let (content_type, headers, body) = binary_amqp(&reading("q1", 1, 10.0));
    let mut binary = BasicProperties::default().with_headers(headers);
    if let Some(content_type) = content_type {
        binary = binary.with_content_type(content_type.into());
    }
    publish(format!("{run}.ce.q1"), body, binary).await;
    let structured = BasicProperties::default().with_content_type("application/cloudevents+json".into());
    publish(format!("{run}.ce.q1"), json::encode(&reading("q1", 2, 11.0)), structured).await;
    publish(format!("{run}.raw.q1"), raw_json(T0 + 180, 17.0).into_bytes(), BasicProperties::default()).await;
    // Refused, each with its reason: another organization's asset through the mapping, an
    // event claiming another organization, garbage, a header of a type no attribute has.
    publish(format!("{run}.raw.g1"), raw_json(T0 + 200, 99.0).into_bytes(), BasicProperties::default()).await;
    let mut claims_globex = reading("q1", 3, 99.0);
    claims_globex.ext.organization = Some("globex".into());
    publish(format!("{run}.ce.q1"), json::encode(&claims_globex), BasicProperties::default()).await;
    publish(format!("{run}.ce.q1"), b"not json".to_vec(), BasicProperties::default()).await;
    let (_, mut headers, body) = binary_amqp(&reading("q1", 4, 12.0));
    headers.insert("cloudEvents:sequence".into(), AMQPValue::Double(1.5));
    publish(format!("{run}.ce.q1"), body, BasicProperties::default().with_headers(headers)).await;
    publish(format!("{run}.raw.q1"), raw_json(T0 + 240, 1.0).into_bytes(), BasicProperties::default()).await;

    let marker = |secs: i64| format!("q1:pm25:{}", Timestamp::from_secs(secs).as_nanos());
    let ids = ids_until(&mut live, &marker(T0 + 240), &server).await;
    assert_eq!(pm25_count(&channel, ACME, "q1").await, 4, "binary, structured, raw and the marker; ids {ids:?}");
    assert_eq!(pm25_count(&channel, GLOBEX, "g1").await, 0, "acme's AMQP mapping wrote to globex's asset");
    let letters = dead_letters(&server, ACME).await;
    let dead = letters["dead_letters"].as_array().unwrap();
    let mut reasons: Vec<&str> = dead.iter().map(|l| l["reason"].as_str().unwrap()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["invalid_format", "invalid_format", "unauthorized", "unauthorized"], "{letters}");
    assert!(
        letters.to_string().contains("cloudEvents:sequence"),
        "the typed-header refusal names the header: {letters}"
    );

    // A graceful stop acknowledges what it ingested; what is published while the twin is
    // down waits in the broker and is ingested once it is back: exactly once each.
    drop(live);
    drop(channel);
    let data = dir.path().to_owned();
    let first_log = server.terminate();
    for n in 0..20 {
        publish(format!("{run}.raw.q1"), raw_json(T0 + 300 + n, 5.0).into_bytes(), BasicProperties::default()).await;
    }
    let server = Server::start(&data, &amqp);
    let channel = server.channel().await;
    let filter = v1::ReplayRequest { assets: vec!["q1".into()], follow: true, ..Default::default() };
    let mut replay = v1::replay_client::ReplayClient::new(channel.clone());
    let mut stream = replay.replay(authed(filter, ACME)).await.unwrap().into_inner();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    while !seen.contains_key(&marker(T0 + 319)) {
        let delivery = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .unwrap_or_else(|_| panic!("queued AMQP events never arrived; seen {seen:?}; log:\n{}", server.log()))
            .unwrap()
            .unwrap();
        *seen.entry(event_from_proto(delivery.event.as_ref().unwrap()).unwrap().id.to_string()).or_default() += 1;
    }
    assert_eq!(
        pm25_count(&channel, ACME, "q1").await,
        24,
        "4 before the stop and 20 queued meanwhile; seen {seen:?}; first server's log:\n{first_log}"
    );
    assert!(seen.values().all(|n| *n == 1), "an acknowledged message came back: {seen:?}\n{first_log}");
    for name in [queue.clone(), format!("{queue}-raw")] {
        publisher.queue_delete(name.into(), QueueDeleteOptions::default()).await.unwrap();
    }
}

/// An event in the AMQP binary mode, as the gateway's own encoder writes it.
fn binary_amqp(event: &Event) -> (Option<String>, lapin::types::FieldTable, Vec<u8>) {
    let message = citytwin_core::codec::amqp::encode(event);
    let mut headers = lapin::types::FieldTable::default();
    for (name, value) in &message.headers {
        let value = match value {
            citytwin_core::codec::binary::AttributeValue::Text(text) => {
                lapin::types::AMQPValue::LongString(text.as_str().into())
            }
            citytwin_core::codec::binary::AttributeValue::Bool(flag) => lapin::types::AMQPValue::Boolean(*flag),
            citytwin_core::codec::binary::AttributeValue::Integer(n) => lapin::types::AMQPValue::LongInt(*n),
            citytwin_core::codec::binary::AttributeValue::Time(time) => {
                lapin::types::AMQPValue::Timestamp(u64::try_from(time.as_nanos() / 1_000_000_000).unwrap())
            }
        };
        headers.insert(name.as_str().into(), value);
    }
    (message.content_type, headers, message.body)
}

/// Runs `citytwin loadtest` on the tiny scenario and returns its JSON report.
fn loadtest(dir: &Path, name: &str, args: &[&str]) -> serde_json::Value {
    let report = dir.join(format!("{name}.json"));
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-city.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_citytwin"))
        .args(["loadtest", scenario, "--quiet", "--token", ACME, "--json", report.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "loadtest {args:?} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("ingest→visible") && text.contains("events/s"), "{text}");
    serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
}

/// What every loadtest report must hold: each event sent is accounted for, each visible one
/// measured once, percentiles in order.
fn check_report(report: &serde_json::Value, sent: u64) {
    assert_eq!(report["sent"], sent, "{report:#}");
    assert_eq!((report["visible"].as_u64(), report["not_visible"].as_u64()), (Some(sent), Some(0)), "{report:#}");
    let latency = &report["ingest_to_visible"];
    assert_eq!(latency["samples"], sent, "{report:#}");
    let (p50, p99, max) =
        (latency["p50_us"].as_u64().unwrap(), latency["p99_us"].as_u64().unwrap(), latency["max_us"].as_u64().unwrap());
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{report:#}");
    assert!(report["visible_events_per_second"].as_f64().unwrap() > 0.0, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_accounts_for_every_event_over_grpc_http_and_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mqtt = format!(
        "[mqtt]\nbroker = \"127.0.0.1:{}\"\nclient_id = \"citytwin-loadtest-test\"\n\
         [[mqtt.subscriptions]]\nfilter = \"lt/+/events\"\norganization = \"acme\"\nasset_level = 1\n",
        broker.port
    );
    // A fresh twin per protocol: the scenario's assets are created once in each.
    for (protocol, n) in [("grpc", 3000u64), ("http", 2000), ("mqtt", 2000)] {
        let data = dir.path().join(protocol);
        std::fs::create_dir_all(&data).unwrap();
        let server = Server::start(&data, if protocol == "mqtt" { &mqtt } else { "" });
        let grpc = server.grpc.replace("http://", "grpc://");
        let target = match protocol {
            "grpc" => grpc.clone(),
            "http" => server.http.clone(),
            _ => format!("mqtt://127.0.0.1:{}", broker.port),
        };
        let events = n.to_string();
        let args = [
            "--target",
            &target,
            "--watch",
            &grpc,
            "--events",
            &events,
            "--batch",
            "250",
            "--prefix",
            "lt",
            "--organization",
            "acme",
        ];
        let report = loadtest(dir.path(), protocol, &args);
        check_report(&report, n);
        match protocol {
            "mqtt" => {
                assert_eq!(report["baseline"]["received"], n, "the plain subscriber saw every message: {report:#}");
                assert!(report["accepted"].is_null(), "MQTT has no per-event answer: {report:#}");
            }
            _ => {
                assert_eq!(report["accepted"], n, "{report:#}");
                assert!(report["acknowledgement"]["samples"].as_u64().unwrap() >= n / 250, "{report:#}");
            }
        }
        let mut query = v1::query_client::QueryClient::new(server.channel().await);
        let inventory = query.inventory(authed(v1::InventoryRequest::default(), ACME)).await.unwrap().into_inner();
        assert!(inventory.total > 0, "the load's assets belong to the token's organization");
    }
}

/// Commissioning effects for the saga-status test: the device refuses its configuration
/// for one asset.
struct Device {
    refuse: &'static str,
}

impl citytwin_twin::saga::CommissioningEffects for Device {
    async fn execute(&self, saga_id: &str, step: citytwin_twin::saga::Step) -> Result<(), String> {
        if step == citytwin_twin::saga::Step::ConfigureDevice && saga_id == self.refuse {
            return Err("the device refused its configuration".into());
        }
        Ok(())
    }

    async fn compensate(&self, _saga_id: &str, _step: citytwin_twin::saga::Step) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sagas_shows_each_organization_its_commissioning_sagas() {
    use citytwin_core::log::{EventLog, LogConfig};
    use citytwin_twin::saga::CommissioningSaga;

    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("data/log"), LogConfig::default()).unwrap();
    let device = Device { refuse: "commission-bad" };
    let now = || Timestamp::from_secs(T0);
    for (saga_id, org) in [("commission-ok", "acme"), ("commission-bad", "acme"), ("commission-g", "globex")] {
        let saga = CommissioningSaga::new(log.clone(), saga_id).for_organization(Some(org.into()));
        saga.run(&device, now).await.unwrap();
    }
    drop(log);

    let server = Server::start(dir.path(), "");
    let mut admin = v1::admin_client::AdminClient::new(server.channel().await);
    let listed = admin.sagas(authed(v1::SagasRequest::default(), ACME)).await.unwrap().into_inner().sagas;
    let summary: Vec<(&str, &str, usize, &str)> = listed
        .iter()
        .map(|s| (s.saga_id.as_str(), s.status.as_str(), s.completed.len(), s.failed_step.as_str()))
        .collect();
    assert_eq!(
        summary,
        [("commission-bad", "compensated", 1, "configure_device"), ("commission-ok", "completed", 4, "")]
    );
    assert_eq!(listed[0].compensated, ["reserve_id"]);
    assert_eq!(listed[0].failure, "the device refused its configuration");
    let one = v1::SagasRequest { saga_id: "commission-g".into() };
    let error = admin.sagas(authed(one.clone(), ACME)).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "acme sees globex's saga: {error:?}");
    let all = admin.sagas(authed(v1::SagasRequest::default(), OPS)).await.unwrap().into_inner().sagas;
    assert_eq!(all.len(), 3, "an admin organization sees every saga");
    let globex = admin.sagas(authed(one, GLOBEX)).await.unwrap().into_inner().sagas;
    assert_eq!((globex.len(), globex[0].organization.as_str()), (1, "globex"));
}

/// A throwaway PKI for the mutual-TLS test: a CA, a server certificate for `localhost` and
/// 127.0.0.1, a client certificate from the same CA, and one from a CA the server does not trust.
struct Pki {
    ca: String,
    client: (String, String),
    stranger: (String, String),
}

impl Pki {
    fn write(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>, names: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            (params.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
        };
        let (trusted, untrusted) = (ca("citytwin test CA"), ca("someone else's CA"));
        let server = leaf(&trusted, &["localhost", "127.0.0.1"]);
        let files = [("ca.pem", trusted.pem()), ("server.pem", server.0), ("server.key", server.1)];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Pki {
            ca: trusted.pem(),
            client: leaf(&trusted, &["sensor-gateway"]),
            stranger: leaf(&untrusted, &["intruder"]),
        }
    }

    fn client(&self, identity: Option<&(String, String)>) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca)).domain_name("localhost");
        match identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// One inventory query over a fresh connection: whether the server let it through.
async fn inventory_over(endpoint: tonic::transport::Endpoint) -> Result<u64, String> {
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut query = v1::query_client::QueryClient::new(channel);
    match query.inventory(authed(v1::InventoryRequest::default(), ACME)).await {
        Ok(answer) => Ok(answer.into_inner().total),
        Err(status) => Err(format!("{status:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_with_mutual_tls_admits_only_clients_with_a_certificate_from_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::write(dir.path());
    let server =
        Server::start(dir.path(), "[grpc.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n");
    assert!(server.log().contains("mutual TLS"), "{}", server.log());
    let address = server.grpc.strip_prefix("http://").unwrap().to_owned();
    let https = |tls: tonic::transport::ClientTlsConfig| {
        Channel::from_shared(format!("https://{address}")).unwrap().tls_config(tls).unwrap()
    };

    // Plain HTTP/2, TLS without a client certificate, and a certificate from another CA: refused.
    let plain = inventory_over(Channel::from_shared(format!("http://{address}")).unwrap()).await;
    assert!(plain.is_err(), "plaintext must not reach a TLS server: {plain:?}");
    let anonymous = inventory_over(https(pki.client(None))).await;
    assert!(anonymous.is_err(), "mutual TLS requires a client certificate: {anonymous:?}");
    let stranger = inventory_over(https(pki.client(Some(&pki.stranger)))).await;
    assert!(stranger.is_err(), "a certificate from an untrusted CA must be refused: {stranger:?}");

    // The right certificate gets a connection; the token still decides what it may do.
    let channel = https(pki.client(Some(&pki.client))).connect().await.unwrap();
    let answer =
        ingest(&channel, ACME, &[created("acme-tls", None), commissioned("acme-tls"), reading("acme-tls", 1, 3.0)])
            .await;
    assert_eq!((answer.accepted, answer.rejected), (3, 0), "{answer:?}\n{}", server.log());
    let mut query = v1::query_client::QueryClient::new(channel.clone());
    let state = query
        .get_asset(authed(v1::GetAssetRequest { asset_id: "acme-tls".into(), at: None }, ACME))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.metrics["pm25"].count, 1);
    let foreign = query.get_asset(authed(v1::GetAssetRequest { asset_id: "acme-tls".into(), at: None }, GLOBEX)).await;
    assert_eq!(foreign.unwrap_err().code(), Code::NotFound, "a certificate does not widen an organization's view");
    let error = query.inventory(tonic::Request::new(v1::InventoryRequest::default())).await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "a certificate does not replace the token");

    // The load-test client speaks grpcs:// with the same files.
    let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&cert, &pki.client.0).unwrap();
    std::fs::write(&key, &pki.client.1).unwrap();
    let target = format!("grpcs://localhost:{}", address.rsplit_once(':').unwrap().1);
    let ca = dir.path().join("ca.pem");
    let tls = [ca.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap()];
    let args = [
        "--target",
        &target,
        "--watch",
        &target,
        "--events",
        "500",
        "--batch",
        "100",
        "--prefix",
        "tls",
        "--tls-ca",
        tls[0],
        "--tls-cert",
        tls[1],
        "--tls-key",
        tls[2],
    ];
    let report = loadtest(dir.path(), "grpcs", &args);
    check_report(&report, 500);
    assert_eq!(report["accepted"], 500, "{report:#}");
}

/// An asset created, commissioned and reporting `value` at a place.
fn sensor_at(asset: &str, lat: f64, lng: f64, value: f64) -> [Event; 3] {
    [created_at(asset, None, (lat, lng)), commissioned(asset), reading_at(asset, 1, value, (lat, lng))]
}

/// Polls `query` until `done` holds of its answer (the read models follow the log
/// asynchronously), for at most 30 s.
async fn until<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    mut query: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let answer = query().await;
        if done(&answer) || tokio::time::Instant::now() > deadline {
            return answer;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_apis_give_the_callers_assets_and_cells_as_they_are_then_what_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let channel = server.channel().await;
    // Two acme sensors in one res-8 cell of central Helsinki, one in Espoo; globex in the center.
    let (center, espoo) = ((60.1699, 24.9384), (60.2055, 24.6559));
    let mut acme = sensor_at("acme-a", center.0, center.1, 10.0).to_vec();
    acme.extend(sensor_at("acme-b", center.0 + 0.0003, center.1 + 0.0003, 30.0));
    acme.extend(sensor_at("acme-far", espoo.0, espoo.1, 50.0));
    assert_eq!(ingest(&channel, ACME, &acme).await.accepted, 9, "{}", server.log());
    assert_eq!(ingest(&channel, GLOBEX, &sensor_at("globex-a", center.0, center.1, 1000.0)).await.accepted, 3);

    let mut query = v1::query_client::QueryClient::new(channel.clone());
    let central = v1::BoundingBox { south: 60.16, west: 24.92, north: 60.18, east: 24.96 };
    let request = |bbox: Option<v1::BoundingBox>, limit| v1::AssetsRequest { bbox, types: vec![], limit };
    let all = until(
        || {
            let mut query = query.clone();
            async move { query.assets(authed(request(None, 0), ACME)).await.unwrap().into_inner() }
        },
        |a| a.assets.len() == 3 && a.assets.iter().all(|a| a.last_values.contains_key("pm25")),
    )
    .await;
    let ids: Vec<&str> = all.assets.iter().map(|a| a.asset_id.as_str()).collect();
    assert_eq!(ids, ["acme-a", "acme-b", "acme-far"], "only the caller's assets, in id order");
    let b = &all.assets[1];
    assert_eq!((b.status.as_str(), b.lat, b.last_values["pm25"]), ("online", Some(center.0 + 0.0003), 30.0));
    let inside = query.assets(authed(request(Some(central), 0), ACME)).await.unwrap().into_inner();
    assert_eq!(inside.assets.len(), 2, "the bounding box leaves Espoo out: {inside:?}");
    let page = query.assets(authed(request(Some(central), 1), ACME)).await.unwrap().into_inner();
    assert_eq!((page.assets.len(), page.truncated), (1, true));
    let bad = v1::BoundingBox { south: 61.0, west: 24.0, north: 60.0, east: 25.0 };
    assert_eq!(query.assets(authed(request(Some(bad), 0), ACME)).await.unwrap_err().code(), Code::InvalidArgument);
    // The HTTP mirror.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/assets?bbox=60.16,24.92,60.18,24.96", server.http);
    let body: serde_json::Value = until(
        || {
            let request = http.get(&url).bearer_auth(GLOBEX);
            async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
        },
        |body| body["assets"][0]["last_values"]["pm25"].is_number(),
    )
    .await;
    assert_eq!(body["assets"].as_array().unwrap().len(), 1, "globex sees its own sensor only: {body}");
    assert_eq!(
        (body["assets"][0]["asset_id"].as_str(), body["assets"][0]["last_values"]["pm25"].as_f64()),
        (Some("globex-a"), Some(1000.0))
    );
    let refused = http.get(format!("{}/v1/assets?bbox=1,2,3", server.http)).bearer_auth(ACME).send().await.unwrap();
    assert_eq!(refused.status(), 400);

    // The viewport stream opens with the map as it is (acme's mean only), then what changes.
    let mut subscribe = v1::subscribe_client::SubscribeClient::new(channel.clone());
    let viewport = v1::ViewportRequest {
        bbox: Some(v1::BoundingBox { south: 60.1, west: 24.5, north: 60.3, east: 25.1 }),
        zoom: 12.0,
        fine_zoom: 0.0,
        interval_s: 0.05,
        metric: "pm25".into(),
        at: None,
        lookback_s: 0.0,
    };
    let mut stream = subscribe.viewport(authed(viewport.clone(), ACME)).await.unwrap().into_inner();
    let frame = |update: Option<v1::ViewportUpdate>| match update.and_then(|u| u.update) {
        Some(v1::viewport_update::Update::Cells(frame)) => frame,
        other => panic!("expected a cell frame, got {other:?}"),
    };
    let snapshot = frame(stream.message().await.unwrap());
    assert!(snapshot.snapshot && !snapshot.history);
    assert_eq!(snapshot.since.map(|t| t.seconds), Some(T0), "the slider starts at the oldest event");
    let latest = snapshot.latest.map_or(0, |t| t.seconds);
    assert!((T0 + 60..T0 + 120).contains(&latest), "and ends at the newest: {snapshot:?}");
    let resolution = h3o::Resolution::try_from(snapshot.resolution as u8).unwrap();
    let center_cell = Location::new(center.0, center.1).cell(resolution).unwrap().to_string();
    let cells: BTreeMap<&str, (u64, Option<f64>)> =
        snapshot.cells.iter().map(|c| (c.cell.as_str(), (c.assets, c.mean))).collect();
    assert_eq!(cells.len(), 2, "{snapshot:?}");
    assert_eq!(cells[center_cell.as_str()], (2, Some(20.0)), "globex's 1000 must not count: {snapshot:?}");

    assert_eq!(ingest(&channel, ACME, &[reading_at("acme-a", 2, 70.0, center)]).await.accepted, 1);
    let change = loop {
        let next = frame(stream.message().await.unwrap());
        assert!(!next.snapshot, "only the first frame is a snapshot");
        if !next.cells.is_empty() {
            break next;
        }
    };
    assert_eq!(change.cells.len(), 1, "{change:?}");
    assert_eq!(
        (change.cells[0].cell.as_str(), change.cells[0].events, change.cells[0].mean),
        (center_cell.as_str(), 1, Some(70.0))
    );

    // The time slider: the map as it was, read from the log; one history frame per request.
    let espoo_cell = Location::new(espoo.0, espoo.1).cell(resolution).unwrap().to_string();
    let past = |at: i64, lookback_s: f64| {
        let mut subscribe = subscribe.clone();
        let request = v1::ViewportRequest {
            at: Some(prost_types::Timestamp { seconds: at, nanos: 0 }),
            lookback_s,
            ..viewport.clone()
        };
        async move {
            let mut stream = subscribe.viewport(authed(request, ACME)).await?.into_inner();
            let frame = frame(stream.message().await?);
            assert!(frame.snapshot && frame.history, "{frame:?}");
            assert_eq!(frame.until.map(|t| t.seconds), Some(at), "a history frame shows its time");
            let cells: BTreeMap<String, (u64, Option<f64>)> =
                frame.cells.into_iter().map(|c| (c.cell, (c.assets, c.mean))).collect();
            Ok::<_, tonic::Status>(cells)
        }
    };
    // Fixed sensors often report without a location: the past map places them where they are.
    let mut unlocated = reading_at("acme-far", 3, 55.0, espoo);
    if let Some(citytwin_core::event::Data::Payload(citytwin_core::event::Payload::MetricRecorded(m))) =
        &mut unlocated.data
    {
        m.location = None;
    }
    assert_eq!(ingest(&channel, ACME, &[unlocated]).await.accepted, 1);
    let third = past(T0 + 180, 90.0).await.unwrap();
    assert_eq!(third.get(&espoo_cell), Some(&(1, Some(55.0))), "placed where it is: {third:?}");
    assert_eq!(third.get(&center_cell), Some(&(1, Some(70.0))), "acme-a at T0+120 only: {third:?}");
    let first = past(T0 + 60, 0.0).await.unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[&center_cell], (2, Some(20.0)), "before acme-a's 70, and without globex: {first:?}");
    assert_eq!(first[&espoo_cell], (1, Some(50.0)));
    let second = past(T0 + 120, 0.0).await.unwrap();
    assert_eq!(second[&center_cell], (2, Some(50.0)), "acme-a's latest is 70 by then: {second:?}");
    let recent = past(T0 + 120, 30.0).await.unwrap();
    assert_eq!(recent.len(), 1, "only acme-a reported in the last 30 s: {recent:?}");
    assert_eq!(recent[&center_cell], (1, Some(70.0)));
    assert!(past(T0 - 7200, 0.0).await.unwrap().is_empty(), "before the first event, nothing");
    let bad = past(T0, -1.0).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("lookback_s"), "{bad:?}");
    let whole_log = past(T0, 1e12).await.unwrap_err();
    assert_eq!(whole_log.code(), Code::InvalidArgument, "a look-back is capped: {whole_log:?}");

    // Street zoom: the twin's own cells first, then the events of the assets in view.
    let street = v1::ViewportRequest { zoom: 16.0, bbox: Some(central), ..viewport.clone() };
    let mut stream = subscribe.viewport(authed(street, ACME)).await.unwrap().into_inner();
    let cells = frame(stream.message().await.unwrap());
    assert!(cells.snapshot && cells.resolution == 8, "the routing resolution, not finer: {cells:?}");
    assert_eq!(cells.cells.iter().map(|c| c.assets).sum::<u64>(), 2, "acme's two central sensors: {cells:?}");
    // globex's sensor in the same cell reports first: acme must not see it.
    assert_eq!(ingest(&channel, GLOBEX, &[reading_at("globex-a", 3, 900.0, center)]).await.accepted, 1);
    assert_eq!(ingest(&channel, ACME, &[reading_at("acme-b", 3, 90.0, center)]).await.accepted, 1);
    let event = loop {
        match stream.message().await.unwrap().and_then(|u| u.update) {
            Some(v1::viewport_update::Update::AssetEvent(delivery)) => break delivery.event.unwrap(),
            Some(v1::viewport_update::Update::Cells(frame)) => assert!(!frame.snapshot),
            None => panic!("the stream ended"),
        }
    };
    assert_eq!(event.id, "acme-b-r3", "acme's own event, not globex's before it");
}

/// The visualizer (`citytwin view`, which starts `citytwin-visualizer`) against a live twin,
/// headless under Xvfb with Mesa's software Vulkan: the screenshot shows the map, the known
/// hottest cell carries the legend's top colour, and the HUD has text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_visualizer_renders_the_live_twin_with_the_hottest_cell_in_the_top_legend_colour() {
    let seed: u64 = 20_261_204;
    println!("seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let channel = server.channel().await;
    // Twelve sensors on a grid over Helsinki with modest readings; one far hotter.
    let mut state = seed;
    let mut events = Vec::new();
    for i in 0..12 {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let value = if i == 7 { 500.0 } else { 5.0 + (state >> 33) as f64 % 40.0 };
        let at = (60.15 + 0.06 * f64::from(i / 4), 24.80 + 0.12 * f64::from(i % 4));
        events.extend(sensor_at(&format!("aq-{i}"), at.0, at.1, value));
    }
    let hot = (60.15 + 0.06, 24.80 + 0.12 * 3.0);
    assert_eq!(ingest(&channel, ACME, &events).await.accepted, 36, "seed {seed}\n{}", server.log());
    let mut query = v1::query_client::QueryClient::new(channel.clone());
    let ready = until(
        || {
            let mut query = query.clone();
            async move { query.assets(authed(v1::AssetsRequest::default(), ACME)).await.unwrap().into_inner() }
        },
        |a| a.assets.iter().filter(|a| a.last_values.contains_key("pm25")).count() == 12,
    )
    .await;
    assert_eq!(ready.assets.len(), 12);
    query.get_asset(authed(v1::GetAssetRequest { asset_id: "aq-7".into(), at: None }, ACME)).await.unwrap();

    let city = capture(&server, dir.path(), "city", &[]);
    let (image, sidecar, artifact) = (&city.image, &city.sidecar, &city.path);
    assert_eq!(image.dimensions(), (800, 450));
    let colours: std::collections::HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 64, "a blank image ({} colours); seed {seed}", colours.len());

    let hottest: h3o::CellIndex = sidecar["hottest"].as_str().unwrap().parse().unwrap();
    let expected = Location::new(hot.0, hot.1).cell(hottest.resolution()).unwrap();
    assert_eq!(hottest, expected, "the cell of the 500 µg/m³ sensor is the hottest");
    let cell = sidecar["cells"].as_array().unwrap().iter().find(|c| c["cell"] == hottest.to_string()).unwrap();
    let scale = sidecar["scale_factor"].as_f64().unwrap();
    let (x, y) = ((cell["x"].as_f64().unwrap() * scale) as i64, (cell["y"].as_f64().unwrap() * scale) as i64);
    let top: Vec<i64> = sidecar["legend_top"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let near = |p: [u8; 3]| p.iter().zip(&top).all(|(a, b)| (i64::from(*a) - b).abs() <= 20);
    let mut matching = 0;
    for dy in -2..=2 {
        for dx in -2..=2 {
            let (px, py) = ((x + dx).clamp(0, 799) as u32, (y + dy).clamp(0, 449) as u32);
            matching += u32::from(near(image.get_pixel(px, py).0));
        }
    }
    assert!(
        matching >= 13,
        "pixels around ({x}, {y}) should carry the legend's top colour {top:?}: {:?} (image at {})",
        image.get_pixel(x.clamp(0, 799) as u32, y.clamp(0, 449) as u32),
        artifact
    );

    // The HUD's status panel: dark background with light text in it.
    let panel: Vec<u32> =
        sidecar["status_panel"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as u32).collect();
    let bright = (panel[1]..panel[1] + panel[3])
        .flat_map(|py| (panel[0]..panel[0] + panel[2]).map(move |px| (px, py)))
        .filter(|&(px, py)| image.get_pixel(px, py).0.iter().all(|&c| c > 150))
        .count();
    assert!(bright > 100, "the HUD panel has no text ({bright} light pixels; image at {artifact})");

    // The time slider: aq-0 turns far hotter and aq-7 cools down ten minutes later; the map
    // as it was two minutes in still has aq-7's cell as the hottest.
    let later = [reading_at("aq-0", 10, 800.0, (60.15, 24.80)), reading_at("aq-7", 10, 5.0, hot)];
    assert_eq!(ingest(&channel, ACME, &later).await.accepted, 2, "seed {seed}");
    until(
        || {
            let mut query = query.clone();
            async move { query.assets(authed(v1::AssetsRequest::default(), ACME)).await.unwrap().into_inner() }
        },
        |a| a.assets.iter().any(|a| a.asset_id == "aq-0" && a.last_values.get("pm25") == Some(&800.0)),
    )
    .await;
    let then = Timestamp::from_secs(T0 + 120).to_rfc3339();
    let past = capture(&server, dir.path(), "past", &["--at", &then]);
    assert_eq!(past.sidecar["history"], T0 + 120, "the capture shows the past: {}", past.sidecar);
    assert_eq!(past.sidecar["hottest"], hottest.to_string(), "aq-7's cell was the hottest then (seed {seed})");

    // Street zoom on aq-7: its marker stands on its (flat) cell.
    let street = capture(&server, dir.path(), "street", &[&format!("--focus={},{}", hot.0, hot.1), "--zoom", "16"]);
    let markers = street.sidecar["markers"].as_array().unwrap();
    let marker = markers.iter().find(|m| m["asset"] == "aq-7").unwrap_or_else(|| panic!("{}", street.sidecar));
    assert_eq!(marker["status"], "online");
    assert!(street.sidecar["zoom"].as_f64().unwrap() >= 14.0, "{}", street.sidecar);
    // The cell under it, as drawn (flat and dimmed at street zoom).
    let under = Location::new(hot.0, hot.1).cell(h3o::Resolution::Eight).unwrap().to_string();
    let cell = street.sidecar["cells"].as_array().unwrap().iter().find(|c| c["cell"] == under);
    let cell_rgb: Vec<i32> = cell.unwrap_or_else(|| panic!("{}", street.sidecar))["rgb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    let (mx, my) = ((marker["x"].as_f64().unwrap() * scale) as u32, (marker["y"].as_f64().unwrap() * scale) as u32);
    let green = (my.saturating_sub(1)..=my + 1)
        .flat_map(|y| (mx.saturating_sub(1)..=mx + 1).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let [r, g, b] = street.image.get_pixel(x.min(799), y.min(449)).0.map(i32::from);
            let off_cell = [r, g, b].iter().zip(&cell_rgb).any(|(a, c)| (a - c).abs() > 40);
            g > r + 30 && g > b && off_cell
        })
        .count();
    assert!(
        green >= 5,
        "the online marker (green, not the cell's {cell_rgb:?}) at ({mx}, {my}): {green} of 9 pixels (image at {})",
        street.path
    );
}

/// A headless capture by `citytwin view` (800×450) with `args`, kept as a CI artifact.
struct Capture {
    image: image::RgbImage,
    sidecar: serde_json::Value,
    path: String,
}

fn capture(server: &Server, dir: &Path, name: &str, args: &[&str]) -> Capture {
    let shot = dir.join(format!("{name}.png"));
    let output = Command::new("timeout")
        .args(["300", "xvfb-run", "-a", "-s", "-screen 0 1280x720x24"])
        .arg(env!("CARGO_BIN_EXE_citytwin"))
        .args(["view", "--connect", &server.grpc, "--token", ACME, "--size", "800x450", "--after-frames", "5"])
        .args(args)
        .arg("--screenshot")
        .arg(&shot)
        .output()
        .expect("xvfb-run (the test command installs xvfb, mesa-vulkan-drivers and libvulkan1)");
    let log = String::from_utf8_lossy(&output.stderr);
    let artifact = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("visualizer-e2e-{name}.png"));
    if std::fs::copy(&shot, &artifact).is_ok() {
        let _ = std::fs::copy(shot.with_extension("json"), artifact.with_extension("json"));
        println!("screenshot kept at {} (and its .json sidecar)", artifact.display());
    }
    assert!(output.status.success(), "the visualizer failed with {args:?} ({}):\n{log}", output.status);
    let sidecar = serde_json::from_str(&std::fs::read_to_string(shot.with_extension("json")).unwrap()).unwrap();
    Capture { image: image::open(&shot).unwrap().to_rgb8(), sidecar, path: artifact.display().to_string() }
}

/// `citytwin run --serve`: a scenario runs while its twin is served; clients watch it live,
/// get the scenario's geometry, and find its final state served after the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serve_serves_a_scenario_while_it_runs_and_its_final_state_after() {
    let dir = tempfile::tempdir().unwrap();
    let geo = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/geo/helsinki-roads.geojson");
    // 15 simulated minutes at 180× real time: 5 s of wall time to watch.
    let scenario = format!(
        "[city]\nname = \"Watched\"\nseed = 7\nresolution = 9\nstart = \"2025-03-11T08:00:00Z\"\n\
         duration = \"15m\"\narea = {{ bbox = [60.1642, 24.9353, 60.1790, 24.9533] }}\ngeometry = {geo:?}\n\n\
         [[populations]]\ntype = \"air_quality_sensor\"\ncount = 40\nid_prefix = \"aq\"\ninterval = \"1m\"\n\n\
         [[populations.metrics]]\nname = \"pm25\"\nunit = \"ug/m3\"\ndistribution = {{ kind = \"normal\", mean = 12, sd = 3 }}\n"
    );
    std::fs::write(dir.path().join("watched.toml"), scenario).unwrap();
    let log = dir.path().join("run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_citytwin"))
        .args(["run", "watched.toml", "--realtime", "180", "--quiet", "--data-dir", "data", "--report-dir", "report"])
        .args(["--serve", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("citytwin run starts");
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addresses: BTreeMap<&str, &str> = line
        .trim()
        .strip_prefix("citytwin serving: ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}; log:\n{}", show_log()))
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let server = Server {
        grpc: format!("http://{}", addresses["grpc"]),
        http: format!("http://{}", addresses["http"]),
        child,
        log: log.clone(),
    };
    let token = std::fs::read_to_string(dir.path().join("data/dev-token")).unwrap().trim().to_owned();
    let channel = server.channel().await;

    // Live: readings arrive on a subscription while the scenario runs.
    let filter =
        v1::SubscribeRequest { types: vec!["com.smartcities.asset.metric_recorded".into()], ..Default::default() };
    let mut live = v1::subscribe_client::SubscribeClient::new(channel.clone())
        .events(authed(filter, &token))
        .await
        .unwrap()
        .into_inner();
    let first =
        tokio::time::timeout(Duration::from_secs(60), live.next()).await.expect("a live reading").unwrap().unwrap();
    let event = event_from_proto(&first.event.unwrap()).unwrap();
    assert!(event.asset_id().unwrap().starts_with("aq"), "{event:?}");

    // The scenario's geometry, over gRPC and HTTP.
    let mut query = v1::query_client::QueryClient::new(channel.clone());
    let geometry = query.geometry(authed(v1::GeometryRequest {}, &token)).await.unwrap().into_inner();
    assert_eq!(geometry.source, "helsinki-roads.geojson");
    assert_eq!(geometry.geojson, std::fs::read_to_string(&geo).unwrap());
    let http = reqwest::Client::new();
    let answer = http.get(format!("{}/v1/geometry", server.http)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/geo+json");

    // After the run: the summary, then the final state stays served.
    let rest = tokio::task::spawn_blocking(move || {
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 || line.starts_with("run finished") {
                return (seen + &line, stdout);
            }
            seen.push_str(&line);
        }
    });
    let (printed, _stdout) = rest.await.unwrap();
    assert!(printed.contains("run finished; still serving"), "{printed}\nlog:\n{}", show_log());
    assert!(dir.path().join("report/report.json").is_file(), "the report is written before serving on");
    let inventory = query.inventory(authed(v1::InventoryRequest::default(), &token)).await.unwrap().into_inner();
    assert_eq!(inventory.total, 40, "every asset of the scenario is in the served read model");
    // The live subscription is still open: a graceful stop ends it rather than wait for it.
    server.terminate();
    assert!(live.next().await.is_none_or(|end| end.is_ok()), "the stream ends cleanly");
}
