//! Places and units: [`Location`] (WGS84), H3 cells derived from it, and metric [`Unit`]s.
//!
//! Invariant: an H3 cell carried by an event is never trusted from input; validation checks
//! that it is the cell of the event's location at the cell's own resolution.

use std::fmt;

use ecow::EcoString;
use h3o::{CellIndex, Resolution};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A WGS84 position in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude, -90..=90.
    pub lat: f64,
    /// Longitude, -180..=180.
    pub lng: f64,
}

impl Location {
    /// A location; use [`Location::check`] before trusting input.
    pub const fn new(lat: f64, lng: f64) -> Self {
        Location { lat, lng }
    }

    /// Why this is not a WGS84 position, if it is not one.
    pub fn check(&self) -> Result<(), &'static str> {
        if !(self.lat.is_finite() && (-90.0..=90.0).contains(&self.lat)) {
            return Err("lat must be a number within -90..=90");
        }
        if !(self.lng.is_finite() && (-180.0..=180.0).contains(&self.lng)) {
            return Err("lng must be a number within -180..=180");
        }
        Ok(())
    }

    /// The H3 cell containing this location at `resolution`, or `None` when the location is
    /// not a valid WGS84 position.
    pub fn cell(&self, resolution: Resolution) -> Option<CellIndex> {
        self.check().ok()?;
        memo::cell(self.lat, self.lng, resolution)
    }

    /// Starts loading what [`Location::cell`] will read for this location at `resolution`,
    /// without waiting for it: a caller about to convert many locations in turn calls it one
    /// location ahead, so that the memory the next conversion needs arrives while it works
    /// on the current one. Only a hint; it changes no result.
    pub fn prefetch_cell(&self, resolution: Resolution) {
        memo::prefetch(self.lat, self.lng, resolution);
    }
}

/// Recent location → cell conversions, shared by every thread.
///
/// A fixed sensor reports from the same place every time, and validating a reading checks
/// its cell against its location: `LatLng::to_cell` (trigonometry, about a microsecond) was
/// the largest single cost of an ingested reading. A four-way set-associative table
/// remembers the last four locations seen in each set; a hit costs a hash and an
/// uncontended lock, a miss (or a set another thread holds at that instant) computes the
/// cell as before. The answer is
/// the same either way: the table only ever holds what `to_cell` returned for that key.
mod memo {
    use std::sync::{Mutex, OnceLock};

    use h3o::{CellIndex, LatLng, Resolution};

    /// 2^16 sets of four slots, 128 bytes a set: 8 MiB, allocated on first use. Readings
    /// arrive place after place in a cycle (every sensor once a minute), so a place whose
    /// slot another place also maps to misses on every turn: direct-mapped, 2^17 slots missed
    /// for about half of 100k places; four ways miss only for the places of a set that more
    /// than four share, a few percent.
    const SETS: usize = 1 << 16;
    const WAYS: usize = 4;

    /// One remembered conversion; `cell` 0 (not a cell index) marks an empty slot.
    #[derive(Clone, Copy, Default)]
    struct Slot {
        lat: u64,
        lng: u64,
        cell: u64,
    }

    /// The slots one key can live in, and the next to replace (round robin).
    #[derive(Default)]
    #[repr(align(128))]
    struct Set(Mutex<([Slot; WAYS], u8)>);

    static TABLE: OnceLock<Box<[Set]>> = OnceLock::new();

    fn table() -> &'static [Set] {
        TABLE.get_or_init(|| (0..SETS).map(|_| Set::default()).collect())
    }

    /// The set a position's conversion at `resolution` lives in.
    fn set_of(lat: f64, lng: f64, resolution: Resolution) -> &'static Set {
        let key = (lat.to_bits().rotate_left(17) ^ lng.to_bits() ^ u64::from(u8::from(resolution)))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &table()[(key >> (64 - SETS.trailing_zeros())) as usize]
    }

    /// Asks the CPU to load the set of a position's conversion (both of its cache lines).
    /// With 100k places the table is far larger than the caches, and the lock taken on the
    /// set stalled on that load: it was 4 % of a city-scale run's time.
    pub(super) fn prefetch(lat: f64, lng: f64, resolution: Resolution) {
        crate::prefetch::prefetch(set_of(lat, lng, resolution));
    }

    /// The cell of a valid WGS84 position at `resolution`.
    pub(super) fn cell(lat: f64, lng: f64, resolution: Resolution) -> Option<CellIndex> {
        let (lat_bits, lng_bits) = (lat.to_bits(), lng.to_bits());
        let set = &set_of(lat, lng, resolution).0;
        if let Ok(set) = set.try_lock() {
            let found =
                set.0.iter().filter(|slot| slot.lat == lat_bits && slot.lng == lng_bits).find_map(|slot| {
                    CellIndex::try_from(slot.cell).ok().filter(|cell| cell.resolution() == resolution)
                });
            if found.is_some() {
                return found;
            }
        }
        let cell = LatLng::new(lat, lng).ok()?.to_cell(resolution);
        if let Ok(mut set) = set.try_lock() {
            let (slots, next) = &mut *set;
            slots[usize::from(*next)] = Slot { lat: lat_bits, lng: lng_bits, cell: u64::from(cell) };
            *next = (*next + 1) % WAYS as u8;
        }
        Some(cell)
    }
}

