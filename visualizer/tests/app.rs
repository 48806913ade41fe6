//! The visualizer's systems in a minimal `App` (no window, no renderer): link events become
//! coloured, raised prisms and markers; the camera becomes the viewport subscription; keys
//! switch the metric and move the time slider.

use bevy::mesh::VertexAttributeValues;
use bevy::prelude::*;
use citytwin_visualizer::camera::OrbitCamera;
use citytwin_visualizer::cells::CellPrisms;
use citytwin_visualizer::link::{self, LinkEnds, LinkEvent, ViewRequest};
use citytwin_visualizer::markers::AssetMarkers;
use citytwin_visualizer::model::{AssetDatum, CellUpdate, MarkerStatus, RAMP, cell_at};
use citytwin_visualizer::twin_link::{Link, TwinView, ViewSettings};
use citytwin_visualizer::{AssetMarkerPlugin, CellMapPlugin, TimeSliderPlugin, TwinLinkPlugin};
use h3o::{CellIndex, Resolution};

fn app() -> (App, LinkEnds) {
    app_with(|_| {})
}

/// The app, with `more` added before its first update (so its startup systems run).
fn app_with(more: impl FnOnce(&mut App)) -> (App, LinkEnds) {
    let mut app = App::new();
    // Input resources without InputPlugin, whose systems would clear a press before Update.
    app.add_plugins((MinimalPlugins, AssetPlugin::default()))
        .init_resource::<ButtonInput<KeyCode>>()
        .init_resource::<ButtonInput<MouseButton>>()
        .init_asset::<Mesh>()
        .init_asset::<StandardMaterial>()
        .add_plugins((TwinLinkPlugin::default(), CellMapPlugin, AssetMarkerPlugin, TimeSliderPlugin));
    let (handles, ends) = link::channels(ViewSettings::default().request());
    app.insert_resource(Link(handles));
    more(&mut app);
    app.update();
    (app, ends)
}

fn cell(lat: f64, lng: f64) -> CellIndex {
    cell_at(lat, lng, Resolution::Seven).unwrap()
}

fn snapshot(cells: &[(CellIndex, f64)]) -> LinkEvent {
    frame(true, false, Some(1), cells)
}

/// A cell frame: a snapshot or a live change, or the map at `time` from the log (`history`).
fn frame(snapshot: bool, history: bool, time: Option<i64>, cells: &[(CellIndex, f64)]) -> LinkEvent {
    LinkEvent::Frame {
        resolution: Resolution::Seven,
        snapshot,
        history,
        span: (snapshot.then_some(1), None),
        until: time,
        cells: cells
            .iter()
            .map(|&(cell, mean)| CellUpdate {
                cell,
                events: u64::from(!snapshot),
                alerts: 0,
                mean: Some(mean),
                assets: 1,
                last_time: if history { Some(1) } else { time },
            })
            .collect(),
    }
}

fn mesh_of<M: Component>(app: &mut App) -> Mesh {
    let handle = app.world_mut().query_filtered::<&Mesh3d, With<M>>().single(app.world()).unwrap().0.clone();
    app.world().resource::<Assets<Mesh>>().get(&handle).unwrap().clone()
}

fn attribute(mesh: &Mesh, id: bevy::mesh::MeshVertexAttribute) -> Vec<[f32; 4]> {
    match mesh.attribute(id) {
        Some(VertexAttributeValues::Float32x3(values)) => values.iter().map(|v| [v[0], v[1], v[2], 0.0]).collect(),
        Some(VertexAttributeValues::Float32x4(values)) => values.clone(),
        other => panic!("unexpected attribute {other:?}"),
    }
}

fn linear(rgb: [f32; 3]) -> [f32; 4] {
    Color::srgb(rgb[0], rgb[1], rgb[2]).to_linear().to_f32_array()
}

