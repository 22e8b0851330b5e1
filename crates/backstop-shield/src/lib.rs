//! Completion hooks that run even when the caller drops the future
