//! The 3D visualizer (`citytwin-visualizer`).
//!
//! This crate will hold a `bevy` application that shows a running twin live: H3 cells as
//! hexagonal prisms coloured and raised by a chosen metric, asset markers by status, alerts,
//! a HUD and viewport streaming. Each feature is a plugin (`CellMapPlugin`,
//! `AssetMarkerPlugin`, `HudPlugin`, `TwinLinkPlugin`).
//!
//! Invariant: it talks to a twin only through the gRPC client of `citytwin-proto`; it never
//! links `citytwin-twin`.
