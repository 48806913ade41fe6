//! The scenario simulator (`citytwin-simulator`).
//!
//! This crate will turn a scenario file (city area, asset populations, metric distributions
//! with diurnal and weekly profiles, fault and incident processes, what-if interventions)
//! into a deterministic stream of `citytwin_core::event::Event`s, seeded so that the same
//! scenario and seed always produce the byte-identical stream, whatever the thread count.
//!
//! A key design decision: the simulator drives a twin only through a narrow ingest
//! interface; it never reaches into actor internals.
