//! The per-container monitor and the protocol berthd speaks with it.

pub mod protocol;
