//! Assets: the pure logic ([`logic`]) and the actor that hosts it ([`actor`]).

pub mod actor;
pub mod logic;
