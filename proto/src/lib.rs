//! Wire types of citytwin's gRPC API (`citytwin-proto`).
//!
//! This crate will hold only code generated from `proto/citytwin/v1/*.proto` (with `tonic`
//! and `prost`, compiled by `protox` so no system `protoc` is needed) and the conversions
//! between those wire types and the domain types of `citytwin-core`.
//!
//! It is not: business logic. Domain types and actor messages are never wire types; they are
//! converted here, at the edge.
