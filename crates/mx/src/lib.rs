//! mx (being written).
