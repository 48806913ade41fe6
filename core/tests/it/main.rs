//! Integration tests of `citytwin-core`: one binary, one module per area.

mod crash;
