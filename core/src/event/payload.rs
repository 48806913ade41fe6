//! Typed payloads for every event type citytwin knows, and the [`EventKind`] table that
//! names them.
//!
//! Each kind has a full CloudEvents `type` string (`com.smartcities.asset.metric_recorded`), the
//! short name the seed's custom envelope uses (`metric.recorded`), a stable storage index and a
//! schema version for upcasting. Types outside the table are carried through untyped
//! (`Data::Json`), never rejected.
//!
//! A key design decision: payload structs deny unknown fields. Decoding JSON into a typed
//! payload therefore never drops a field; data that does not fit stays as JSON and
//! validation names the mismatch. The same structs are stored positionally in MessagePack,
//! so their fields are never skipped when serialising (an absent optional field is `null`).

use std::collections::BTreeMap;
use std::fmt;

use ecow::EcoString;
use h3o::CellIndex;
use serde::{Deserialize, Serialize};

use super::geo::{Location, Unit, cell_serde};
use super::time::Timestamp;

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For information only.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Major,
    /// Service is affected.
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Major => "major",
            Severity::Critical => "critical",
        })
    }
}

/// `asset.created`: an asset was registered in the twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetCreated {
    /// The asset's id, unique within its organization (`sensor_001`).
    pub asset_id: String,
    /// Conventional values: `air_quality_sensor`, `traffic_counter`, `streetlight`,
    /// `parking_sensor`, `bus`, `energy_meter`, `weather_station`.
    pub asset_type: String,
    /// Human-readable name.
    pub name: Option<String>,
    /// Where the asset stands (moving assets: where it starts).
    pub location: Option<Location>,
    /// Expected seconds between two readings or heartbeats; drives offline detection.
    pub reporting_interval_s: Option<u32>,
    /// Free-form key/value attributes (vendor, model, street...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// `asset.commissioned`: the asset was configured and put into service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetCommissioned {
    /// The asset's id.
    pub asset_id: String,
    /// Who commissioned it.
    pub commissioned_by: Option<String>,
    /// Firmware version at commissioning.
    pub firmware_version: Option<String>,
}

/// `asset.decommissioned`: the asset was taken out of service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetDecommissioned {
    /// The asset's id.
    pub asset_id: String,
    /// Why.
    pub reason: Option<String>,
}

/// `asset.deleted`: the asset was removed from the inventory (its history stays in the log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetDeleted {
    /// The asset's id.
    pub asset_id: String,
    /// Why.
    pub reason: Option<String>,
}

/// `asset.online`: the asset started reporting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetOnline {
    /// The asset's id.
    pub asset_id: String,
    /// Where the asset is, as it reports (e.g. `[lat, lng]` in the seed's event log).
    pub location: Option<Location>,
}

/// `asset.offline`: the asset stopped reporting (no heartbeat within its interval) or
/// announced going offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetOffline {
    /// The asset's id.
    pub asset_id: String,
    /// Why, when known (`heartbeat_timeout`, `power_loss`...).
    pub reason: Option<String>,
    /// When the asset was last heard from.
    pub last_seen: Option<Timestamp>,
}

/// `asset.battery_low`: the asset's battery fell below its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatteryLow {
    /// The asset's id.
    pub asset_id: String,
    /// Remaining charge, 0..=100.
    pub battery_pct: f64,
    /// The threshold that was crossed, 0..=100.
    pub threshold_pct: Option<f64>,
}

/// Progress of a firmware update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareStatus {
    /// The update started.
    Started,
    /// The update finished and the asset runs the new version.
    Succeeded,
    /// The update failed; the asset runs the old version.
    Failed,
}

/// `asset.firmware_update`: a firmware update started, succeeded or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareUpdated {
    /// The asset's id.
    pub asset_id: String,
    /// The version before the update.
    pub from_version: Option<String>,
    /// The version being installed.
    pub to_version: String,
    /// Where the update stands.
    pub status: FirmwareStatus,
}

