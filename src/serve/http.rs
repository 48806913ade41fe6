//! The HTTP gateway (`axum`): CloudEvents ingest in structured, binary and batch modes, query
//! endpoints mirroring the gRPC `Query` service, a WebSocket live stream with the same
//! filters as `Subscribe`, and the OpenAPI description at `/openapi.json`.
//!
//! Authentication: `Authorization: Bearer <token>`, or `?access_token=<token>` for WebSocket
//! clients that cannot set headers (browsers).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use citytwin_core::codec::{http as binary_mode, json};
use citytwin_core::event::{Timestamp, TypePattern, parse_cell};
use citytwin_twin::bus::Filter;
use h3o::Resolution;
use serde::Deserialize;
use serde_json::{Value, json};

use metrics_exporter_prometheus::PrometheusHandle;

use super::auth::{Principal, Tokens};
use super::gateway::{Gateway, Input, RefusalKind, RequestError};

#[derive(Debug, Clone)]
struct AppState {
    gateway: Arc<Gateway>,
    tokens: Arc<Tokens>,
    prometheus: PrometheusHandle,
}

/// The HTTP application.
pub(crate) fn router(
    gateway: Arc<Gateway>,
    tokens: Arc<Tokens>,
    prometheus: PrometheusHandle,
    max_body_bytes: usize,
) -> Router {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/v1/assets", get(assets))
        .route("/v1/geometry", get(geometry))
        .route("/v1/assets/{id}", get(asset))
        .route("/v1/assets/{id}/history", get(history))
        .route("/v1/cells/{cell}/aggregates", get(cell_aggregates))
        .route("/v1/inventory", get(inventory))
        .route("/v1/alerts", get(alerts))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/stream", get(stream))
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(AppState { gateway, tokens, prometheus })
}

/// An error as JSON `{"error": ..., "message": ...}` with the right status code.
#[derive(Debug)]
struct ApiError(StatusCode, String, Option<Duration>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(code, message, retry) = self;
        let body = json!({ "error": code.canonical_reason().unwrap_or("error"), "message": message });
        let mut response = (code, Json(body)).into_response();
        if let Some(retry) = retry {
            let seconds = retry.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        let message = error.to_string();
        match error {
            RequestError::RateLimited { retry_after, .. } => {
                ApiError(StatusCode::TOO_MANY_REQUESTS, message, Some(retry_after))
            }
            RequestError::TooLarge { .. } => ApiError(StatusCode::PAYLOAD_TOO_LARGE, message, None),
            RequestError::NotFound(_) => ApiError(StatusCode::NOT_FOUND, message, None),
            RequestError::InvalidArgument(_) => ApiError(StatusCode::BAD_REQUEST, message, None),
            RequestError::Unavailable(_) => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, message, Some(Duration::from_secs(1)))
            }
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into(), None)
}

/// The authenticated caller.
#[derive(Debug)]
struct Caller(Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let query_token = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("access_token="))
                .map(|t| percent_encoding::percent_decode_str(t).decode_utf8_lossy().into_owned())
        });
        let result = match (header, query_token) {
            (None, Some(token)) => state.tokens.token(&token),
            (header, _) => state.tokens.authenticate(header),
        };
        result.map(Caller).map_err(|e| ApiError(StatusCode::UNAUTHORIZED, e.to_string(), None))
    }
}

/// An authenticated caller counted against its request bucket: every route but ingest, which
/// counts events instead.
#[derive(Debug)]
struct Admitted(Principal);

impl FromRequestParts<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Caller(who) = Caller::from_request_parts(parts, state).await?;
        state.gateway.admit_request(&who)?;
        Ok(Admitted(who))
    }
}