#[test]
fn a_snapshot_becomes_prisms_whose_height_and_colour_follow_the_metric() {
    let (mut app, ends) = app();
    let (low, mid, hot) = (cell(60.17, 24.94), cell(60.20, 24.80), cell(60.25, 25.05));
    ends.events.try_send(snapshot(&[(low, 5.0), (mid, 20.0), (hot, 45.0)])).unwrap();
    app.update();

    let view = app.world().resource::<TwinView>();
    assert_eq!((view.snapshots, view.cells.cells.len()), (1, 3));
    assert_eq!(view.cells.hottest(), Some((hot, 45.0)));
    let mesh = mesh_of::<CellPrisms>(&mut app);
    let positions = attribute(&mesh, Mesh::ATTRIBUTE_POSITION);
    let colours = attribute(&mesh, Mesh::ATTRIBUTE_COLOR);
    assert_eq!(positions.len(), colours.len());
    let edge = Resolution::Seven.edge_length_m() as f32;
    let tallest = positions.iter().map(|p| p[1]).fold(0.0, f32::max);
    assert!((tallest - edge * 3.08).abs() < 1.0, "the hottest cell is the tallest: {tallest} vs edge {edge}");
    let normals = attribute(&mesh, Mesh::ATTRIBUTE_NORMAL);
    let top: Vec<[f32; 4]> = positions
        .iter()
        .zip(&normals)
        .zip(&colours)
        .filter(|((p, n), _)| (p[1] - tallest).abs() < 1e-3 && n[1] == 1.0)
        .map(|(_, c)| *c)
        .collect();
    assert!(!top.is_empty() && top.iter().all(|c| *c == linear(RAMP[4])), "its top has the legend's top colour");
    let lowest_top = linear(RAMP[0]);
    assert!(colours.contains(&lowest_top), "the coolest cell has the legend's bottom colour");

    // A live frame raises the coolest cell above the rest.
    let live = LinkEvent::Frame {
        resolution: Resolution::Seven,
        snapshot: false,
        history: false,
        span: (None, None),
        until: Some(2),
        cells: vec![CellUpdate { cell: low, events: 4, alerts: 1, mean: Some(90.0), assets: 0, last_time: Some(2) }],
    };
    ends.events.try_send(live).unwrap();
    app.update();
    let view = app.world().resource::<TwinView>();
    assert_eq!(view.cells.hottest(), Some((low, 90.0)));
    assert_eq!(view.cells.cells[&low].alerts, 1);
    assert_eq!(view.cells.until, Some(2));
}

#[test]
fn the_camera_becomes_the_viewport_subscription() {
    let (mut app, mut ends) = app();
    app.world_mut().spawn(OrbitCamera::default());
    ends.events.try_send(snapshot(&[(cell(60.17, 24.94), 5.0), (cell(60.25, 25.05), 9.0)])).unwrap();
    app.update();
    assert!(ends.view.has_changed().unwrap(), "the first snapshot subscribes to the camera's view");
    let city = ends.view.borrow_and_update().clone();
    let viewport = city.viewport.expect("a viewport");
    assert!(!viewport.fine(), "a city-wide camera gets cell aggregates: {viewport:?}");
    assert_eq!(city.metric, "pm25");

    // A small move keeps the subscription.
    app.world_mut().query::<&mut OrbitCamera>().single_mut(app.world_mut()).unwrap().focus.x += 100.0;
    app.update();
    assert!(!ends.view.has_changed().unwrap());

    // Zooming to a street renews it, for assets.
    app.world_mut().query::<&mut OrbitCamera>().single_mut(app.world_mut()).unwrap().distance = 300.0;
    app.update();
    let street = ends.view.borrow_and_update().clone().viewport.unwrap();
    assert!(street.fine(), "{street:?}");
    let (s, w, n, e) = street.bbox;
    let (cs, cw, cn, ce) = viewport.bbox;
    assert!(n - s < (cn - cs) / 10.0 && e - w < (ce - cw) / 10.0, "a street is a small part of the city");
}

#[test]
fn the_metric_key_switches_what_is_streamed() {
    let (mut app, mut ends) = app();
    app.world_mut().resource_mut::<ButtonInput<KeyCode>>().press(KeyCode::KeyM);
    app.update();
    let request: ViewRequest = ends.view.borrow_and_update().clone();
    assert_eq!(request.metric, "vehicle_count");
    assert_eq!(app.world().resource::<ViewSettings>().metric().unit, "vehicles");
}