/// Whether maintenance starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaintenancePhase {
    /// The asset went into maintenance.
    Started,
    /// The asset came back from maintenance.
    Completed,
}

/// `asset.maintenance`: the asset went into, or came back from, maintenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetMaintenance {
    /// The asset's id.
    pub asset_id: String,
    /// Why (`calibration`, `repair`...).
    pub reason: String,
    /// Start or end of the maintenance.
    pub phase: MaintenancePhase,
    /// Expected end, when starting.
    pub until: Option<Timestamp>,
}

/// `metric.recorded`: one reading of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRecorded {
    /// The asset that measured it.
    pub asset_id: EcoString,
    /// What was measured (`pm25`, `vehicle_count`, `avg_speed`, `temperature`...).
    pub metric_type: EcoString,
    /// The value, a finite number.
    pub value: f64,
    /// Its unit.
    pub unit: Unit,
    /// Where it was measured.
    pub location: Option<Location>,
}

/// One reading inside a [`MetricBatchIngested`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// What was measured.
    pub metric_type: String,
    /// The value, a finite number.
    pub value: f64,
    /// Its unit.
    pub unit: Unit,
    /// When it was measured.
    pub time: Timestamp,
}

/// `metric.batch_ingested`: several readings from one asset, delivered together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricBatchIngested {
    /// The asset that measured them.
    pub asset_id: String,
    /// The readings, in the order received.
    pub readings: Vec<Reading>,
    /// Where they were measured.
    pub location: Option<Location>,
}

/// What a quality check found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityCheck {
    /// Outside the metric's physical or configured range.
    OutOfRange,
    /// The same value for longer than plausible.
    Stuck,
    /// A jump larger than plausible.
    Spike,
    /// Not a number, wrong unit, or otherwise unusable.
    Malformed,
}

/// `metric.quality_check_failed`: a reading failed a quality check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricQualityCheckFailed {
    /// The asset that produced the reading.
    pub asset_id: String,
    /// The metric.
    pub metric_type: String,
    /// The offending value, when it was a number.
    pub value: Option<f64>,
    /// The check that failed.
    pub check: QualityCheck,
    /// A sentence for a person.
    pub reason: String,
}

/// `alert.triggered`: a rule or threshold fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTriggered {
    /// The alert's id (unique per occurrence).
    pub alert_id: String,
    /// The rule that fired (`congestion`, `pm25_hourly`, `threshold:temperature`...).
    pub rule_id: String,
    /// How urgent.
    pub severity: Severity,
    /// The asset concerned, if any.
    pub asset_id: Option<String>,
    /// The H3 cell concerned, if any.
    #[serde(default, with = "cell_serde::option")]
    pub cell: Option<CellIndex>,
    /// The threshold crossed, for threshold alerts.
    pub threshold: Option<f64>,
    /// The value that crossed it.
    pub actual_value: Option<f64>,
    /// The values that triggered the rule, by name (`vehicle_count`, `avg_speed`...).
    #[serde(default)]
    pub values: BTreeMap<String, f64>,
    /// Named actions for a host to route (`update_traffic_map`, `notify:traffic_management_center`).
    #[serde(default)]
    pub actions: Vec<String>,
    /// A sentence for a person.
    pub message: Option<String>,
}

/// `alert.acknowledged`: an alert was acknowledged (by a person or a system).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertAcknowledged {
    /// The alert.
    pub alert_id: String,
    /// Who or what acknowledged it.
    pub acknowledged_by: String,
    /// A comment.
    pub note: Option<String>,
}

/// `weather.forecast_updated`: a weather provider published a new forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeatherForecastUpdated {
    /// The provider (`met_office`, `simulator`...).
    pub provider: String,
    /// The area it covers, as an H3 cell, when not the whole city.
    #[serde(default, with = "cell_serde::option")]
    pub cell: Option<CellIndex>,
    /// Start of validity.
    pub valid_from: Timestamp,
    /// End of validity.
    pub valid_to: Timestamp,
    /// Air temperature, °C.
    pub temperature_c: Option<f64>,
    /// Precipitation, mm/h.
    pub precipitation_mm_h: Option<f64>,
    /// Wind speed, km/h.
    pub wind_speed_kmh: Option<f64>,
    /// Words (`heatwave`, `storm`...).
    pub conditions: Option<String>,
}