/// Serde for an H3 cell: the canonical lowercase hex string (`8828308281fffff`) in
/// human-readable formats, the raw `u64` in binary ones.
pub(crate) mod cell_serde {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(cell: &CellIndex, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(cell)
        } else {
            serializer.serialize_u64(u64::from(*cell))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<CellIndex, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
            parse_cell(&text).map_err(D::Error::custom)
        } else {
            let raw = u64::deserialize(deserializer)?;
            CellIndex::try_from(raw).map_err(|_| D::Error::custom(format!("{raw:#x} is not an H3 cell index")))
        }
    }

    /// `Option<CellIndex>` with the same encoding.
    pub(crate) mod option {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(cell: &Option<CellIndex>, serializer: S) -> Result<S::Ok, S::Error> {
            struct Wrap<'a>(&'a CellIndex);
            impl Serialize for Wrap<'_> {
                fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    super::serialize(self.0, serializer)
                }
            }
            match cell {
                Some(cell) => serializer.serialize_some(&Wrap(cell)),
                None => serializer.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<CellIndex>, D::Error> {
            struct Wrap(CellIndex);
            impl<'de> Deserialize<'de> for Wrap {
                fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    super::deserialize(deserializer).map(Wrap)
                }
            }
            Ok(Option::<Wrap>::deserialize(deserializer)?.map(|w| w.0))
        }
    }
}

/// Whether `cell` is `area` or lies under it (`area` a parent cell): how cell filters match
/// everywhere (replay, subscriptions, queries).
pub fn cell_within(cell: CellIndex, area: CellIndex) -> bool {
    cell == area || (cell.resolution() > area.resolution() && cell.parent(area.resolution()) == Some(area))
}

/// Parses an H3 cell from its hex form (`8828308281fffff`).
pub fn parse_cell(text: &str) -> Result<CellIndex, String> {
    text.parse::<CellIndex>().map_err(|_| format!("{text:?} is not an H3 cell index"))
}

/// The unit of a metric value: a UCUM-style code (`ug/m3`, `km/h`, `Cel`, `%`, `{vehicles}`)
/// or its conventional symbol (`μg/m³`).
///
/// Known aliases are kept as written (the value is a measurement as reported), but
/// [`Unit::canonical`] maps them to one code so that rules and aggregates compare like with
/// like.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Unit(pub EcoString);

/// Units known to citytwin, as (canonical code, aliases).
const KNOWN_UNITS: &[(&str, &[&str])] = &[
    ("ug/m3", &["μg/m³", "µg/m³", "ug/m³", "μg/m3"]),
    ("mg/m3", &["mg/m³"]),
    ("ppm", &["[ppm]"]),
    ("ppb", &["[ppb]"]),
    ("Cel", &["°C", "degC"]),
    ("%", &["percent"]),
    ("km/h", &["kph"]),
    ("m/s", &[]),
    ("{vehicles}", &["vehicles", "{vehicle}"]),
    ("{vehicles}/h", &["vehicles/h"]),
    ("{count}", &["count", "1"]),
    ("hPa", &[]),
    ("mm", &[]),
    ("mm/h", &[]),
    ("dB", &["dB(A)", "dBA"]),
    ("lx", &["lux"]),
    ("W", &[]),
    ("kW", &[]),
    ("kW.h", &["kWh"]),
    ("V", &[]),
    ("A", &[]),
    ("m3", &["m³"]),
    ("L", &["l"]),
    ("m", &[]),
    ("s", &[]),
    ("deg", &["°"]),
];

impl Unit {
    /// A unit from its code or symbol.
    pub fn new(code: impl Into<EcoString>) -> Self {
        Unit(code.into())
    }

    /// The unit as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical code for a known unit or alias; `None` for a unit citytwin does not know.
    pub fn canonical(&self) -> Option<&'static str> {
        KNOWN_UNITS
            .iter()
            .find(|(code, aliases)| *code == self.0 || aliases.contains(&self.0.as_str()))
            .map(|(code, _)| *code)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Unit {
    fn from(code: &str) -> Self {
        Unit(code.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_checks_ranges() {
        assert!(Location::new(40.7128, -74.006).check().is_ok());
        assert!(Location::new(91.0, 0.0).check().is_err());
        assert!(Location::new(0.0, -180.5).check().is_err());
        assert!(Location::new(f64::NAN, 0.0).check().is_err());
    }

    #[test]
    fn cell_is_derived_from_location() {
        let cell = Location::new(40.7128, -74.006).cell(Resolution::Eight).unwrap();
        assert_eq!(cell.resolution(), Resolution::Eight);
        assert_eq!(parse_cell(&cell.to_string()).unwrap(), cell);
        assert!(parse_cell("not-a-cell").is_err());
    }

    proptest::proptest! {
        /// The memo answers what `to_cell` answers, first time and again, whatever else
        /// (other resolutions of the same place, other places) passed through its slots.
        #[test]
        fn remembered_cells_are_the_computed_cells(
            places in proptest::collection::vec((-90.0f64..=90.0, -180.0f64..=180.0, 0u8..=15), 1..64),
        ) {
            for _ in 0..2 {
                for &(lat, lng, res) in &places {
                    let resolution = Resolution::try_from(res).unwrap();
                    let computed = h3o::LatLng::new(lat, lng).unwrap().to_cell(resolution);
                    proptest::prop_assert_eq!(Location::new(lat, lng).cell(resolution), Some(computed));
                    let other = Resolution::try_from((res + 1) % 16).unwrap();
                    let computed = h3o::LatLng::new(lat, lng).unwrap().to_cell(other);
                    proptest::prop_assert_eq!(Location::new(lat, lng).cell(other), Some(computed));
                }
            }
        }
    }

    #[test]
    fn unit_aliases_map_to_canonical_codes() {
        assert_eq!(Unit::from("μg/m³").canonical(), Some("ug/m3"));
        assert_eq!(Unit::from("ug/m3").canonical(), Some("ug/m3"));
        assert_eq!(Unit::from("°C").canonical(), Some("Cel"));
        assert_eq!(Unit::from("furlongs/fortnight").canonical(), None);
    }
}
