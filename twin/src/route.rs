//! An ingest batch routed to its assets: validated in place, then each event moved once, into
//! its asset's group.
//!
//! A reading used to travel as a command in its shard's list, then again into its asset's
//! list when the shard grouped the batch by asset (a sort, and a comparison of asset ids per
//! command). An event is about 224 bytes, and at a city's rate moving it was a sixth of the
//! twin's time. Now the caller's thread groups the batch while it validates it (each event is
//! in cache then): a map from asset id to group gives each event its group; one pass then
//! moves each event into its group's list, which is handed on whole: to the shard, to the
//! asset's inbox (taken as is when the inbox is empty, the usual case), to the asset.
//!
//! Each group's slots in the batch's [`Collector`] are consecutive (slots are numbered in group
//! order; `Routed::slot_of` gives each event's), so a group's [`Part`] is one run.

use std::sync::Arc;

use citytwin_core::event::{EcoString, Event, ValidationError};
use citytwin_core::prefetch::{prefetch, prefetch_at};
use rustc_hash::FxHashMap;

use crate::asset::logic::AssetCommand;
use crate::city::shard_of;
use crate::completion::{Collector, Part};

/// One asset's commands of a batch, in batch order, each answered through its slot of `part`.
#[derive(Debug)]
pub struct AssetGroup {
    /// The asset.
    pub asset_id: EcoString,
    /// Its commands, in the order they came.
    pub commands: Vec<AssetCommand>,
    /// Their slots, one per command, in order.
    pub part: Part,
}

/// Where the events of a batch went (see [`route`]).
#[derive(Debug)]
pub(crate) struct Routed {
    /// Per shard, the groups of its assets, in order of each asset's first event.
    pub(crate) shards: Vec<Vec<AssetGroup>>,
    /// The collector of the groups' answers.
    pub(crate) collector: Arc<Collector>,
    /// Per event of the batch, its slot in `collector`, or [`NO_SLOT`] (invalid, or about
    /// the city).
    pub(crate) slot_of: Vec<u32>,
    /// The events about no asset (for the city stream), with their indices in the batch.
    pub(crate) city: (Vec<usize>, Vec<Event>),
}

/// An event with no slot (see [`Routed::slot_of`]).
pub(crate) const NO_SLOT: u32 = u32::MAX;

/// An event that is invalid (see `group_of` in [`route`]).
const INVALID: u32 = u32::MAX;
/// An event about no asset.
const CITY: u32 = u32::MAX - 1;

/// Validates every event of `events` and moves each valid one into its asset's group (or the
/// city's events), leaving `events` empty; `invalid` is told of each invalid event (which is
/// dropped afterwards) with its index and every problem found.
///
/// # Panics
/// With 2^32 − 2 events or more in one batch.
pub(crate) fn route(
    events: &mut Vec<Event>,
    shards: usize,
    mut invalid: impl FnMut(usize, &Event, ValidationError),
) -> Routed {
    let total = events.len();
    assert!(u32::try_from(total).is_ok_and(|n| n < CITY), "a batch of fewer than 2^32 - 2 events");
    // Per event: its group, or a mark.
    let mut group_of: Vec<u32> = Vec::with_capacity(total);
    // Per group: its asset and how many commands it has.
    let mut groups: Vec<(EcoString, u32)> = Vec::new();
    // Sized for a call of small batches at once (no rehashing as it fills); a big call's map
    // grows to its number of assets.
    let mut index: FxHashMap<EcoString, u32> =
        FxHashMap::with_capacity_and_hasher(total.min(1 << 16), rustc_hash::FxBuildHasher);
    for at in 0..total {
        // The next event's validation needs memory its own fields do not show (see
        // `Event::prefetch_validation`): started now, it loads while this one is handled.
        if let Some(next) = events.get(at + 1) {
            next.prefetch_validation();
        }
        let event = &events[at];
        if let Err(error) = event.validate() {
            invalid(at, event, error);
            group_of.push(INVALID);
            continue;
        }
        let Some(asset_id) = event.asset_id() else {
            group_of.push(CITY);
            continue;
        };
        let group = match index.get(asset_id) {
            Some(&group) => group,
            None => {
                // Below `CITY`: there are fewer groups than events.
                let group = groups.len() as u32;
                let asset_id = EcoString::from(asset_id);
                index.insert(asset_id.clone(), group);
                groups.push((asset_id, 0));
                group
            }
        };
        groups[group as usize].1 += 1;
        group_of.push(group);
    }
    drop(index);
    // Each group's next slot (its first, to start with) and its list, sized to fit.
    let mut next_slot: Vec<u32> = Vec::with_capacity(groups.len());
    let mut lists: Vec<Vec<AssetCommand>> = Vec::with_capacity(groups.len());
    let mut slot_count = 0u32;
    for (_, len) in &groups {
        next_slot.push(slot_count);
        slot_count += len;
        lists.push(Vec::with_capacity(*len as usize));
    }
    let mut city: (Vec<usize>, Vec<Event>) = Default::default();
    // Each event's group becomes its slot. The events are read in order (the hardware sees
    // that), but each is written to its group's list, a place it cannot guess (these writes
    // were a third of this function's time, a cache miss each): the free room of the list of
    // the event `AHEAD` places on is asked for early, and before that, `2 * AHEAD` places on,
    // the list itself (its free room is found from it).
    const AHEAD: usize = 8;
    let mut slot_of = group_of;
    for (at, event) in events.drain(..).enumerate() {
        // Still groups, ahead of `at`.
        if let Some(list) = slot_of.get(at + 2 * AHEAD).and_then(|&group| lists.get(group as usize)) {
            prefetch(list);
        }
        if let Some(list) = slot_of.get(at + AHEAD).and_then(|&group| lists.get(group as usize)) {
            prefetch_at(list.as_ptr().wrapping_add(list.len()));
        }
        let slot_of = &mut slot_of[at];
        match *slot_of {
            INVALID => *slot_of = NO_SLOT,
            CITY => {
                *slot_of = NO_SLOT;
                city.0.push(at);
                city.1.push(event);
            }
            group => {
                let slot = &mut next_slot[group as usize];
                *slot_of = *slot;
                *slot += 1;
                lists[group as usize].push(AssetCommand::Observe(event));
            }
        }
    }
    let collector = Collector::new(slot_count as usize);
    let mut by_shard: Vec<Vec<AssetGroup>> = (0..shards.max(1)).map(|_| Vec::new()).collect();
    // `next_slot` is now each group's end.
    for (((asset_id, len), commands), end) in groups.into_iter().zip(lists).zip(next_slot) {
        let part = Part::new(Arc::clone(&collector), (end - len..end).collect());
        by_shard[shard_of(&asset_id, shards)].push(AssetGroup { asset_id, commands, part });
    }
    Routed { shards: by_shard, collector, slot_of, city }
}

