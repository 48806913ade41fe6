//! City-level views: the final window results of the routing cells rolled up to coarser
//! parent cells (resolution 6 and 4 by default), for the map at city zoom and the API.
//!
//! Mergeable aggregates merge exactly: `count` and `sum` add, `min` and `max` take the
//! extreme, `avg` is re-weighted by the metric's `count` when the rule emits it. Percentiles
//! and `last` do not merge from summaries and are left out of rollups.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use citytwin_core::cep::WindowResult;
use citytwin_core::event::Timestamp;
use h3o::{CellIndex, Resolution};

/// One rolled-up window: aggregates of every child cell's window under a parent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollup {
    /// Child windows merged.
    pub cells: u64,
    /// Values, by aggregate name (`sum(vehicle_count)`).
    pub values: BTreeMap<String, f64>,
    /// Counts behind each `avg(metric)`, to re-weight further merges.
    weights: BTreeMap<String, f64>,
}

/// (rule, parent resolution, parent cell, window start).
type RollupKey = (Arc<str>, Resolution, CellIndex, Timestamp);

/// Rollups per (rule, resolution, parent cell, window start). Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Rollups {
    resolutions: Vec<Resolution>,
    inner: Arc<RwLock<BTreeMap<RollupKey, Rollup>>>,
}

fn split(name: &str) -> Option<(&str, &str)> {
    let (function, rest) = name.split_once('(')?;
    Some((function, rest.strip_suffix(')')?))
}

impl Rollup {
    /// Merges one child window's values (`("avg(pm25)", 41.2)`, ...) into this rollup, as the
    /// module documentation says.
    pub fn merge(&mut self, values: &[(String, f64)]) {
        self.cells += 1;
        let counts: BTreeMap<&str, f64> = values
            .iter()
            .filter_map(|(name, v)| split(name).filter(|(f, _)| *f == "count").map(|(_, m)| (m, *v)))
            .collect();
        for (name, value) in values {
            let Some((function, metric)) = split(name) else { continue };
            match function {
                "count" | "sum" => *self.values.entry(name.clone()).or_insert(0.0) += value,
                "min" => {
                    let slot = self.values.entry(name.clone()).or_insert(*value);
                    *slot = slot.min(*value);
                }
                "max" => {
                    let slot = self.values.entry(name.clone()).or_insert(*value);
                    *slot = slot.max(*value);
                }
                "avg" => {
                    let Some(&weight) = counts.get(metric) else { continue };
                    let total = self.weights.get(name).copied().unwrap_or(0.0);
                    let current = self.values.get(name).copied().unwrap_or(0.0);
                    let merged =
                        if total + weight > 0.0 { (current * total + value * weight) / (total + weight) } else { 0.0 };
                    self.values.insert(name.clone(), merged);
                    self.weights.insert(name.clone(), total + weight);
                }
                _ => {}
            }
        }
    }
}

impl Rollups {
    /// Rollups at these parent resolutions.
    pub fn new(resolutions: Vec<Resolution>) -> Self {
        Rollups { resolutions, inner: Arc::default() }
    }

    /// Merges one final window result of a routing cell into its parents.
    pub fn add(&self, result: &WindowResult) {
        let Some(cell) = result.key.cell() else { return };
        let Ok(mut inner) = self.inner.write() else { return };
        for &resolution in &self.resolutions {
            let Some(parent) = cell.parent(resolution) else { continue };
            inner
                .entry((Arc::clone(&result.rule_id), resolution, parent, result.start))
                .or_default()
                .merge(&result.values);
        }
    }

    /// The latest rolled-up window of `rule` for every parent cell at `resolution`.
    pub fn latest(&self, rule: &str, resolution: Resolution) -> BTreeMap<CellIndex, (Timestamp, Rollup)> {
        let mut out: BTreeMap<CellIndex, (Timestamp, Rollup)> = BTreeMap::new();
        let Ok(inner) = self.inner.read() else { return out };
        for ((rule_id, res, cell, start), rollup) in inner.iter() {
            if &**rule_id == rule && *res == resolution && out.get(cell).is_none_or(|(t, _)| start > t) {
                out.insert(*cell, (*start, rollup.clone()));
            }
        }
        out
    }

    /// Drops rolled-up windows that started before `before` (bounded memory).
    pub fn prune(&self, before: Timestamp) {
        if let Ok(mut inner) = self.inner.write() {
            inner.retain(|(_, _, _, start), _| *start >= before);
        }
    }
}

#[cfg(test)]
mod tests {
    use citytwin_core::cep::{Emission, Key, KeyPart};
    use citytwin_core::event::Location;

    use super::*;

    fn result(cell: CellIndex, values: &[(&str, f64)]) -> WindowResult {
        WindowResult {
            rule_id: "flow".into(),
            key: Key(vec![KeyPart::Cell(cell)]),
            start: Timestamp::from_secs(0),
            end: Timestamp::from_secs(300),
            emission: Emission::Final,
            count: 0,
            values: values.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        }
    }

    #[test]
    fn children_merge_exactly_into_their_parents() {
        let a = Location::new(40.7128, -74.006).cell(Resolution::Eight).unwrap();
        let b = a
            .grid_disk::<Vec<_>>(1)
            .into_iter()
            .find(|c| *c != a && c.parent(Resolution::Six) == a.parent(Resolution::Six))
            .unwrap();
        let rollups = Rollups::new(vec![Resolution::Six, Resolution::Four]);
        rollups.add(&result(
            a,
            &[
                ("count(speed)", 1.0),
                ("sum(speed)", 10.0),
                ("avg(speed)", 10.0),
                ("max(speed)", 10.0),
                ("p95(speed)", 10.0),
            ],
        ));
        rollups.add(&result(
            b,
            &[
                ("count(speed)", 3.0),
                ("sum(speed)", 60.0),
                ("avg(speed)", 20.0),
                ("max(speed)", 30.0),
                ("p95(speed)", 29.0),
            ],
        ));
        let parent = a.parent(Resolution::Six).unwrap();
        let latest = rollups.latest("flow", Resolution::Six);
        let (_, rollup) = &latest[&parent];
        assert_eq!(rollup.cells, 2);
        assert_eq!(rollup.values["count(speed)"], 4.0);
        assert_eq!(rollup.values["sum(speed)"], 70.0);
        assert_eq!(rollup.values["avg(speed)"], 17.5, "weighted by the counts: 70 / 4");
        assert_eq!(rollup.values["max(speed)"], 30.0);
        assert!(!rollup.values.contains_key("p95(speed)"), "percentiles do not merge");
        assert_eq!(rollups.latest("flow", Resolution::Four).len(), 1);
        rollups.prune(Timestamp::from_secs(1));
        assert!(rollups.latest("flow", Resolution::Six).is_empty());
    }
}
