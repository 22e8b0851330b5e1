//! In-process integration tests on paused time.