#[cfg(test)]
mod tests {
    use citytwin_core::event::{MetricRecorded, Timestamp, Unit};

    use super::*;

    fn reading(asset: usize, n: i64) -> Event {
        Event::new(
            format!("r{n}"),
            "/t",
            MetricRecorded {
                asset_id: format!("a{asset}").into(),
                metric_type: "pm25".into(),
                value: n as f64,
                unit: Unit::from("ug/m3"),
                location: None,
            },
        )
        .with_time(Timestamp::from_secs(n))
    }

    fn time(command: &AssetCommand) -> i64 {
        match command {
            AssetCommand::Observe(event) => event.time.expect("timed").as_nanos() / 1_000_000_000,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn each_asset_gets_one_group_in_its_shard_in_order_and_each_slot_maps_back_to_its_event() {
        let (assets, per_asset, shards) = (37, 5, 4);
        // Reading n is asset n % 37's; every 11th is invalid (no source), every 13th about the
        // city (no asset).
        let mut events: Vec<Event> = (0..assets * per_asset)
            .map(|n| {
                let mut event = reading(n % assets, n as i64);
                if n % 11 == 3 {
                    event.source = "".into();
                }
                if n % 13 == 5 {
                    event = Event::untyped(format!("c{n}"), "/t", "com.example.weather")
                        .with_time(Timestamp::from_secs(n as i64));
                }
                event
            })
            .collect();
        let total = events.len();
        let mut invalid = Vec::new();
        let routed = route(&mut events, shards, |at, _, problems| invalid.push((at, problems)));
        assert!(events.is_empty(), "every event was taken");
        let expected_invalid: Vec<usize> = (0..total).filter(|n| n % 11 == 3 && n % 13 != 5).collect();
        assert_eq!(invalid.iter().map(|(at, _)| *at).collect::<Vec<_>>(), expected_invalid);
        assert!(invalid.iter().all(|(_, problems)| problems.to_string().contains("source")), "{invalid:?}");
        let expected_city: Vec<usize> = (0..total).filter(|n| n % 13 == 5).collect();
        assert_eq!(routed.city.0, expected_city);
        assert_eq!(routed.city.1.len(), expected_city.len());
        let mut seen = std::collections::HashSet::new();
        let mut answered = 0;
        for (shard, groups) in routed.shards.into_iter().enumerate() {
            for AssetGroup { asset_id, commands, part } in groups {
                assert_eq!(shard_of(&asset_id, shards), shard, "{asset_id} is in its shard");
                assert!(seen.insert(asset_id.clone()), "{asset_id} comes as one group");
                let times: Vec<i64> = commands.iter().map(time).collect();
                let asset: usize = asset_id[1..].parse().unwrap();
                let expected: Vec<i64> = (0..per_asset)
                    .map(|k| (k * assets + asset) as i64)
                    .filter(|&n| !expected_invalid.contains(&(n as usize)) && n % 13 != 5)
                    .collect();
                assert_eq!(times, expected, "{asset_id}: its readings, in order");
                assert_eq!(part.len(), commands.len());
                answered += commands.len();
                // Each command answers with its time: its slot must map back to it.
                part.answer(times.iter().map(|&t| Ok(t as usize)));
            }
        }
        let mut answers = routed.collector.wait().await;
        assert_eq!(answered, answers.len());
        let mut slotted = 0;
        for (at, &slot) in routed.slot_of.iter().enumerate() {
            if slot == NO_SLOT {
                assert!(expected_invalid.contains(&at) || expected_city.contains(&at), "event {at} has a slot");
                continue;
            }
            slotted += 1;
            assert_eq!(answers.take(slot as usize).unwrap(), at, "event {at}'s slot {slot} answers it");
        }
        assert_eq!(slotted, answered);
    }

    #[tokio::test]
    async fn a_group_dropped_undelivered_answers_each_of_its_slots_with_an_error() {
        let mut events: Vec<Event> = (0..6).map(|n| reading(n % 2, n as i64)).collect();
        let routed = route(&mut events, 1, |_, _, problems| panic!("all valid: {problems}"));
        let mut groups = routed.shards.into_iter().flatten();
        let first = groups.next().expect("two groups");
        first.part.answer(first.commands.iter().map(|_| Ok(1)));
        drop(groups);
        let answers: Vec<bool> = routed.collector.wait().await.into_iter().map(|a| a.is_ok()).collect();
        assert_eq!(answers.iter().filter(|ok| **ok).count(), 3, "the group answered: {answers:?}");
        assert_eq!(answers.len(), 6);
    }
}
