//! Wire types of citytwin's gRPC API (`citytwin-proto`).
//!
//! Generated at build time from `proto/citytwin/v1/*.proto` by `tonic-prost-build`, compiled
//! by `protox` (no system `protoc`), plus the conversions between the wire types and the
//! domain types of `citytwin-core` ([`convert`]).
//!
//! It is not: business logic. Domain types and actor messages are never wire types; they are
//! converted here, at the edge.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("citytwin.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("citytwin_descriptor");
}

pub mod convert;
