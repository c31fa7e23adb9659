//! Traffic capture (being written).