#[test]
fn asset_markers_follow_status_changes() {
    let (mut app, ends) = app();
    app.world_mut().resource_mut::<ViewSettings>().subscribed =
        Some(citytwin_visualizer::model::Viewport { bbox: (60.0, 24.0, 61.0, 25.0), zoom: 16.0 });
    ends.events.try_send(snapshot(&[(cell(60.17, 24.94), 5.0)])).unwrap();
    let datum = |status| AssetDatum {
        asset_type: "air_quality_sensor".into(),
        lat: 60.1699,
        lng: 24.9384,
        status,
        last_values: Default::default(),
    };
    ends.events.try_send(LinkEvent::Assets(vec![("aq-1".into(), datum(MarkerStatus::Online))])).unwrap();
    app.update();
    let visible = *app.world_mut().query_filtered::<&Visibility, With<AssetMarkers>>().single(app.world()).unwrap();
    assert_eq!(visible, Visibility::Visible, "markers show at street zoom");
    let colours = attribute(&mesh_of::<AssetMarkers>(&mut app), Mesh::ATTRIBUTE_COLOR);
    assert_eq!(colours.len(), 1 + 4 + 16, "one block: hub, top corners, four walls");
    assert!(colours.contains(&linear(MarkerStatus::Online.colour())));

    let change = link::AssetChange {
        asset_id: "aq-1".into(),
        location: None,
        status: Some(MarkerStatus::Alerting),
        reading: Some(("pm25".into(), 80.0)),
        time: Some(5),
    };
    ends.events.try_send(LinkEvent::AssetEvent(change)).unwrap();
    app.update();
    let colours = attribute(&mesh_of::<AssetMarkers>(&mut app), Mesh::ATTRIBUTE_COLOR);
    assert!(colours.contains(&linear(MarkerStatus::Alerting.colour())), "an alert recolours the marker");
    assert_eq!(app.world().resource::<TwinView>().assets["aq-1"].last_values["pm25"], 80.0);
}

