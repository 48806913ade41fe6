//! Integration tests of `citytwin-twin`: one binary, one module per area.

mod cells;
mod read_models;
mod recovery;
mod saga;
mod twin;
