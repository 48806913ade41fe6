//! `AssetMarkerPlugin`: at street zoom, one marker per asset in view, shaped by type and
//! coloured by status, merged into one mesh (100k markers stay one draw call).

use std::collections::HashMap;

use bevy::prelude::*;

use crate::cells::{MeshBuilder, Pacer, Shade, replace_mesh};
use crate::model::{AssetDatum, MarkerStatus, Projection, marker_shape};
use crate::twin_link::{LinkSet, TwinView, ViewSettings};

/// The markers' mesh entity.
#[derive(Component, Debug)]
pub struct AssetMarkers;

/// Draws the assets. See the module documentation.
#[derive(Debug, Default)]
pub struct AssetMarkerPlugin;

impl Plugin for AssetMarkerPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Startup, spawn_markers).add_systems(Update, rebuild_markers.after(LinkSet));
    }
}

fn spawn_markers(mut commands: Commands, mut materials: ResMut<Assets<StandardMaterial>>) {
    let material = StandardMaterial { perceptual_roughness: 0.6, cull_mode: None, ..default() };
    commands.spawn((AssetMarkers, MeshMaterial3d(materials.add(material)), Transform::default(), Visibility::Hidden));
}

/// Rebuilds the markers when the assets changed; shows them only at fine zoom.
pub fn rebuild_markers(
    mut commands: Commands,
    mut view: ResMut<TwinView>,
    settings: Res<ViewSettings>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut markers: Query<(Entity, Option<&Mesh3d>, &mut Visibility), With<AssetMarkers>>,
    mut pacer: Local<Pacer>,
) {
    let Ok((entity, old, mut visibility)) = markers.single_mut() else { return };
    let fine = settings.shows_assets();
    let wanted = if fine && old.is_some() { Visibility::Visible } else { Visibility::Hidden };
    if *visibility != wanted {
        *visibility = wanted;
    }
    if !view.assets_dirty || !pacer.ready() {
        return;
    }
    let Some(projection) = view.projection else { return };
    view.assets_dirty = false;
    let started = std::time::Instant::now();
    replace_mesh(&mut commands, &mut meshes, entity, old, marker_mesh(view.assets.values(), &projection), fine);
    pacer.built(started);
}

/// One mesh of every marker.
pub fn marker_mesh<'a>(assets: impl ExactSizeIterator<Item = &'a AssetDatum>, projection: &Projection) -> MeshBuilder {
    // A block: hub and four corners on top, four vertices per wall; twelve triangles.
    let mut mesh = MeshBuilder::with_capacity(assets.len() * 21, assets.len() * 36);
    // One colour conversion per status, not per marker.
    let mut shades: HashMap<MarkerStatus, Shade> = HashMap::new();
    for asset in assets {
        let (x, z) = projection.to_world(asset.lat, asset.lng);
        let (width, height) = marker_shape(&asset.asset_type);
        let shade = *shades.entry(asset.status).or_insert_with(|| Shade::of(asset.status.colour()));
        mesh.block(Vec2::new(x, z), width, height, shade);
    }
    mesh
}
