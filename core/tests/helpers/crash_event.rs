//! The event the crash helper appends as `seq` of `stream`, shared with the crash test so
//! that it can check every recovered record is intact.

use citytwin_core::event::{Event, MetricRecorded, Timestamp, Unit};

pub(crate) fn expected_event(stream: &str, seq: u64) -> Event {
    Event::new(
        format!("{stream}-{seq}"),
        format!("/crash/{stream}"),
        MetricRecorded {
            asset_id: stream.into(),
            metric_type: "pm25".into(),
            value: seq as f64,
            unit: Unit::from("ug/m3"),
            location: None,
        },
    )
    .with_time(Timestamp::from_secs(1_700_000_000 + seq as i64))
}
