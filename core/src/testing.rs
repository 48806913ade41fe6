//! Proptest strategies for events, shared by the tests of every module and, behind the
//! `testing` feature, by the tests of other crates (protocol round trips).

use std::collections::BTreeMap;

use h3o::Resolution;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value;

use crate::event::*;

fn text() -> impl Strategy<Value = String> {
    "\\PC{1,12}"
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,11}"
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![-1.0e6..1.0e6, any::<f64>().prop_filter("finite", |v| v.is_finite())]
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    any::<i64>().prop_map(Timestamp::from_nanos)
}

/// Locations, including ones near the poles and the antimeridian.
pub fn location() -> impl Strategy<Value = Location> {
    (-90.0..=90.0f64, -180.0..=180.0f64).prop_map(|(lat, lng)| Location::new(lat, lng))
}

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![Just(Severity::Info), Just(Severity::Warning), Just(Severity::Major), Just(Severity::Critical)]
}

fn unit() -> impl Strategy<Value = Unit> {
    prop_oneof![
        Just(Unit::from("μg/m³")),
        Just(Unit::from("km/h")),
        Just(Unit::from("{vehicles}")),
        text().prop_map(Unit::new)
    ]
}

fn cell() -> impl Strategy<Value = h3o::CellIndex> {
    (location(), 0u8..=15).prop_map(|(location, res)| location.cell(Resolution::try_from(res).unwrap()).unwrap())
}