/// `traffic.incident_reported`: an accident, roadwork or closure was reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficIncidentReported {
    /// The incident's id.
    pub incident_id: String,
    /// What happened (`accident`, `roadwork`, `closure`...).
    pub kind: String,
    /// Where.
    pub location: Location,
    /// How severe.
    pub severity: Severity,
    /// Expected duration in seconds.
    pub expected_duration_s: Option<u32>,
    /// A sentence for a person.
    pub description: Option<String>,
}

/// `utility.outage_detected`: a power, water or gas outage was detected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UtilityOutageDetected {
    /// The outage's id.
    pub outage_id: String,
    /// `power`, `water`, `gas`, `district_heating`...
    pub utility: String,
    /// The failed facility (`substation_12`), when known.
    pub facility: Option<String>,
    /// Where, when known.
    pub location: Option<Location>,
    /// Assets known to be affected.
    #[serde(default)]
    pub affected_assets: Vec<String>,
    /// Estimated restoration time.
    pub estimated_restore: Option<Timestamp>,
}

/// `user.dashboard_viewed`: a person opened a dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardViewed {
    /// The user.
    pub user_id: String,
    /// The dashboard.
    pub dashboard_id: String,
}

/// `user.alert_acknowledged`: a person acknowledged an alert from a user interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAlertAcknowledged {
    /// The user.
    pub user_id: String,
    /// The alert.
    pub alert_id: String,
    /// A comment.
    pub note: Option<String>,
}

/// `user.configuration_changed`: a person changed a setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigurationChanged {
    /// The user.
    pub user_id: String,
    /// The setting, as a dotted path (`alerts.pm25.threshold`).
    pub key: String,
    /// Its previous value, as text.
    pub old_value: Option<String>,
    /// Its new value, as text.
    pub new_value: String,
}

/// The type a `Payload` variant holds: the payload, or (marked `boxed`) a box of it.
macro_rules! payload_slot {
    ($payload:ty) => { $payload };
    ($payload:ty, boxed) => { Box<$payload> };
}

/// A payload as its `Payload` variant holds it.
macro_rules! into_slot {
    ($inner:expr) => {
        $inner
    };
    ($inner:expr, boxed) => {
        Box::new($inner)
    };
}

