//! bookinfo (being written).