/// Every kind of typed payload, with random contents.
pub fn payload() -> impl Strategy<Value = Payload> {
    let asset = || ident();
    prop_oneof![
        (
            asset(),
            ident(),
            proptest::option::of(text()),
            proptest::option::of(location()),
            proptest::option::of(any::<u32>()),
            btree_map(ident(), text(), 0..3)
        )
            .prop_map(|(asset_id, asset_type, name, location, reporting_interval_s, attributes)| {
                Payload::from(AssetCreated { asset_id, asset_type, name, location, reporting_interval_s, attributes })
            }),
        (asset(), proptest::option::of(text()), proptest::option::of(text())).prop_map(
            |(asset_id, commissioned_by, firmware_version)| AssetCommissioned {
                asset_id,
                commissioned_by,
                firmware_version
            }
            .into()
        ),
        (asset(), proptest::option::of(text()))
            .prop_map(|(asset_id, reason)| AssetDecommissioned { asset_id, reason }.into()),
        (asset(), proptest::option::of(text())).prop_map(|(asset_id, reason)| AssetDeleted { asset_id, reason }.into()),
        (asset(), proptest::option::of(location()))
            .prop_map(|(asset_id, location)| AssetOnline { asset_id, location }.into()),
        (asset(), proptest::option::of(text()), proptest::option::of(timestamp()))
            .prop_map(|(asset_id, reason, last_seen)| AssetOffline { asset_id, reason, last_seen }.into()),
        (asset(), 0.0..=100.0f64, proptest::option::of(0.0..=100.0f64)).prop_map(
            |(asset_id, battery_pct, threshold_pct)| BatteryLow { asset_id, battery_pct, threshold_pct }.into()
        ),
        (
            asset(),
            proptest::option::of(text()),
            text(),
            prop_oneof![Just(FirmwareStatus::Started), Just(FirmwareStatus::Succeeded), Just(FirmwareStatus::Failed)]
        )
            .prop_map(|(asset_id, from_version, to_version, status)| FirmwareUpdated {
                asset_id,
                from_version,
                to_version,
                status
            }
            .into()),
        (
            asset(),
            text(),
            prop_oneof![Just(MaintenancePhase::Started), Just(MaintenancePhase::Completed)],
            proptest::option::of(timestamp())
        )
            .prop_map(|(asset_id, reason, phase, until)| AssetMaintenance { asset_id, reason, phase, until }.into()),
        (asset(), ident(), finite(), unit(), proptest::option::of(location())).prop_map(
            |(asset_id, metric_type, value, unit, location)| MetricRecorded {
                asset_id: asset_id.into(),
                metric_type: metric_type.into(),
                value,
                unit,
                location
            }
            .into()
        ),
        (
            asset(),
            vec(
                (ident(), finite(), unit(), timestamp()).prop_map(|(metric_type, value, unit, time)| Reading {
                    metric_type,
                    value,
                    unit,
                    time
                }),
                1..4
            ),
            proptest::option::of(location())
        )
            .prop_map(|(asset_id, readings, location)| MetricBatchIngested { asset_id, readings, location }.into()),
        (
            asset(),
            ident(),
            proptest::option::of(finite()),
            prop_oneof![
                Just(QualityCheck::OutOfRange),
                Just(QualityCheck::Stuck),
                Just(QualityCheck::Spike),
                Just(QualityCheck::Malformed)
            ],
            text()
        )
            .prop_map(|(asset_id, metric_type, value, check, reason)| {
                MetricQualityCheckFailed { asset_id, metric_type, value, check, reason }.into()
            }),
        (
            ident(),
            ident(),
            severity(),
            proptest::option::of(asset()),
            proptest::option::of(cell()),
            proptest::option::of(finite()),
            proptest::option::of(finite()),
            btree_map(ident(), finite(), 0..3),
            vec(ident(), 0..3),
            proptest::option::of(text())
        )
            .prop_map(
                |(alert_id, rule_id, severity, asset_id, cell, threshold, actual_value, values, actions, message)| {
                    AlertTriggered {
                        alert_id,
                        rule_id,
                        severity,
                        asset_id,
                        cell,
                        threshold,
                        actual_value,
                        values,
                        actions,
                        message,
                    }
                    .into()
                }
            ),
        (ident(), text(), proptest::option::of(text()))
            .prop_map(|(alert_id, acknowledged_by, note)| AlertAcknowledged { alert_id, acknowledged_by, note }.into()),
        (
            text(),
            proptest::option::of(cell()),
            timestamp(),
            proptest::option::of(finite()),
            proptest::option::of(finite()),
            proptest::option::of(text())
        )
            .prop_map(|(provider, cell, valid_from, temperature_c, wind_speed_kmh, conditions)| {
                WeatherForecastUpdated {
                    provider,
                    cell,
                    valid_from,
                    valid_to: valid_from,
                    temperature_c,
                    precipitation_mm_h: None,
                    wind_speed_kmh,
                    conditions,
                }
                .into()
            }),
        (ident(), ident(), location(), severity(), proptest::option::of(any::<u32>()), proptest::option::of(text()))
            .prop_map(|(incident_id, kind, location, severity, expected_duration_s, description)| {
                TrafficIncidentReported { incident_id, kind, location, severity, expected_duration_s, description }
                    .into()
            }),
        (
            ident(),
            ident(),
            proptest::option::of(ident()),
            proptest::option::of(location()),
            vec(asset(), 0..3),
            proptest::option::of(timestamp())
        )
            .prop_map(|(outage_id, utility, facility, location, affected_assets, estimated_restore)| {
                UtilityOutageDetected { outage_id, utility, facility, location, affected_assets, estimated_restore }
                    .into()
            }),
        (ident(), ident()).prop_map(|(user_id, dashboard_id)| DashboardViewed { user_id, dashboard_id }.into()),
        (ident(), ident(), proptest::option::of(text()))
            .prop_map(|(user_id, alert_id, note)| { UserAlertAcknowledged { user_id, alert_id, note }.into() }),
        (ident(), "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}", proptest::option::of(text()), text()).prop_map(
            |(user_id, key, old_value, new_value)| ConfigurationChanged { user_id, key, old_value, new_value }.into()
        ),
    ]
}