macro_rules! event_kinds {
    ($(
        $(#[$doc:meta])*
        $variant:ident($payload:ty $(, $boxed:ident)?) = $index:literal, $short:literal, $full:literal, schema $version:literal;
    )*) => {
        /// Every event type citytwin knows. Other types are carried through untyped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum EventKind {
            $( $(#[$doc])* $variant, )*
        }

        impl EventKind {
            /// All kinds, in storage-index order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The full CloudEvents `type` string.
            pub const fn type_str(self) -> &'static str {
                match self { $(EventKind::$variant => $full,)* }
            }

            /// The short name used by the custom envelope (`metric.recorded`).
            pub const fn short_name(self) -> &'static str {
                match self { $(EventKind::$variant => $short,)* }
            }

            /// The kind with this full CloudEvents `type`, if known.
            pub fn from_type(ty: &str) -> Option<Self> {
                match ty { $($full => Some(EventKind::$variant),)* _ => None }
            }

            /// The kind with this short name, if known.
            pub fn from_short_name(name: &str) -> Option<Self> {
                match name { $($short => Some(EventKind::$variant),)* _ => None }
            }

            /// The stable index used in storage. Never reuse or renumber one.
            pub const fn storage_index(self) -> u8 {
                match self { $(EventKind::$variant => $index,)* }
            }

            /// The kind stored under `index`.
            pub fn from_storage_index(index: u8) -> Option<Self> {
                match index { $($index => Some(EventKind::$variant),)* _ => None }
            }

            /// The current schema version of this kind's payload; bump it (and add an
            /// upcaster) when the payload struct changes shape.
            pub const fn schema_version(self) -> u8 {
                match self { $(EventKind::$variant => $version,)* }
            }
        }

        /// A typed payload: the `data` of an event of a known kind.
        ///
        /// Kinds whose payload is larger than a reading's are boxed: every event is as large
        /// as its largest payload, and readings, by far the most, are moved through every
        /// stage (generator, ingest, asset actor, writer, bus).
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum Payload {
            $( $(#[$doc])* $variant(payload_slot!($payload $(, $boxed)?)), )*
        }

        impl Payload {
            /// The kind of event this payload belongs to.
            pub const fn kind(&self) -> EventKind {
                match self { $(Payload::$variant(_) => EventKind::$variant,)* }
            }

            /// Decodes the payload of `kind` from any serde deserializer.
            pub(crate) fn deserialize_as<'de, D: serde::Deserializer<'de>>(
                kind: EventKind,
                deserializer: D,
            ) -> Result<Self, D::Error> {
                match kind {
                    $(EventKind::$variant => <$payload>::deserialize(deserializer)
                        .map(|inner| Payload::$variant(into_slot!(inner $(, $boxed)?))),)*
                }
            }
        }

        /// Serialises the inner struct only: the kind is carried by the event's `type`.
        impl Serialize for Payload {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self { $(Payload::$variant(inner) => inner.serialize(serializer),)* }
            }
        }

        $(
            impl From<$payload> for Payload {
                fn from(inner: $payload) -> Self {
                    Payload::$variant(into_slot!(inner $(, $boxed)?))
                }
            }
        )*
    };
}

event_kinds! {
    /// `asset.created`
    AssetCreated(AssetCreated, boxed) = 1, "asset.created", "com.smartcities.asset.created", schema 1;
    /// `asset.commissioned`
    AssetCommissioned(AssetCommissioned) = 2, "asset.commissioned", "com.smartcities.asset.commissioned", schema 1;
    /// `asset.decommissioned`
    AssetDecommissioned(AssetDecommissioned) = 3, "asset.decommissioned", "com.smartcities.asset.decommissioned", schema 1;
    /// `asset.deleted`
    AssetDeleted(AssetDeleted) = 4, "asset.deleted", "com.smartcities.asset.deleted", schema 1;
    /// `asset.online`
    AssetOnline(AssetOnline) = 5, "asset.online", "com.smartcities.asset.online", schema 1;
    /// `asset.offline`
    AssetOffline(AssetOffline) = 6, "asset.offline", "com.smartcities.asset.offline", schema 1;
    /// `asset.battery_low`
    BatteryLow(BatteryLow) = 7, "asset.battery_low", "com.smartcities.asset.battery_low", schema 1;
    /// `asset.firmware_update`
    FirmwareUpdated(FirmwareUpdated) = 8, "asset.firmware_update", "com.smartcities.asset.firmware_update", schema 1;
    /// `asset.maintenance`
    AssetMaintenance(AssetMaintenance) = 9, "asset.maintenance", "com.smartcities.asset.maintenance", schema 1;
    /// `metric.recorded`
    MetricRecorded(MetricRecorded) = 10, "metric.recorded", "com.smartcities.asset.metric_recorded", schema 1;
    /// `metric.batch_ingested`
    MetricBatchIngested(MetricBatchIngested) = 11, "metric.batch_ingested", "com.smartcities.asset.metric_batch_ingested", schema 1;
    /// `metric.quality_check_failed`
    MetricQualityCheckFailed(MetricQualityCheckFailed, boxed) = 12, "metric.quality_check_failed", "com.smartcities.asset.metric_quality_check_failed", schema 1;
    /// `alert.triggered`
    AlertTriggered(AlertTriggered, boxed) = 13, "alert.triggered", "com.smartcities.alert.triggered", schema 1;
    /// `alert.acknowledged`
    AlertAcknowledged(AlertAcknowledged) = 14, "alert.acknowledged", "com.smartcities.alert.acknowledged", schema 1;
    /// `weather.forecast_updated`
    WeatherForecastUpdated(WeatherForecastUpdated, boxed) = 15, "weather.forecast_updated", "com.smartcities.weather.forecast_updated", schema 1;
    /// `traffic.incident_reported`
    TrafficIncidentReported(TrafficIncidentReported, boxed) = 16, "traffic.incident_reported", "com.smartcities.traffic.incident_reported", schema 1;
    /// `utility.outage_detected`
    UtilityOutageDetected(UtilityOutageDetected, boxed) = 17, "utility.outage_detected", "com.smartcities.utility.outage_detected", schema 1;
    /// `user.dashboard_viewed`
    DashboardViewed(DashboardViewed) = 18, "user.dashboard_viewed", "com.smartcities.user.dashboard_viewed", schema 1;
    /// `user.alert_acknowledged`
    UserAlertAcknowledged(UserAlertAcknowledged) = 19, "user.alert_acknowledged", "com.smartcities.user.alert_acknowledged", schema 1;
    /// `user.configuration_changed`
    ConfigurationChanged(ConfigurationChanged, boxed) = 20, "user.configuration_changed", "com.smartcities.user.configuration_changed", schema 1;
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_str())
    }
}

