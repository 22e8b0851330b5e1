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

/// The bytes of `word` that a JSON string holds only escaped (control
/// bytes, below 0x20; `"`; `\`) or that are past ASCII (0x80 and up).
///
/// Two subtractions, where [`below`] and [`equal`] would take a dozen
/// operations for the same set:
/// - XOR with 0x02 swaps `"` (0x22) with the space (0x20) and keeps the
///   control bytes below 0x20, so after it the bytes below 0x21 are the
///   control bytes and `"`: `- 0x21` sets their high bit (they wrap to
///   0xde and up), and keeps it on the bytes from 0xa1 (after the XOR).
/// - `(word ^ 0x5c) - 1` sets the high bit of `\` (zero wraps to 0xff),
///   and keeps it on the bytes from 0x81 after the XOR.
///
/// Every byte past ASCII is marked by one of the two (the XORs move bytes
/// only within 0x80..=0xff; the one the second misses, 0xdc, is 0xde after
/// the first), and printable ASCII other than `"` and `\` by neither (no
/// high bit, no borrow). A borrow starts only at a byte that is marked, so
/// the rules above hold.
#[inline]
pub(crate) fn json_special(word: u64) -> u64 {
    let control_or_quote = (word ^ (ONES * 0x02)).wrapping_sub(ONES * 0x21);
    let backslash = (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
    (control_or_quote | backslash) & HIGH
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special(b: u8) -> bool {
        !(0x20..0x80).contains(&b) || b == b'"' || b == b'\\'
    }

    /// `marks` against [`special`] byte by byte: the lowest mark is the
    /// first special byte, every special byte is marked, and only high
    /// bits are set.
    fn check(word: [u8; 8], marks: u64) {
        let first = word.iter().position(|&b| special(b));
        let lowest = (marks != 0).then(|| (marks.trailing_zeros() / 8) as usize);
        assert_eq!(lowest, first, "{word:02x?}");
        assert_eq!(marks & !HIGH, 0, "{word:02x?}");
        for (k, &b) in word.iter().enumerate() {
            if special(b) {
                assert_ne!(marks >> (8 * k + 7) & 1, 0, "byte {k} of {word:02x?}");
            }
        }
    }

    /// Every pair of byte values at every pair of neighbouring positions,
    /// among fillers that pass a borrow on in one subtraction or the other
    /// (0x20 and 0x21 after a control byte or `"`, `]` after `\`), that
    /// are special themselves, or neither.
    #[test]
    fn json_special_is_exact_at_every_byte_and_position() {
        for filler in [b'a', b' ', b'!', b']', b'"', b'\\', 0x7f, 0x00, 0xdc, 0xff] {
            for at in 0..7 {
                for lo in 0..=255u8 {
                    for hi in 0..=255u8 {
                        let mut w = [filler; 8];
                        w[at] = lo;
                        w[at + 1] = hi;
                        check(w, json_special(u64::from_le_bytes(w)));
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// Any word, weighted towards the bytes at the edges of the set.
        #[test]
        fn json_special_agrees_with_bytes(
            w in proptest::array::uniform8(proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(vec![
                    0x00, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7e, 0x7f, 0x80,
                    0xa0, 0xa2, 0xdc, 0xde, 0xff,
                ]),
            ]),
        ) {
            check(w, json_special(u64::from_le_bytes(w)));
        }
    }
}
