//! Byte tests eight at a time on a little-endian `u64` word, for the JSON
//! scanner ([`crate::json`]) and the log formatter ([`crate::logfmt`]).
//!
//! Each test sets the high bit of every byte it matches. A byte that does
//! not match can be marked only above one that does (a borrow runs upward),
//! so the lowest mark is exact and no matching byte goes unmarked: "any
//! mark" and "the first mark" are both exact answers.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` below `n` (for `n` up to 0x80).
#[inline]
pub(crate) fn below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH
}

/// The bytes of `word` equal to `b`.
#[inline]
pub(crate) fn equal(word: u64, b: u8) -> u64 {
    below(word ^ (ONES * u64::from(b)), 1)
}

/// The bytes of `word` past ASCII (0x80 and up).
#[inline]
pub(crate) fn non_ascii(word: u64) -> u64 {
    word & HIGH
}
