//! Bounded admission queue for tower services: bounds the wait, not the call
