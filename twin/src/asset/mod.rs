//! Assets: the pure logic ([`logic`]), the actor that hosts it ([`actor`]) and the inbox its
//! shard batches commands into ([`inbox`]).

pub mod actor;
pub mod inbox;
pub mod logic;
