//! The live twin of a city (`citytwin-twin`).
//!
//! - [`asset::logic`]: one asset's pure `decide` / `apply` pair: lifecycle, metric statistics,
//!   thresholds, battery low, heartbeat-based offline detection.
//!
//! This crate grows into the actor system built on `ractor` and `tokio`: one supervised,
//! event-sourced `AssetActor` per physical asset (state rebuilt from its stream in the
//! `citytwin_core::log` event log, snapshots, time travel, passivation), one `CellActor` per
//! H3 cell running the `citytwin_core::cep` rules on its events, the in-process
//! publish-subscribe bus with per-type delivery classes, the dead-letter queue, CQRS read
//! models and the asset-commissioning saga.
//!
//! A key design decision: business logic stays in pure `decide` / `apply` functions; actors
//! only move messages, persist, publish and reply.
//!
//! It is not: a network server (that is `citytwin serve`, through `citytwin-proto`), nor a
//! distributed engine (scale-out goes through NATS JetStream).

pub mod asset;
pub mod bus;
pub mod cell;
pub mod city;
pub mod completion;
pub mod consumer;
pub mod deadletter;
pub mod delivery;
pub mod outbox;
pub mod read;
pub mod recovery;
pub mod rollup;
pub mod route;
pub mod saga;
pub mod shard;
pub mod snapshots;
pub mod writer;
