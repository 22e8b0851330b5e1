//! HTTP mapping (being written).