fn inputs(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<Input>, bool), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let id_of = |value: &Value| value.get("id").and_then(Value::as_str).map(str::to_owned);
    match essence.as_str() {
        "application/cloudevents-batch+json" => {
            let items: Vec<Value> = match serde_json::from_slice(body) {
                Ok(Value::Array(items)) => items,
                Ok(_) => return Err(bad_request("a CloudEvents batch must be a JSON array of events")),
                Err(error) => return Err(bad_request(format!("the batch is not JSON: {error}"))),
            };
            let inputs = items
                .into_iter()
                .map(|item| {
                    let (id, raw) = (id_of(&item), serde_json::to_vec(&item).unwrap_or_default());
                    match json::from_value(item) {
                        Ok(event) => Input::Event(event),
                        Err(error) => Input::Bad { id, error, raw, wire_type: None },
                    }
                })
                .collect();
            Ok((inputs, true))
        }
        "application/cloudevents+json" => {
            let input = match json::decode(body) {
                Ok(event) => Input::Event(event),
                Err(error) => Input::Bad {
                    id: serde_json::from_slice::<Value>(body).ok().as_ref().and_then(id_of),
                    error,
                    raw: body.to_vec(),
                    wire_type: None,
                },
            };
            Ok((vec![input], false))
        }
        _ => {
            let pairs = headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes()));
            let input = match binary_mode::decode(pairs, body) {
                Ok(event) => Input::Event(event),
                Err(error) => {
                    let id = headers.get("ce-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let mut raw = Vec::new();
                    for (name, value) in headers {
                        if name.as_str().starts_with("ce-") || name == header::CONTENT_TYPE {
                            raw.extend_from_slice(name.as_str().as_bytes());
                            raw.extend_from_slice(b": ");
                            raw.extend_from_slice(value.as_bytes());
                            raw.push(b'\n');
                        }
                    }
                    raw.push(b'\n');
                    raw.extend_from_slice(body);
                    Input::Bad { id, error, raw, wire_type: None }
                }
            };
            Ok((vec![input], false))
        }
    }
}

