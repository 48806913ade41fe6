//! `HudPlugin`: connection and clock panel (top left), legend with units (bottom left),
//! alerts and selection details (right), key help (bottom).

use bevy::prelude::*;

use crate::model::{MarkerStatus, RAMP, ramp};
use crate::twin_link::{Connection, TwinView, ViewSettings};

/// The status panel's text.
#[derive(Component, Debug)]
pub struct StatusText;

/// The side panel's text.
#[derive(Component, Debug)]
pub struct SidePanelText;

/// The legend's title, and its low and high labels.
#[derive(Component, Debug)]
pub enum LegendText {
    /// Metric and unit.
    Title,
    /// Lowest value on the map.
    Low,
    /// Highest value on the map.
    High,
}

/// The HUD's top-left panel position and size in logical pixels (the capture's sidecar
/// reports it, so a test knows where text must be).
pub const STATUS_PANEL: (f32, f32, f32, f32) = (10.0, 10.0, 330.0, 128.0);

/// Swatches in the legend's colour bar.
pub const LEGEND_STEPS: usize = 16;

const PANEL: Color = Color::srgba(0.04, 0.05, 0.08, 0.86);
const TEXT: Color = Color::srgb(0.92, 0.94, 0.97);

/// The heads-up display. See the module documentation.
#[derive(Debug, Default)]
pub struct HudPlugin;

impl Plugin for HudPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Startup, spawn_hud).add_systems(Update, (update_status, update_legend, update_side_panel));
    }
}

fn text(size: f32) -> (TextFont, TextColor) {
    (TextFont { font_size: size.into(), ..default() }, TextColor(TEXT))
}

