//! backstop facade (being written).