/// `POST /v1/events`: one event (structured `application/cloudevents+json`, or binary mode
/// with `ce-*` headers) or a batch (`application/cloudevents-batch+json`).
///
/// A single event answers 202 when accepted, else 400 (invalid), 403 (another
/// organization's), 409 (refused by the asset), 503 (unavailable); a batch answers 200 with
/// `{accepted, refusals: [...]}` listing each refused event precisely.
async fn ingest(
    State(state): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (inputs, batch) = inputs(&headers, &body)?;
    let outcome = state.gateway.ingest(&who, "http", inputs).await?;
    if batch {
        return Ok((StatusCode::OK, Json(outcome)).into_response());
    }
    let (code, retry) = match outcome.refusals.first() {
        None => (StatusCode::ACCEPTED, None),
        Some(refusal) => (
            match refusal.reason {
                RefusalKind::Invalid => StatusCode::BAD_REQUEST,
                RefusalKind::Unauthorized => StatusCode::FORBIDDEN,
                RefusalKind::Refused => StatusCode::CONFLICT,
                RefusalKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
                RefusalKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            },
            refusal.retry_after_ms.map(Duration::from_millis),
        ),
    };
    let mut response = (code, Json(outcome)).into_response();
    if let Some(retry) = retry
        && let Ok(value) = HeaderValue::from_str(&retry.as_secs().max(1).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Ok(response)
}

fn time_param(name: &str, text: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    text.map(|t| Timestamp::parse_rfc3339(t).map_err(|e| bad_request(format!("{name}: {e}")))).transpose()
}

#[derive(Debug, Deserialize)]
struct AtQuery {
    at: Option<String>,
}

/// `GET /v1/assets/{id}?at=<RFC 3339>`: the asset's state, now or at a time.
async fn asset(
    State(state): State<AppState>,
    Admitted(who): Admitted,
    Path(id): Path<String>,
    Query(query): Query<AtQuery>,
) -> Result<Response, ApiError> {
    let at = time_param("at", query.at.as_deref())?;
    let asset = state.gateway.asset_state(&who, &id, at).await?;
    // The lifecycle as the gRPC API and the inventory name it (`online`), not the Rust variant.
    let status = asset.status.name();
    let mut value =
        serde_json::to_value(asset).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?;
    value["status"] = Value::from(status);
    Ok(Json(value).into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    /// Comma-separated type patterns.
    #[serde(rename = "type")]
    types: Option<String>,
    limit: Option<usize>,
}

fn list(text: Option<&str>) -> Vec<String> {
    text.map(|t| t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
}

/// `GET /v1/assets/{id}/history?from=&to=&type=&limit=`: the asset's events, oldest first.
async fn history(
    State(state): State<AppState>,
    Admitted(who): Admitted,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    let range = (time_param("from", query.from.as_deref())?, time_param("to", query.to.as_deref())?);
    let types = list(query.types.as_deref()).into_iter().map(TypePattern::new).collect();
    let (events, truncated) =
        state.gateway.history(&who, &id, range, types, query.limit.unwrap_or(10_000).max(1)).await?;
    let events: Vec<Value> = events.iter().map(json::to_value).collect();
    Ok(Json(json!({ "events": events, "truncated": truncated })).into_response())
}

#[derive(Debug, Deserialize)]
struct AggregatesQuery {
    resolution: Option<u8>,
    at: Option<String>,
}

/// `GET /v1/cells/{cell}/aggregates?resolution=&at=`: CEP window results of a cell.
async fn cell_aggregates(
    State(state): State<AppState>,
    Admitted(_): Admitted,
    Path(cell): Path<String>,
    Query(query): Query<AggregatesQuery>,
) -> Result<Response, ApiError> {
    let cell = parse_cell(&cell).map_err(bad_request)?;
    let resolution = query
        .resolution
        .map(|r| Resolution::try_from(r).map_err(|_| bad_request(format!("resolution {r} is not 0..=15"))))
        .transpose()?;
    let at = time_param("at", query.at.as_deref())?;
    let results = state.gateway.cell_aggregates(cell, resolution, at).await?;
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| {
            json!({
                "rule_id": &*r.rule_id,
                "key": super::grpc::key_text(&r.key),
                "cell": r.key.cell().map(|c| c.to_string()),
                "start": r.start.to_rfc3339(),
                "end": r.end.to_rfc3339(),
                "count": r.count,
                "values": r.values.into_iter().map(|(k, v)| (k, Value::from(v))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "results": results })).into_response())
}

/// `GET /v1/inventory`: the caller's assets counted by type, status and cell.
async fn inventory(State(state): State<AppState>, Admitted(who): Admitted) -> Result<Response, ApiError> {
    Ok(Json(state.gateway.inventory(&who)).into_response())
}

#[derive(Debug, Deserialize)]
struct CellsQuery {
    /// Comma-separated cells.
    cell: Option<String>,
}

/// `GET /v1/alerts?cell=`: open alerts the caller may see.
async fn alerts(
    State(state): State<AppState>,
    Admitted(who): Admitted,
    Query(query): Query<CellsQuery>,
) -> Result<Response, ApiError> {
    let cells = list(query.cell.as_deref())
        .iter()
        .map(|c| parse_cell(c).map_err(bad_request))
        .collect::<Result<Vec<_>, _>>()?;
    let alerts: Vec<Value> = state
        .gateway
        .open_alerts(&who, &cells)
        .into_iter()
        .map(|(id, a)| {
            json!({
                "alert_id": id,
                "rule_id": a.rule_id,
                "severity": a.severity.to_string(),
                "asset_id": a.asset_id,
                "cell": a.cell.map(|c| c.to_string()),
                "time": a.time.map(Timestamp::to_rfc3339),
                "actions": a.actions,
            })
        })
        .collect();
    Ok(Json(json!({ "alerts": alerts })).into_response())
}

/// `GET /v1/dead-letters`: the caller's dead letters with reasons.
async fn dead_letters(State(state): State<AppState>, Admitted(who): Admitted) -> Result<Response, ApiError> {
    let letters: Vec<Value> = state
        .gateway
        .dead_letters(&who)
        .await?
        .into_iter()
        .map(|l| {
            json!({
                "position": l.position,
                "status": format!("{:?}", l.status).to_lowercase(),
                "reason": l.reason,
                "message": l.message,
                "event": l.original.as_ref().map(json::to_value),
                "raw": l.raw,
            })
        })
        .collect();
    Ok(Json(json!({ "dead_letters": letters })).into_response())
}

/// A `south,west,north,east` query parameter.
fn bbox_param(text: Option<&str>) -> Result<Option<(f64, f64, f64, f64)>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    let parts: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad_request(format!("bbox {text:?}: expected south,west,north,east in degrees")))?;
    match parts.as_slice() {
        &[south, west, north, east] if south <= north && west <= east => Ok(Some((south, west, north, east))),
        _ => Err(bad_request(format!(
            "bbox {text:?}: expected south,west,north,east with south <= north and west <= east"
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct AssetsQuery {
    /// `south,west,north,east`.
    bbox: Option<String>,
    /// Comma-separated asset types.
    #[serde(rename = "type")]
    types: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/assets?bbox=&type=&limit=`: the caller's assets with location, status and latest
/// values (what a map draws), in asset-id order.
async fn assets(
    State(state): State<AppState>,
    Admitted(who): Admitted,
    Query(query): Query<AssetsQuery>,
) -> Result<Response, ApiError> {
    let bbox = bbox_param(query.bbox.as_deref())?;
    let types = list(query.types.as_deref());
    let (assets, truncated) =
        state.gateway.assets(&who, bbox, &types, query.limit.filter(|&l| l > 0).unwrap_or(10_000));
    let assets: Vec<Value> = assets
        .into_iter()
        .map(|(id, a, open_alerts)| {
            json!({
                "asset_id": id,
                "asset_type": a.asset_type,
                "status": a.status.name(),
                "lat": a.location.map(|l| l.lat),
                "lng": a.location.map(|l| l.lng),
                "cell": a.cell.map(|c| c.to_string()),
                "last_values": a.last_values.into_iter().map(|(k, (v, _))| (k, Value::from(v))).collect::<serde_json::Map<_, _>>(),
                "open_alerts": open_alerts,
                "last_seen": a.last_seen.map(Timestamp::to_rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({ "assets": assets, "truncated": truncated })).into_response())
}

/// `GET /v1/geometry`: the city's roads and buildings (GeoJSON), 404 when the twin has none.
async fn geometry(State(state): State<AppState>, Admitted(_): Admitted) -> Result<Response, ApiError> {
    match &state.gateway.geometry {
        Some(g) => {
            Ok(([(axum::http::header::CONTENT_TYPE, "application/geo+json")], g.geojson.to_string()).into_response())
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "this twin has no geometry (set [twin] geometry, or run a scenario with one)".into(),
            None,
        )),
    }
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    #[serde(rename = "type")]
    types: Option<String>,
    cell: Option<String>,
    asset: Option<String>,
    /// `south,west,north,east`.
    bbox: Option<String>,
}

fn filter(query: &StreamQuery) -> Result<Filter, ApiError> {
    let cells =
        list(query.cell.as_deref()).iter().map(|c| parse_cell(c).map_err(bad_request)).collect::<Result<_, _>>()?;
    let bbox = bbox_param(query.bbox.as_deref())?;
    Ok(Filter {
        types: list(query.types.as_deref()).into_iter().map(TypePattern::new).collect(),
        cells,
        bbox,
        assets: list(query.asset.as_deref()),
        organizations: Vec::new(),
    })
}

/// `GET /v1/stream?type=&cell=&asset=&bbox=` (WebSocket): committed events the caller may see,
/// one CloudEvents JSON text message each, with `position` in a `ctposition` attribute.
async fn stream(
    State(state): State<AppState>,
    Admitted(who): Admitted,
    Query(query): Query<StreamQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let filter = filter(&query)?;
    // Subscribe before the upgrade answers: the client sees everything committed after it
    // got its 101.
    let subscription = state.gateway.subscribe(filter);
    let gateway = Arc::clone(&state.gateway);
    Ok(upgrade.on_upgrade(move |socket| websocket(socket, gateway, who, subscription)))
}

async fn websocket(
    mut socket: WebSocket,
    gateway: Arc<Gateway>,
    who: Principal,
    mut subscription: citytwin_twin::bus::Subscription,
) {
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            next = subscription.recv() => {
                let Some(committed) = next else { return };
                if !gateway.visible(&who, &committed.event) {
                    continue;
                }
                let mut value = json::to_value(&committed.event);
                value["ctposition"] = Value::from(committed.position);
                if socket.send(Message::Text(value.to_string().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics(State(state): State<AppState>) -> Response {
    let text = super::prometheus::render(&state.prometheus, &state.gateway).await;
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], text).into_response()
}

/// `GET /openapi.json`.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

const OPENAPI: &str = include_str!("openapi.json");
