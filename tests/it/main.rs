//! The workspace's integration tests: one binary, one module per area.

mod cli;
mod crate_edges;
mod serve;
