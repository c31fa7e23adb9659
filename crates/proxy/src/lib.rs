//! proxy (being written).

pub mod capture;
