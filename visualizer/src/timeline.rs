//! `TimeSliderPlugin`: scrub back through the twin's history. A slider along the bottom
//! spans the twin's oldest event to its live clock; clicking or dragging it, or `,` and `.`
//! (15 minutes; with Shift, 2 hours), shows the map as it was at that time: the link asks
//! the twin for a history frame (`Subscribe.Viewport` with `at`, read from its log). `L` (or
//! stepping past the end) goes back to live.

use bevy::prelude::*;
use bevy::ui::RelativeCursorPosition;

use crate::hud::clock;
use crate::twin_link::{Link, TwinView, ViewSettings};

/// The slider's track (clickable).
#[derive(Component, Debug)]
pub struct SliderTrack;

/// The part of the track up to the time shown.
#[derive(Component, Debug)]
pub struct SliderFill;

/// The slider's caption.
#[derive(Component, Debug)]
pub struct SliderText;

/// One key step, and one with Shift, in seconds.
pub const STEP_S: i64 = 15 * 60;
/// One key step with Shift, in seconds.
pub const BIG_STEP_S: i64 = 2 * 3600;

const LIVE: Color = Color::srgb(0.20, 0.85, 0.35);
const PAST: Color = Color::srgb(0.95, 0.65, 0.15);

/// The time slider. See the module documentation.
#[derive(Debug, Default)]
pub struct TimeSliderPlugin;

impl Plugin for TimeSliderPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Startup, spawn_slider)
            .add_systems(Update, ((slider_keys, slider_click).before(update_slider), update_slider));
    }
}

fn spawn_slider(mut commands: Commands) {
    commands
        .spawn((
            Node {
                position_type: PositionType::Absolute,
                left: Val::Px(330.0),
                right: Val::Px(10.0),
                bottom: Val::Px(30.0),
                flex_direction: FlexDirection::Column,
                row_gap: Val::Px(4.0),
                padding: UiRect::all(Val::Px(6.0)),
                ..default()
            },
            BackgroundColor(Color::srgba(0.04, 0.05, 0.08, 0.86)),
        ))
        .with_children(|panel| {
            panel.spawn((
                SliderText,
                Text::new("live"),
                TextFont { font_size: 12.0.into(), ..default() },
                TextColor(Color::srgb(0.92, 0.94, 0.97)),
            ));
            panel
                .spawn((
                    SliderTrack,
                    Node { width: Val::Percent(100.0), height: Val::Px(10.0), ..default() },
                    BackgroundColor(Color::srgb(0.22, 0.24, 0.30)),
                    Interaction::default(),
                    RelativeCursorPosition::default(),
                ))
                .with_children(|track| {
                    track.spawn((
                        SliderFill,
                        Node { width: Val::Percent(100.0), height: Val::Percent(100.0), ..default() },
                        BackgroundColor(LIVE),
                    ));
                });
        });
}

/// Sets the time shown and tells the link.
fn go_to(settings: &mut ViewSettings, at: Option<i64>, link: Option<&Link>) {
    if settings.at == at {
        return;
    }
    settings.at = at;
    if let Some(link) = link {
        link.0.view.send_replace(settings.request());
    }
}

/// `,` and `.` step back and forth (Shift: bigger steps); `L` goes live.
pub fn slider_keys(
    keys: Res<ButtonInput<KeyCode>>,
    view: Res<TwinView>,
    mut settings: ResMut<ViewSettings>,
    link: Option<Res<Link>>,
) {
    let shift = keys.any_pressed([KeyCode::ShiftLeft, KeyCode::ShiftRight]);
    let step = if shift { BIG_STEP_S } else { STEP_S };
    let at = if keys.just_pressed(KeyCode::KeyL) {
        None
    } else if keys.just_pressed(KeyCode::Comma) {
        view.timeline.step(settings.at, -step)
    } else if keys.just_pressed(KeyCode::Period) {
        view.timeline.step(settings.at, step)
    } else {
        return;
    };
    go_to(&mut settings, at, link.as_deref());
}

/// A press (or a drag) on the track moves the slider there.
fn slider_click(
    tracks: Query<(&Interaction, &RelativeCursorPosition), With<SliderTrack>>,
    view: Res<TwinView>,
    mut settings: ResMut<ViewSettings>,
    link: Option<Res<Link>>,
) {
    for (interaction, cursor) in &tracks {
        if *interaction != Interaction::Pressed {
            continue;
        }
        let Some(position) = cursor.normalized else { continue };
        // `normalized` runs from -0.5 (left edge) to 0.5 (right edge).
        let at = view.timeline.time_at(position.x + 0.5);
        if at.is_some() || view.timeline.live.is_some() {
            go_to(&mut settings, at, link.as_deref());
        }
    }
}

/// The slider's caption: live, or the time shown and how far back it is.
pub fn slider_caption(view: &TwinView, settings: &ViewSettings) -> String {
    let span = match (view.timeline.since, view.timeline.live) {
        (Some(since), Some(live)) => format!("  |  history {} .. {}", &clock(since)[..16], &clock(live)[..16]),
        _ => String::new(),
    };
    match settings.at {
        None => format!("LIVE{span}  |  , . step back/forth (Shift: 2 h)"),
        Some(at) => {
            let behind = view.timeline.live.map_or(0, |live| (live - at).max(0));
            let loading = if view.history == Some(at) { "" } else { " (loading)" };
            format!(
                "PAST {}{loading}, {}h{:02}m before live  |  last hour's readings  |  L: live",
                clock(at),
                behind / 3600,
                behind % 3600 / 60
            )
        }
    }
}

fn update_slider(
    view: Res<TwinView>,
    settings: Res<ViewSettings>,
    mut texts: Query<&mut Text, With<SliderText>>,
    mut fills: Query<(&mut Node, &mut BackgroundColor), With<SliderFill>>,
) {
    if !view.is_changed() && !settings.is_changed() {
        return;
    }
    let caption = slider_caption(&view, &settings);
    for mut text in &mut texts {
        if text.0 != caption {
            text.0.clone_from(&caption);
        }
    }
    let fraction = view.timeline.fraction(settings.at);
    for (mut node, mut colour) in &mut fills {
        node.width = Val::Percent(fraction * 100.0);
        colour.0 = if settings.at.is_some() { PAST } else { LIVE };
    }
}
