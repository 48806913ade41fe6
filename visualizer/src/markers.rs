//! `AssetMarkerPlugin`: at street zoom, one marker per asset in view, shaped by type and
//! coloured by status, merged into one mesh (100k markers stay one draw call).

use bevy::prelude::*;

use crate::cells::{MeshBuilder, replace_mesh};
use crate::model::{AssetDatum, Projection, marker_shape};
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
) {
    let Ok((entity, old, mut visibility)) = markers.single_mut() else { return };
    let fine = settings.shows_assets();
    let wanted = if fine && old.is_some() { Visibility::Visible } else { Visibility::Hidden };
    if *visibility != wanted {
        *visibility = wanted;
    }
    if !view.assets_dirty {
        return;
    }
    let Some(projection) = view.projection else { return };
    view.assets_dirty = false;
    replace_mesh(&mut commands, &mut meshes, entity, old, marker_mesh(view.assets.values(), &projection), fine);
}

/// One mesh of every marker.
pub fn marker_mesh<'a>(assets: impl IntoIterator<Item = &'a AssetDatum>, projection: &Projection) -> MeshBuilder {
    let mut mesh = MeshBuilder::default();
    for asset in assets {
        let (x, z) = projection.to_world(asset.lat, asset.lng);
        let (width, height) = marker_shape(&asset.asset_type);
        mesh.block(Vec2::new(x, z), width, height, asset.status.colour());
    }
    mesh
}