/// Arbitrary JSON values (finite numbers only, as JSON has no others).
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("\\PC{0,8}", inner, 0..4).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Data and a content type consistent with it, for an unknown event type.
fn untyped_data() -> impl Strategy<Value = (Option<String>, Option<Data>)> {
    prop_oneof![
        Just((None, None)),
        // A top-level JSON null is "no data" in the JSON format.
        (
            prop_oneof![
                Just(None),
                Just(Some("application/json".to_owned())),
                Just(Some("application/vnd.city+json".to_owned()))
            ],
            json_value().prop_filter("null is no data", |v| !v.is_null())
        )
            .prop_map(|(content_type, value)| (content_type, Some(Data::Json(value)))),
        (prop_oneof![Just("text/plain"), Just("application/xml"), Just("text/csv; charset=utf-8")], text())
            .prop_map(|(content_type, text)| (Some(content_type.to_owned()), Some(Data::Json(Value::String(text))))),
        // Binary modes need a content type to tell bytes from JSON.
        (
            prop_oneof![Just(Some("application/octet-stream".to_owned())), Just(Some("image/png".to_owned()))],
            vec(any::<u8>(), 1..64)
        )
            .prop_map(|(content_type, bytes)| (content_type, Some(Data::Binary(bytes)))),
    ]
}

fn user_extensions() -> impl Strategy<Value = BTreeMap<String, ExtensionValue>> {
    let name = "[a-z][a-z0-9]{0,19}".prop_filter("not reserved", |name| {
        !RESERVED_ATTRIBUTES.contains(&name.as_str()) && !CITYTWIN_EXTENSIONS.contains(&name.as_str())
    });
    let value = prop_oneof![
        any::<bool>().prop_map(ExtensionValue::Bool),
        any::<i32>().prop_map(ExtensionValue::Integer),
        text().prop_map(ExtensionValue::String),
    ];
    btree_map(name, value, 0..3)
}

/// Valid events of every shape: typed payloads of every kind, untyped JSON, text and bytes,
/// every optional attribute and extension present or not.
pub fn event() -> impl Strategy<Value = Event> {
    let typed =
        (payload(), proptest::option::of(0u8..=15), prop_oneof![Just(None), Just(Some("application/json".to_owned()))])
            .prop_map(|(payload, res, content_type)| {
                let mut event = Event::new("x", "x", payload);
                event.rare.datacontenttype = content_type;
                if let Some(res) = res {
                    event = event.with_derived_cell(Resolution::try_from(res).unwrap());
                }
                event
            });
    let untyped = ("com\\.example\\.[a-z]{1,10}", untyped_data(), proptest::option::of(cell())).prop_map(
        |(ty, (content_type, data), h3cell)| {
            let mut event = Event::untyped("x", "x", &ty);
            event.rare.datacontenttype = content_type;
            event.data = data;
            event.ext.h3cell = h3cell;
            event
        },
    );
    let source = prop_oneof![
        "/[a-z]{1,8}(/[a-z0-9_]{1,8}){0,3}",
        "urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}",
        "https://city\\.example/[a-z]{1,8}\\?id=[0-9]{1,4}",
    ];
    let attributes = (
        "[A-Za-z0-9_.:-]{1,24}",
        source,
        proptest::option::of(timestamp()),
        proptest::option::of(ident()),
        proptest::option::of("https://schemas\\.city\\.example/[a-z]{1,8}/v[0-9]"),
    );
    let extensions = (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(ident()),
        proptest::option::of(ident()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(prop_oneof![
            Just(Provenance::Live),
            Just(Provenance::Simulated),
            Just(Provenance::Replayed)
        ]),
        user_extensions(),
    );
    (prop_oneof![3 => typed, 1 => untyped], attributes, extensions).prop_map(
        |(
            mut event,
            (id, source, time, subject, dataschema),
            (correlationid, causationid, organization, region, sequence, provenance, other),
        )| {
            event.id = id.into();
            event.source = source.into();
            event.time = time;
            let datacontenttype = event.rare.datacontenttype.take();
            event.rare = Rare::new(RareAttributes { subject, datacontenttype, dataschema });
            let h3cell = event.ext.h3cell;
            event.ext = Extensions {
                organization: organization.map(Into::into),
                h3cell,
                sequence,
                provenance,
                rare: Rare::new(RareExtensions { correlationid, causationid, region, other }),
            };
            event
        },
    )
}