fn spawn_hud(mut commands: Commands) {
    let (x, y, w, h) = STATUS_PANEL;
    commands
        .spawn((
            Node {
                position_type: PositionType::Absolute,
                left: Val::Px(x),
                top: Val::Px(y),
                width: Val::Px(w),
                height: Val::Px(h),
                padding: UiRect::all(Val::Px(8.0)),
                ..default()
            },
            BackgroundColor(PANEL),
        ))
        .with_children(|panel| {
            panel.spawn((StatusText, Text::new("citytwin: connecting..."), text(13.0)));
        });

    commands
        .spawn((
            Node {
                position_type: PositionType::Absolute,
                left: Val::Px(10.0),
                bottom: Val::Px(10.0),
                flex_direction: FlexDirection::Column,
                row_gap: Val::Px(4.0),
                padding: UiRect::all(Val::Px(8.0)),
                ..default()
            },
            BackgroundColor(PANEL),
        ))
        .with_children(|legend| {
            legend.spawn((LegendText::Title, Text::new(""), text(13.0)));
            legend.spawn(Node { flex_direction: FlexDirection::Row, ..default() }).with_children(|bar| {
                for i in 0..LEGEND_STEPS {
                    let [r, g, b] = ramp(i as f64 / (LEGEND_STEPS - 1) as f64);
                    bar.spawn((
                        Node { width: Val::Px(16.0), height: Val::Px(14.0), ..default() },
                        BackgroundColor(Color::srgb(r, g, b)),
                    ));
                }
            });
            legend
                .spawn(Node {
                    flex_direction: FlexDirection::Row,
                    justify_content: JustifyContent::SpaceBetween,
                    ..default()
                })
                .with_children(|labels| {
                    labels.spawn((LegendText::Low, Text::new(""), text(12.0)));
                    labels.spawn((LegendText::High, Text::new(""), text(12.0)));
                });
            legend
                .spawn(Node { flex_direction: FlexDirection::Row, column_gap: Val::Px(6.0), ..default() })
                .with_children(|row| {
                    for status in [
                        MarkerStatus::Online,
                        MarkerStatus::Offline,
                        MarkerStatus::Alerting,
                        MarkerStatus::Maintenance,
                        MarkerStatus::Inactive,
                    ] {
                        let [r, g, b] = status.colour();
                        row.spawn((
                            Node { width: Val::Px(10.0), height: Val::Px(10.0), ..default() },
                            BackgroundColor(Color::srgb(r, g, b)),
                        ));
                        row.spawn((Text::new(status.label()), text(11.0)));
                    }
                });
        });

    commands
        .spawn((
            Node {
                position_type: PositionType::Absolute,
                right: Val::Px(10.0),
                top: Val::Px(10.0),
                width: Val::Px(360.0),
                padding: UiRect::all(Val::Px(8.0)),
                ..default()
            },
            BackgroundColor(PANEL),
        ))
        .with_children(|panel| {
            panel.spawn((SidePanelText, Text::new("open alerts: none"), text(12.0)));
        });

    commands.spawn((
        Node { position_type: PositionType::Absolute, right: Val::Px(10.0), bottom: Val::Px(10.0), ..default() },
        Text::new("drag: orbit | right-drag: pan | wheel: zoom | M: metric | [ ]: detail | F: fit | click: details"),
        text(11.0),
    ));
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn clock(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The status panel's lines.
pub fn status_lines(view: &TwinView, settings: &ViewSettings, endpoint: &str) -> String {
    let connection = match &view.connection {
        Connection::Connecting => format!("connecting to {endpoint}..."),
        Connection::Connected => format!("connected to {endpoint}"),
        Connection::Lost(reason) => format!("reconnecting: {reason}"),
    };
    let twin_time = view.cells.until.map_or_else(|| "-".to_owned(), clock);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let zoom = settings.subscribed.map_or_else(|| "city".to_owned(), |v| format!("{:.1}", v.zoom));
    let resolution = view.cells.resolution.map_or_else(|| "-".to_owned(), |r| u8::from(r).to_string());
    let assets = view.inventory.as_ref().map_or(0, |(total, _)| *total);
    format!(
        "citytwin: {connection}\ntwin time  {twin_time}\nreal time  {}\nevents/s   {:.0}\nopen alerts {}  |  assets {assets}\ncells {}  |  res {resolution}  |  zoom {zoom}",
        clock(now),
        view.rate.per_second(),
        view.alerts.len(),
        view.cells.cells.len(),
    )
}

fn update_status(
    view: Res<TwinView>,
    settings: Res<ViewSettings>,
    endpoint: Option<Res<crate::Endpoint>>,
    mut texts: Query<&mut Text, With<StatusText>>,
) {
    let endpoint = endpoint.map_or_else(String::new, |e| e.0.clone());
    for mut text in &mut texts {
        let lines = status_lines(&view, &settings, &endpoint);
        if text.0 != lines {
            text.0 = lines;
        }
    }
}

/// Legend labels: metric and unit, and the value range on the map.
pub fn legend_labels(view: &TwinView, settings: &ViewSettings) -> (String, String, String) {
    let metric = settings.metric();
    let title = format!("{} ({}) | height and colour", metric.label, metric.unit);
    match view.cells.range() {
        Some((low, high)) => (title, format!("{low:.1}"), format!("{high:.1} {}", metric.unit)),
        None => (title, "no data".into(), String::new()),
    }
}

fn update_legend(view: Res<TwinView>, settings: Res<ViewSettings>, mut texts: Query<(&LegendText, &mut Text)>) {
    if !view.is_changed() && !settings.is_changed() {
        return;
    }
    let (title, low, high) = legend_labels(&view, &settings);
    for (which, mut text) in &mut texts {
        text.0 = match which {
            LegendText::Title => title.clone(),
            LegendText::Low => low.clone(),
            LegendText::High => high.clone(),
        };
    }
}

fn update_side_panel(view: Res<TwinView>, mut texts: Query<&mut Text, With<SidePanelText>>) {
    if !view.is_changed() {
        return;
    }
    // The alerts listed are the twin's open ones now, also while the map shows the past.
    let now = if view.history.is_some() { " now" } else { "" };
    let mut lines = vec![format!("open alerts{now}: {}", view.alerts.len())];
    for alert in view.alerts.iter().take(12) {
        let when = alert.time.map_or_else(String::new, |t| clock(t)[11..16].to_owned());
        let subject = if alert.asset_id.is_empty() {
            alert.cell.map_or_else(String::new, |c| c.to_string())
        } else {
            alert.asset_id.clone()
        };
        lines.push(format!("  {when} {} {} {subject}", alert.severity, alert.rule_id));
    }
    if !view.details.is_empty() {
        lines.push(String::new());
        lines.extend(view.details.iter().cloned());
    }
    let joined = lines.join("\n");
    for mut text in &mut texts {
        text.0.clone_from(&joined);
    }
}

/// The top of the legend, as 8-bit sRGB (what a screenshot shows for the hottest cell).
pub fn legend_top_rgb() -> [u8; 3] {
    RAMP[RAMP.len() - 1].map(|c| (c * 255.0).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_prints_utc() {
        assert_eq!(clock(1_767_225_600), "2026-01-01 00:00:00 UTC");
        assert_eq!(clock(951_782_400 + 3_723), "2000-02-29 01:02:03 UTC");
    }
}