impl Payload {
    /// The asset this payload is about, for kinds that name one.
    pub fn asset_id(&self) -> Option<&str> {
        match self {
            Payload::AssetCreated(p) => Some(&p.asset_id),
            Payload::AssetCommissioned(p) => Some(&p.asset_id),
            Payload::AssetDecommissioned(p) => Some(&p.asset_id),
            Payload::AssetDeleted(p) => Some(&p.asset_id),
            Payload::AssetOnline(p) => Some(&p.asset_id),
            Payload::AssetOffline(p) => Some(&p.asset_id),
            Payload::BatteryLow(p) => Some(&p.asset_id),
            Payload::FirmwareUpdated(p) => Some(&p.asset_id),
            Payload::AssetMaintenance(p) => Some(&p.asset_id),
            Payload::MetricRecorded(p) => Some(&p.asset_id),
            Payload::MetricBatchIngested(p) => Some(&p.asset_id),
            Payload::MetricQualityCheckFailed(p) => Some(&p.asset_id),
            Payload::AlertTriggered(p) => p.asset_id.as_deref(),
            Payload::AlertAcknowledged(_)
            | Payload::WeatherForecastUpdated(_)
            | Payload::TrafficIncidentReported(_)
            | Payload::UtilityOutageDetected(_)
            | Payload::DashboardViewed(_)
            | Payload::UserAlertAcknowledged(_)
            | Payload::ConfigurationChanged(_) => None,
        }
    }

    /// The location this payload carries, if any.
    pub fn location(&self) -> Option<Location> {
        match self {
            Payload::AssetCreated(p) => p.location,
            Payload::AssetOnline(p) => p.location,
            Payload::MetricRecorded(p) => p.location,
            Payload::MetricBatchIngested(p) => p.location,
            Payload::TrafficIncidentReported(p) => Some(p.location),
            Payload::UtilityOutageDetected(p) => p.location,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_table_is_consistent() {
        let mut seen_index = std::collections::HashSet::new();
        for &kind in EventKind::ALL {
            assert_eq!(EventKind::from_type(kind.type_str()), Some(kind));
            assert_eq!(EventKind::from_short_name(kind.short_name()), Some(kind));
            assert_eq!(EventKind::from_storage_index(kind.storage_index()), Some(kind));
            assert!(seen_index.insert(kind.storage_index()), "duplicate index for {kind}");
            assert!(kind.type_str().starts_with("com.smartcities."), "{kind}");
        }
        assert_eq!(EventKind::ALL.len(), 20);
        assert_eq!(EventKind::from_type("com.example.unknown"), None);
    }
}