#[test]
fn scenario_roads_and_buildings_are_drawn_once_the_map_is_placed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("city.geojson");
    let road = r#"{"type":"Feature","properties":{"highway":"primary"},"geometry":{"type":"LineString","coordinates":[[24.94,60.17],[24.95,60.17],[24.95,60.18]]}}"#;
    let building = r#"{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[24.941,60.171],[24.942,60.171],[24.942,60.172],[24.941,60.171]]]}}"#;
    let point = r#"{"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":[24.9,60.1]}}"#;
    std::fs::write(&path, format!(r#"{{"type":"FeatureCollection","features":[{road},{building},{point}]}}"#)).unwrap();
    let geometry = citytwin_visualizer::geometry::Geometry::load(&path).unwrap();
    assert_eq!((geometry.roads.len(), geometry.buildings.len()), (1, 1), "the point is skipped");
    assert_eq!(geometry.roads[0].1, 16.0, "a primary road is wide");

    let (mut app, ends) = app_with(|app| {
        app.add_plugins(citytwin_visualizer::GeometryPlugin { geometry });
    });
    let mut unplaced = app.world_mut().query_filtered::<&Mesh3d, With<citytwin_visualizer::geometry::GeometryMesh>>();
    assert_eq!(unplaced.iter(app.world()).count(), 0, "nothing to place it by before the first snapshot");
    ends.events.try_send(snapshot(&[(cell(60.17, 24.94), 5.0)])).unwrap();
    app.update();
    let mesh = mesh_of::<citytwin_visualizer::geometry::GeometryMesh>(&mut app);
    let positions = attribute(&mesh, Mesh::ATTRIBUTE_POSITION);
    // Two road segments of 4 corners; a triangle building: hub, 3 corners, 3 walls of 4.
    assert_eq!(positions.len(), 2 * 4 + 1 + 3 + 3 * 4);
    let width = (positions[0][0] - positions[1][0]).hypot(positions[0][2] - positions[1][2]);
    assert!((width - 16.0).abs() < 0.01, "{width}");
}

#[test]
fn geometry_served_by_the_twin_is_drawn_when_no_local_file_is_given() {
    let road = r#"{"type":"Feature","properties":{"highway":"residential"},"geometry":{"type":"LineString","coordinates":[[24.94,60.17],[24.95,60.17]]}}"#;
    let served = citytwin_visualizer::geometry::Geometry::parse(&format!(
        r#"{{"type":"FeatureCollection","features":[{road}]}}"#
    ))
    .unwrap();
    assert!(citytwin_visualizer::geometry::Geometry::parse(r#"{"type":"Feature"}"#).is_err(), "not a collection");
    let (mut app, ends) = app_with(|app| {
        app.add_plugins(citytwin_visualizer::GeometryPlugin::default());
    });
    ends.events.try_send(snapshot(&[(cell(60.17, 24.94), 5.0)])).unwrap();
    app.update();
    let mut meshes = app.world_mut().query_filtered::<&Mesh3d, With<citytwin_visualizer::geometry::GeometryMesh>>();
    assert_eq!(meshes.iter(app.world()).count(), 0, "nothing to draw until the twin's geometry arrives");
    ends.events.try_send(LinkEvent::Geometry(served)).unwrap();
    app.update();
    let positions =
        attribute(&mesh_of::<citytwin_visualizer::geometry::GeometryMesh>(&mut app), Mesh::ATTRIBUTE_POSITION);
    assert_eq!(positions.len(), 4, "one road segment: one strip of 4 corners");
    let width = (positions[0][0] - positions[1][0]).hypot(positions[0][2] - positions[1][2]);
    assert!((width - 7.0).abs() < 0.01, "a residential road is 7 m wide: {width}");
}

#[test]
fn the_time_slider_asks_for_the_past_keeps_it_on_the_map_and_goes_back_live() {
    let (mut app, mut ends) = app();
    let (a, b) = (cell(60.17, 24.94), cell(60.20, 24.80));
    let live = 10_000;
    ends.events.try_send(frame(true, false, Some(live), &[(a, 5.0), (b, 20.0)])).unwrap();
    app.update();
    let value = |app: &App, cell| app.world().resource::<TwinView>().cells.cells[&cell].value;
    assert_eq!(app.world().resource::<TwinView>().timeline.live, Some(live));

    // `,` steps back 15 minutes from live; the link is asked for the map then.
    ends.view.borrow_and_update();
    app.world_mut().resource_mut::<ButtonInput<KeyCode>>().press(KeyCode::Comma);
    app.update();
    // No InputPlugin here: end the press by hand, as the next frame would.
    app.world_mut().resource_mut::<ButtonInput<KeyCode>>().reset_all();
    let then = live - 15 * 60;
    assert_eq!(ends.view.borrow_and_update().at, Some(then));
    assert!(!app.world().resource::<ViewSettings>().shows_assets(), "the past is cells only");

    // The history frame replaces the map; a late live frame of the old stream does not touch it.
    ends.events.try_send(frame(false, false, Some(live + 5), &[(a, 99.0)])).unwrap();
    ends.events.try_send(frame(true, true, Some(then), &[(a, 7.0), (b, 3.0)])).unwrap();
    ends.events.try_send(frame(false, false, Some(live + 10), &[(a, 500.0)])).unwrap();
    app.update();
    let view = app.world().resource::<TwinView>();
    assert_eq!((view.history, view.cells.until), (Some(then), Some(then)));
    assert_eq!((value(&app, a), value(&app, b)), (Some(7.0), Some(3.0)), "the map as it was");
    let caption = citytwin_visualizer::timeline::slider_caption(view, app.world().resource::<ViewSettings>());
    assert!(caption.starts_with("PAST 1970-01-01 02:31:40 UTC, 0h15m before live"), "{caption}");

    // `L` goes live: the request drops the time, and the next live snapshot takes over.
    app.world_mut().resource_mut::<ButtonInput<KeyCode>>().press(KeyCode::KeyL);
    app.update();
    assert_eq!(ends.view.borrow_and_update().at, None);
    ends.events.try_send(frame(true, false, Some(live + 20), &[(a, 42.0)])).unwrap();
    app.update();
    let view = app.world().resource::<TwinView>();
    assert_eq!((view.history, view.timeline.live), (None, Some(live + 20)));
    assert_eq!(value(&app, a), Some(42.0));
}
