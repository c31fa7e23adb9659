//! proxy (being written).
