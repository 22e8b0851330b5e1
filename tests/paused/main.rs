//! In-process integration tests on paused time: the whole stack, across
//! crates, as a user composes it.
#![allow(clippy::clone_on_ref_ptr)] // tests clone `Arc`s of concrete types

mod composition;
mod context;
mod http_table;
