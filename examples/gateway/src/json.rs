//! The few JSON fields the gateway reads, without building a document.
//!
//! A request body is checked to be one JSON object and only
//! `max_completion_tokens` and `max_tokens` are kept; a response body yields
//! only `usage.total_tokens`. Every other value is skipped by the parser
//! (`IgnoredAny`), so nothing is allocated for the message text. The rules are
//! those of `serde_json::Value` lookups: a field counts when it is a
//! non-negative integer, and the last of duplicate keys wins.
//!
//! A body of plain JSON (ASCII strings without escapes, numbers without
//! exponents, modest nesting: what vendors and clients send) is read
//! first by a one-pass scanner at a fraction of serde_json's cost (see
//! `plain`); anything else, and anything it cannot judge exactly, goes to
//! serde_json as before.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

/// The fields of a request body the token estimate reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFields {
    /// `max_completion_tokens`, when a non-negative integer.
    pub max_completion_tokens: Option<u64>,
    /// `max_tokens`, when a non-negative integer.
    pub max_tokens: Option<u64>,
}

impl RequestFields {
    /// The completion budget the request asks for, if any:
    /// `max_completion_tokens`, else `max_tokens`.
    pub fn completion(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// Parses a request body that must be one JSON object; `None` when it is
/// not (malformed, another JSON type, or trailing bytes).
pub fn request_fields(body: &[u8]) -> Option<RequestFields> {
    plain::request_fields(body).or_else(|| request_fields_serde(body))
}

fn request_fields_serde(body: &[u8]) -> Option<RequestFields> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let fields = de.deserialize_map(RequestVisitor).ok()?;
    de.end().ok()?;
    Some(fields)
}

/// `usage.total_tokens` of a JSON document, when it is a non-negative
/// integer.
pub fn usage_total_tokens(body: &[u8]) -> Option<u64> {
    plain::usage_total_tokens(body).unwrap_or_else(|| usage_total_tokens_serde(body))
}

fn usage_total_tokens_serde(body: &[u8]) -> Option<u64> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let total = de.deserialize_map(UsageVisitor).ok()?;
    de.end().ok()?;
    total
}

/// The plain JSON almost every body is, read in one pass.
///
/// serde_json spends about 20 instructions per byte on a 276-byte chat
/// response (each key parsed and checked as UTF-8, each value skipped
/// through its visitor machinery): 5,500 per request, the largest single
/// cost of the gateway's own. This scanner reads only what it can judge
/// exactly, and gives up (`None`) on anything else, which then goes to
/// serde_json: a string with an escape, a control character or a byte past
/// ASCII, a number with an exponent, a field value that is not a plain
/// digit run, nesting past [`MAX_DEPTH`], or any syntax error. When it
/// answers, it has checked the whole body is one JSON object as serde_json
/// does (tests compare both over the same inputs).
///
/// The body's object, and an object value a field is read from (`usage`),
/// are read member by member ([`object`]); any other value is checked and
/// skipped, a container by one loop that keeps the open containers as the
/// bits of a word ([`container`]), a string eight bytes at a time
/// ([`crate::swar::json_special`]). About 7 instructions per byte: 1,760
/// for the 250-byte response of `tests::bench_usage_total_tokens`, 710 for
/// the request of `tests::bench_request_fields` (callgrind).
mod plain {
    /// Deeper nesting goes to serde_json (whose own limit is 128). At most
    /// 63, so that [`container`]'s open containers fit a `u64` with its
    /// sentinel bit.
    pub(super) const MAX_DEPTH: u32 = 63;

    /// The bytes of `word` (little-endian) a plain string stops at: `"`,
    /// `\`, a control byte or a byte past ASCII, each as its high bit; the
    /// lowest is exact (see [`crate::swar`]).
    #[inline]
    pub(super) fn to_judge(word: u64) -> u64 {
        crate::swar::json_special(word)
    }

    /// How a member's value is read.
    enum Read<'f> {
        /// Checked and skipped.
        Skip,
        /// As a count, into the field.
        Count(&'f mut Option<u64>),
        /// When an object, its members given to the [`Fields`] too.
        Object,
    }

    /// The fields a document is read for.
    trait Fields {
        /// How to read the value of `key`, a member of the body's object
        /// (`depth` 0) or of an object value [`Read::Object`] asked for
        /// (`depth` 1). Called for every member in order, so the last of
        /// duplicate keys wins.
        fn field(&mut self, depth: u32, key: &[u8]) -> Read<'_>;
    }

    /// Members of the body's object only: it asks for no object, so
    /// `depth` is always 0.
    impl Fields for super::RequestFields {
        fn field(&mut self, _: u32, key: &[u8]) -> Read<'_> {
            if key == b"max_tokens" {
                Read::Count(&mut self.max_tokens)
            } else if key == b"max_completion_tokens" {
                Read::Count(&mut self.max_completion_tokens)
            } else {
                Read::Skip
            }
        }
    }

    /// `usage.total_tokens`, as [`super::UsageVisitor`] reads it: each
    /// `usage` member starts over (`None` unless its value is an object
    /// with the field).
    struct Usage(Option<u64>);

    impl Fields for Usage {
        fn field(&mut self, depth: u32, key: &[u8]) -> Read<'_> {
            if depth == 0 && key == b"usage" {
                self.0 = None;
                Read::Object
            } else if depth == 1 && key == b"total_tokens" {
                Read::Count(&mut self.0)
            } else {
                Read::Skip
            }
        }
    }

    /// [`super::request_fields`], or `None` to ask serde_json.
    pub(super) fn request_fields(b: &[u8]) -> Option<super::RequestFields> {
        let mut out = super::RequestFields::default();
        document(b, &mut out)?;
        Some(out)
    }

    /// [`super::usage_total_tokens`], or `None` to ask serde_json.
    #[allow(clippy::option_option)]
    pub(super) fn usage_total_tokens(b: &[u8]) -> Option<Option<u64>> {
        let mut usage = Usage(None);
        document(b, &mut usage)?;
        Some(usage.0)
    }

    /// Checks `b` is one JSON object (and whitespace), reading it for
    /// `fields`.
    fn document(b: &[u8], fields: &mut impl Fields) -> Option<()> {
        let mut i = 0;
        if token(b, &mut i)? != b'{' {
            return None;
        }
        i = object(b, i, fields)?;
        token(b, &mut i).is_none().then_some(())
    }

    /// Reads the body's object at `i` (its `{`) for `fields`: the index
    /// past it.
    ///
    /// The members of an object value [`Read::Object`] asks for are read
    /// by the same loop, a level down (`depth`), rather than by a call.
    fn object(b: &[u8], mut i: usize, fields: &mut impl Fields) -> Option<usize> {
        let mut depth = 0;
        i += 1;
        let mut c = token(b, &mut i)?;
        // Whether the object has just opened (where `}` may come first).
        let mut opened = true;
        loop {
            // `c` is the byte at `i`: a key's `"`, or the `}` of an object
            // just opened.
            if opened && c == b'}' {
                i += 1;
            } else {
                if c != b'"' {
                    return None;
                }
                let (end, mut tail) = string_end(b, i)?;
                let key = b.get(i + 1..end)?;
                i = end + 1;
                if next(b, &mut i, &mut tail)? != b':' {
                    return None;
                }
                i += 1;
                tail >>= 8;
                c = next(b, &mut i, &mut tail)?;
                match fields.field(depth, key) {
                    Read::Count(field) => {
                        let after;
                        (*field, after) = count(b, i, c)?;
                        i = if field.is_some() {
                            after
                        } else {
                            value(b, i, c, depth + 1)?
                        };
                    }
                    Read::Object if c == b'{' => {
                        if depth + 1 >= MAX_DEPTH {
                            return None;
                        }
                        depth += 1;
                        i += 1;
                        c = token(b, &mut i)?;
                        opened = true;
                        continue;
                    }
                    _ => i = value(b, i, c, depth + 1)?,
                }
                match token(b, &mut i)? {
                    b',' => {
                        i += 1;
                        c = token(b, &mut i)?;
                        opened = false;
                        continue;
                    }
                    b'}' => i += 1,
                    _ => return None,
                }
            }
            // An object has closed: the body's, or a member's value.
            loop {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
                match token(b, &mut i)? {
                    b',' => {
                        i += 1;
                        c = token(b, &mut i)?;
                        opened = false;
                        break;
                    }
                    b'}' => i += 1,
                    _ => return None,
                }
            }
        }
    }

    /// Skips the value at `i`, whose first byte is `c` (`depth`
    /// containers around it): the index past it.
    // Always: called from two places, it is otherwise left out of line,
    // which costs about 200 instructions a response (measured).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn value(b: &[u8], i: usize, c: u8, depth: u32) -> Option<usize> {
        match c {
            b'"' => Some(string_end(b, i)?.0 + 1),
            b'{' | b'[' => container(b, i, depth),
            b'-' | b'0'..=b'9' => number(b, i, c),
            _ => literal(b, i),
        }
    }

    /// Skips the object or array at `i` (`depth` containers around it):
    /// the index past it.
    ///
    /// One loop rather than a call per value and per level of nesting: the
    /// open containers (this one, and those in it) are a stack of bits, the
    /// innermost lowest (set for an object), above a sentinel bit, so
    /// `stack == 1` once this one has closed. Out of line, with little
    /// else live, the compiler keeps the loop's state and the word
    /// constants in registers (measured: in one loop with [`object`]'s
    /// work, they spill).
    #[inline(never)]
    fn container(b: &[u8], mut i: usize, depth: u32) -> Option<usize> {
        // `stack` may hold this many containers before the next one is one
        // too deep.
        let room = MAX_DEPTH.checked_sub(depth)?;
        let mut stack = 1u64;
        let mut c = *b.get(i)?;
        // Whether a key comes next (after `{` or a `,` in an object).
        let mut at_key = false;
        loop {
            // `c` is the byte at `i`: a value's first, or a key's `"` when
            // `at_key`.
            if c == b'"' {
                i = string_end(b, i)?.0 + 1;
                if at_key {
                    at_key = false;
                    if token(b, &mut i)? != b':' {
                        return None;
                    }
                    i += 1;
                    c = token(b, &mut i)?;
                    continue;
                }
            } else if at_key {
                return None;
            } else if c == b'{' || c == b'[' {
                if stack >> room != 0 {
                    return None;
                }
                i += 1;
                let object = c == b'{';
                let close = if object { b'}' } else { b']' };
                c = token(b, &mut i)?;
                if c != close {
                    stack = stack << 1 | u64::from(object);
                    at_key = object;
                    continue;
                }
                // Empty: a whole value.
                i += 1;
            } else if c.is_ascii_digit() || c == b'-' {
                i = number(b, i, c)?;
            } else {
                i = literal(b, i)?;
            }
            // After a value: close the containers that end here, then on
            // to the next value (or key, in an object).
            loop {
                if stack == 1 {
                    return Some(i);
                }
                let in_object = stack & 1 != 0;
                let sep = token(b, &mut i)?;
                i += 1;
                if sep == b',' {
                    at_key = in_object;
                    c = token(b, &mut i)?;
                    break;
                }
                if sep != if in_object { b'}' } else { b']' } {
                    return None;
                }
                stack >>= 1;
            }
        }
    }

    /// [`token`], from `tail` when it holds the byte at `i` (in its lowest
    /// byte, and the bytes after it above; zero where unknown): the bytes
    /// after a key, from the word [`string_end`] found its end in, so the
    /// `:` and the value's first byte are most often read without a load
    /// or a bounds check. Whitespace (or zero) there is read the long way,
    /// and `tail` is then emptied.
    ///
    /// Only [`object`] reads this way: in [`container`]'s loop, measured,
    /// it costs more than it saves (the compiler then no longer knows `i`
    /// is within the body, and checks each word of the next string twice).
    #[inline]
    fn next(b: &[u8], i: &mut usize, tail: &mut u64) -> Option<u8> {
        let c = *tail as u8;
        if c > b' ' {
            return Some(c);
        }
        *tail = 0;
        token(b, i)
    }

    /// The byte at `i` or after it that is not whitespace, left unread (`i`
    /// moves past the whitespace); `None` at the end.
    #[inline]
    fn token(b: &[u8], i: &mut usize) -> Option<u8> {
        let c = *b.get(*i)?;
        // Every token starts above b' ': one test for the usual case of no
        // whitespace.
        if c > b' ' {
            return Some(c);
        }
        *i = after_whitespace(b, *i);
        b.get(*i).copied()
    }

    /// The index of the first byte at `i` or after it that is not
    /// whitespace. Out of line: inlined, its test for the four bytes holds
    /// a register in the loops, which need them all for the word tests.
    #[inline(never)]
    fn after_whitespace(b: &[u8], mut i: usize) -> usize {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
            i += 1;
        }
        // Any other control byte is left for the caller to reject.
        i
    }

    /// Where a string of ASCII without escapes or control bytes that starts
    /// at `i` (its `"`) ends: the index of its closing `"`, and the bytes
    /// after it that the last word read held (a `tail` for [`next`]).
    /// `None` for any other string.
    #[inline]
    fn string_end(b: &[u8], mut i: usize) -> Option<(usize, u64)> {
        i += 1;
        // Eight bytes at a time: the first byte to judge ends the string
        // if it is a `"`, else the scanner gives up.
        while let Some(chunk) = b.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().ok()?);
            let marks = to_judge(word);
            if marks != 0 {
                let at = marks.trailing_zeros() / 8;
                // That byte, from the word rather than the body: no bounds
                // check.
                let from_end = word >> (at * 8);
                if from_end as u8 != b'"' {
                    return None;
                }
                return Some((i + at as usize, from_end >> 8));
            }
            i += 8;
        }
        // The last few bytes of the body, one at a time.
        loop {
            match *b.get(i)? {
                b'"' => return Some((i, 0)),
                b'\\' => return None,
                0x20..=0x7f => i += 1,
                _ => return None,
            }
        }
    }

    /// The index past a run of digits at `i`.
    fn digits(b: &[u8], mut i: usize) -> usize {
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        i
    }

    /// The index past a number without an exponent at `i`, whose first
    /// byte is `c`.
    #[inline]
    fn number(b: &[u8], mut i: usize, mut c: u8) -> Option<usize> {
        if c == b'-' {
            i += 1;
            c = *b.get(i)?;
        }
        // The integer part: `0`, or a run of digits that starts with 1-9.
        i = match c {
            b'0' => i + 1,
            b'1'..=b'9' => digits(b, i + 1),
            _ => return None,
        };
        let mut next = b.get(i);
        if next == Some(&b'.') {
            let end = digits(b, i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
            next = b.get(i);
        }
        // An exponent is left to serde_json; a digit here follows a `0`.
        match next {
            Some(b'e' | b'E' | b'0'..=b'9') => None,
            _ => Some(i),
        }
    }

    /// The index past `true`, `false` or `null` at `i`.
    #[inline]
    fn literal(b: &[u8], i: usize) -> Option<usize> {
        let rest = b.get(i..)?;
        [&b"true"[..], b"false", b"null"]
            .into_iter()
            .find(|word| rest.starts_with(word))
            .map(|word| i + word.len())
    }

    /// A field's value read as a count, at `i`, whose first byte is `c`:
    /// `Some(n)` for a run of digits (a `u64`) and the index past it,
    /// `None` and `i` for anything but a number (read as any other value);
    /// any other number (negative, fraction, exponent, 20 digits or more)
    /// gives up (`None`).
    #[inline]
    fn count(b: &[u8], i: usize, c: u8) -> Option<(Option<u64>, usize)> {
        match c {
            b'0'..=b'9' => {
                // Summed as read: 19 digits fit a `u64`, and more give up.
                let mut n = u64::from(c - b'0');
                let mut end = i + 1;
                while let Some(&d @ b'0'..=b'9') = b.get(end) {
                    n = n.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                    end += 1;
                }
                let len = end - i;
                if len > 19 || (len > 1 && c == b'0') {
                    return None;
                }
                if let Some(b'.' | b'e' | b'E') = b.get(end) {
                    return None;
                }
                Some((Some(n), end))
            }
            b'-' => None,
            _ => Some((None, i)),
        }
    }
}

/// A value that is a `u64` when it is a non-negative integer and `None` for
/// anything else (which is skipped, not an error).
struct LenientU64(Option<u64>);

impl<'de> de::Deserialize<'de> for LenientU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientU64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E>(self, v: u64) -> Result<LenientU64, E> {
                Ok(LenientU64(Some(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<LenientU64, E> {
                Ok(LenientU64(u64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<LenientU64, E> {
                Ok(LenientU64(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<LenientU64, E> {
                Ok(LenientU64(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<LenientU64, E> {
                Ok(LenientU64(None))
            }
            fn visit_unit<E>(self) -> Result<LenientU64, E> {
                Ok(LenientU64(None))
            }
            fn visit_none<E>(self) -> Result<LenientU64, E> {
                Ok(LenientU64(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<LenientU64, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<LenientU64, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientU64(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<LenientU64, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientU64(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// An object key, matched against the few names the gateway reads without
/// allocating (escaped keys arrive unescaped in a scratch buffer).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    MaxCompletionTokens,
    MaxTokens,
    Usage,
    TotalTokens,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "max_completion_tokens" => Key::MaxCompletionTokens,
                    "max_tokens" => Key::MaxTokens,
                    "usage" => Key::Usage,
                    "total_tokens" => Key::TotalTokens,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = RequestFields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestFields, A::Error> {
        let mut out = RequestFields::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::MaxCompletionTokens => {
                    out.max_completion_tokens = map.next_value::<LenientU64>()?.0;
                }
                Key::MaxTokens => out.max_tokens = map.next_value::<LenientU64>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

struct UsageVisitor;

impl<'de> Visitor<'de> for UsageVisitor {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        let mut total = None;
        while let Some(key) = map.next_key::<Key>()? {
            if key == Key::Usage {
                total = map.next_value::<Usage>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(total)
    }
}

/// The `usage` value: its `total_tokens` when it is an object.
struct Usage(Option<u64>);

impl<'de> de::Deserialize<'de> for Usage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Usage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Usage, A::Error> {
                let mut total = None;
                while let Some(key) = map.next_key::<Key>()? {
                    if key == Key::TotalTokens {
                        total = map.next_value::<LenientU64>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Usage(total))
            }
            // Anything else is "no usage", not an error.
            fn visit_u64<E>(self, _: u64) -> Result<Usage, E> {
                Ok(Usage(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Usage, E> {
                Ok(Usage(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Usage, E> {
                Ok(Usage(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Usage, E> {
                Ok(Usage(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Usage, E> {
                Ok(Usage(None))
            }
            fn visit_unit<E>(self) -> Result<Usage, E> {
                Ok(Usage(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Usage, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Usage(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What the old `serde_json::Value` lookups answered.
    fn by_value(body: &[u8]) -> Option<(Option<u64>, Option<u64>)> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Some((
                m.get("max_completion_tokens").and_then(Value::as_u64),
                m.get("max_tokens").and_then(Value::as_u64),
            )),
            _ => None,
        }
    }

    fn usage_by_value(body: &[u8]) -> Option<u64> {
        let v: Value = serde_json::from_slice(body).ok()?;
        v.get("usage")?.get("total_tokens")?.as_u64()
    }

    const CASES: &[&str] = &[
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"max_tokens": 10, "max_completion_tokens": 20}"#,
        r#"{"max_tokens": 10}"#,
        r#"{"max_tokens": -1}"#,
        r#"{"max_tokens": 1.5}"#,
        r#"{"max_tokens": "10"}"#,
        r#"{"max_tokens": null, "max_completion_tokens": [1]}"#,
        r#"{"max_tokens": 5, "max_tokens": 7}"#,
        r#"{"max_tok\u0065ns": 9}"#,
        r#"{"max_tokens": 18446744073709551615}"#,
        r#"{"max_tokens": {"a": 1}}"#,
        "{}",
        "[]",
        r#"[{"max_tokens": 1}]"#,
        r#""text""#,
        "12",
        "null",
        r#"{"a":1} x"#,
        r#"{"a":1}  "#,
        r#"{"a":"#,
        r#"{"a":1,}"#,
        "",
        "\u{feff}{}",
        r#"{"usage": {"total_tokens": 42, "prompt_tokens": 2}}"#,
        r#"{"usage": {"total_tokens": -42}}"#,
        r#"{"usage": 3}"#,
        r#"{"usage": [1]}"#,
        r#"{"usage": null}"#,
        r#"{"usage": {"total_tokens": 1}, "usage": {"x": 1}}"#,
        r#"{"id":"c","choices":[{"message":{"content":"x"}}],"usage":{"total_tokens":9}}"#,
    ];

    #[test]
    fn agrees_with_value_lookups() {
        for case in CASES {
            let b = case.as_bytes();
            assert_eq!(
                request_fields(b).map(|f| (f.max_completion_tokens, f.max_tokens)),
                by_value(b),
                "request {case}"
            );
            assert_eq!(usage_total_tokens(b), usage_by_value(b), "usage {case}");
        }
    }

    #[test]
    fn completion_prefers_max_completion_tokens() {
        let f = request_fields(br#"{"max_tokens": 10, "max_completion_tokens": 20}"#).unwrap();
        assert_eq!(f.completion(), Some(20));
        let f = request_fields(br#"{"max_tokens": 10}"#).unwrap();
        assert_eq!(f.completion(), Some(10));
        assert_eq!(request_fields(b"{}").unwrap().completion(), None);
    }

    /// Where the plain scanner answers, it answers as serde_json does.
    fn plain_agrees(b: &[u8]) {
        if let Some(fields) = plain::request_fields(b) {
            assert_eq!(Some(fields), request_fields_serde(b), "request {b:?}");
        }
        if let Some(total) = plain::usage_total_tokens(b) {
            assert_eq!(total, usage_total_tokens_serde(b), "usage {b:?}");
        }
    }

    /// Bodies the plain scanner must answer itself, and what it answers.
    #[test]
    fn plain_answers_the_usual_bodies() {
        let response = br#"{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"word0 word1 word2 word3 word4 word5 word6 word7","role":"assistant"}}],"created":0,"id":"sim-0","model":"sim-1","object":"chat.completion","usage":{"completion_tokens":8,"prompt_tokens":16,"total_tokens":24}}"#;
        assert_eq!(plain::usage_total_tokens(response), Some(Some(24)));
        let pretty = b" {\n  \"usage\": { \"total_tokens\" : 7 },\n  \"x\": [1, -2.5, true, null, {}, []]\n}\r\n";
        assert_eq!(plain::usage_total_tokens(pretty), Some(Some(7)));
        let request =
            br#"{"model":"sim-1","messages":[{"role":"user","content":"hello"}],"max_tokens":5}"#;
        assert_eq!(
            plain::request_fields(request),
            Some(RequestFields {
                max_completion_tokens: None,
                max_tokens: Some(5)
            })
        );
        for case in CASES {
            plain_agrees(case.as_bytes());
        }
        // What it leaves to serde_json.
        for hard in [
            &br#"{"a":"\u00e9"}"#[..],
            "{\"a\":\"é\"}".as_bytes(),
            br#"{"a":1e3}"#,
            br#"{"usage":{"total_tokens":2.0}}"#,
            br#"{"usage":{"total_tokens":-0}}"#,
            b"{\"a\":\"\x01\"}",
            b"\xef\xbb\xbf{}",
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
        ] {
            assert_eq!(plain::usage_total_tokens(hard), None, "{hard:?}");
            plain_agrees(hard);
        }
        // Twenty digits: serde_json's to judge (u64::MAX, or a float past it).
        let max = br#"{"max_tokens":18446744073709551615}"#;
        assert_eq!(plain::request_fields(max), None);
        assert_eq!(request_fields(max).unwrap().max_tokens, Some(u64::MAX));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(70), "]".repeat(70));
        assert_eq!(plain::usage_total_tokens(deep.as_bytes()), None);
        assert_eq!(usage_total_tokens(deep.as_bytes()), None);
        assert!(request_fields(deep.as_bytes()).is_some());
    }

    /// The word test finds the first byte that needs judging, at every
    /// offset, whatever follows it.
    #[test]
    fn to_judge_finds_the_first_byte_to_judge() {
        assert_eq!(plain::to_judge(u64::from_le_bytes(*b"abcdefgh")), 0);
        // DEL (0x7f) is plain: JSON strings may hold it as it is.
        let judged = |b: u8| !(0x20..0x80).contains(&b) || b == b'"' || b == b'\\';
        for at in 0..8 {
            for byte in 0..=255u8 {
                for after in [b'a', b'"', 0x00, 0x1f, 0x20, 0x7f, 0xff] {
                    let mut w = *b"abcdefgh";
                    w[at] = byte;
                    if at < 7 {
                        w[at + 1] = after;
                    }
                    let first = w.iter().position(|&b| judged(b));
                    let marks = plain::to_judge(u64::from_le_bytes(w));
                    let found = (marks != 0).then(|| (marks.trailing_zeros() / 8) as usize);
                    assert_eq!(found, first, "{w:?}");
                }
            }
        }
    }

    /// Strings that end at every offset of the scanner's eight-byte words,
    /// and in the last few bytes of the body (read one at a time), with
    /// and without whitespace around the `:` after a key.
    #[test]
    fn plain_answers_strings_of_every_length_anywhere() {
        for n in 0..20 {
            let text = "x".repeat(n);
            for body in [
                format!(r#"{{"{text}":"{text}","usage":{{"total_tokens":{n}}}}}"#),
                format!(r#"{{"usage":{{"total_tokens":{n}}},"{text}":"{text}"}}"#),
                format!(r#"{{"usage":{{"{text}":"{text}","total_tokens":{n}}}}}"#),
                format!("{{\"usage\" : {{\"{text}\"\t:\"{text}\" , \"total_tokens\":\n{n}}}}}\n"),
                format!(
                    "{{\"{text}\":[\"{text}\",{{\"{text}\":\"\x7f{text}\"}}],\"usage\":{{\"total_tokens\":{n}}}}}"
                ),
            ] {
                let b = body.as_bytes();
                assert_eq!(plain::usage_total_tokens(b), Some(Some(n as u64)), "{body}");
                plain_agrees(b);
                assert_eq!(usage_total_tokens(b), usage_by_value(b), "{body}");
            }
        }
    }

    /// Nesting up to [`plain::MAX_DEPTH`] is read; deeper goes to
    /// serde_json, which answers the same.
    #[test]
    fn nesting_at_the_limit() {
        let limit = plain::MAX_DEPTH as usize;
        for n in limit - 3..=limit + 3 {
            for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
                // `n` containers in the body's object, the innermost `n`
                // deep.
                let value = format!("{}1{}", open.repeat(n), close.repeat(n));
                for body in [
                    format!(r#"{{"a":{value},"usage":{{"total_tokens":3}}}}"#),
                    format!(r#"{{"usage":{{"a":{value},"total_tokens":3}}}}"#),
                    format!(r#"{{"max_tokens":{value}}}"#),
                ] {
                    let b = body.as_bytes();
                    // In `usage`, the value is one level deeper.
                    let deepest = if body.starts_with(r#"{"usage""#) {
                        n + 1
                    } else {
                        n
                    };
                    let answers = deepest < limit;
                    assert_eq!(plain::usage_total_tokens(b).is_some(), answers, "{body}");
                    assert_eq!(plain::request_fields(b).is_some(), answers, "{body}");
                    plain_agrees(b);
                    assert_eq!(usage_total_tokens(b), usage_by_value(b), "{body}");
                    assert_eq!(
                        request_fields(b).map(|f| (f.max_completion_tokens, f.max_tokens)),
                        by_value(b),
                        "{body}"
                    );
                }
            }
        }
    }

    /// Keys the fields are read from, and others.
    fn key() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        proptest::prop_oneof![
            proptest::sample::select(vec![
                "usage",
                "total_tokens",
                "max_tokens",
                "max_completion_tokens"
            ])
            .prop_map(str::to_owned),
            "[a-z_]{0,12}",
        ]
    }

    /// Whitespace, mostly none.
    fn ws() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(vec!["", "", "", " ", "\n  ", "\t", "\r\n"])
    }

    /// Valid JSON text without escapes or exponents: strings of printable
    /// ASCII and DEL (but `-` and `.`, left to numbers), numbers, literals,
    /// and arrays and objects of them, with whitespace here and there.
    fn plain_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        let leaf = proptest::prop_oneof![
            "[ -!#-,/-\\[\\]-~\x7f]{0,20}".prop_map(|s| format!("\"{s}\"")),
            "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,2})?",
            proptest::sample::select(vec!["true", "false", "null"]).prop_map(str::to_owned),
        ];
        leaf.prop_recursive(5, 48, 5, |inner| {
            proptest::prop_oneof![
                proptest::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(|items| {
                    let items: Vec<_> =
                        items.iter().map(|(a, v, b)| format!("{a}{v}{b}")).collect();
                    format!("[{}]", items.join(","))
                }),
                members(inner),
            ]
        })
    }

    /// An object of `values`.
    fn members(
        values: impl proptest::strategy::Strategy<Value = String>,
    ) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        proptest::collection::vec((ws(), key(), ws(), ws(), values, ws()), 0..6).prop_map(
            |members| {
                let members: Vec<_> = members
                    .iter()
                    .map(|(a, k, b, c, v, d)| format!(r#"{a}"{k}"{b}:{c}{v}{d}"#))
                    .collect();
                format!("{{{}}}", members.join(","))
            },
        )
    }

    /// A typical chat completion response, as the simulated vendor sends.
    const BENCH_RESPONSE: &[u8] = br#"{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"word0 word1 word2 word3 word4 word5 word6 word7","role":"assistant"}}],"created":0,"id":"sim-0","model":"m","object":"chat.completion","usage":{"completion_tokens":8,"prompt_tokens":19,"total_tokens":27}}"#;

    /// A typical chat request.
    const BENCH_REQUEST: &[u8] =
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":16}"#;

    /// Calls per benchmark run: `JSON_BENCH_CALLS`, default 10,000. Run
    /// with two counts and subtract to cancel the start-up cost.
    fn bench_calls() -> u64 {
        std::env::var("JSON_BENCH_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    }

    /// For callgrind: [`plain::usage_total_tokens`] on a typical response.
    #[test]
    #[ignore = "benchmark; run under valgrind --tool=callgrind"]
    fn bench_usage_total_tokens() {
        for _ in 0..bench_calls() {
            let total = plain::usage_total_tokens(std::hint::black_box(BENCH_RESPONSE));
            assert_eq!(std::hint::black_box(total), Some(Some(27)));
        }
    }

    /// For callgrind: [`plain::request_fields`] on a typical request.
    #[test]
    #[ignore = "benchmark; run under valgrind --tool=callgrind"]
    fn bench_request_fields() {
        for _ in 0..bench_calls() {
            let fields = plain::request_fields(std::hint::black_box(BENCH_REQUEST));
            assert_eq!(
                std::hint::black_box(fields).and_then(|f| f.completion()),
                Some(16)
            );
        }
    }

    proptest::proptest! {
        /// Long strings with any byte anywhere: the scanner reads eight
        /// bytes at a time, so whatever sits at any offset must be judged
        /// as one at a time would.
        #[test]
        fn long_strings_agree(
            text in "[a-z ]{0,40}",
            at in 0usize..40,
            byte in proptest::num::u8::ANY,
        ) {
            let mut b = format!(r#"{{"content":"{text}","usage":{{"total_tokens":3}}}}"#).into_bytes();
            plain_agrees(&b);
            proptest::prop_assert_eq!(plain::usage_total_tokens(&b), Some(Some(3)));
            let at = 12 + at.min(text.len());
            if at < b.len() {
                b[at] = byte;
                plain_agrees(&b);
            }
        }

        #[test]
        fn never_panics_and_agrees(s in proptest::prop_oneof![
            "\\PC{0,64}",
            "\\{( ?\"(max_tokens|max_completion_tokens|usage|total_tokens|a)\" ?: ?(-?[0-9]{1,3}(\\.5)?|null|\"x\"|\\{\"total_tokens\": ?-?[0-9]{1,2}\\}|\\[\\]|true),?){0,3}\\} ?x?",
        ]) {
            let b = s.as_bytes();
            proptest::prop_assert_eq!(
                request_fields(b).map(|f| (f.max_completion_tokens, f.max_tokens)),
                by_value(b)
            );
            proptest::prop_assert_eq!(usage_total_tokens(b), usage_by_value(b));
            plain_agrees(b);
        }

        /// Any plain document: the plain scanner answers it (unless a field
        /// it reads is a negative number or a fraction, which it leaves to
        /// serde_json: asked of the documents without any), and answers as
        /// serde_json does.
        #[test]
        fn plain_reads_plain_documents(body in members(plain_value()), end in ws()) {
            let body = body + end;
            let b = body.as_bytes();
            plain_agrees(b);
            if !body.contains(['-', '.']) {
                proptest::prop_assert!(plain::usage_total_tokens(b).is_some(), "{}", body);
                proptest::prop_assert!(plain::request_fields(b).is_some(), "{}", body);
            }
            proptest::prop_assert_eq!(usage_total_tokens(b), usage_by_value(b));
            proptest::prop_assert_eq!(
                request_fields(b).map(|f| (f.max_completion_tokens, f.max_tokens)),
                by_value(b)
            );
        }

        /// Nested documents with every kind of value, whitespace, escapes,
        /// duplicate keys, and bytes cut off or changed: the plain scanner
        /// and serde_json agree wherever the plain one answers.
        #[test]
        fn plain_agrees_on_nested_and_broken_json(
            s in "[ \n]?\\{([ \t]?\"(usage|total_tokens|max_tokens|max_completion_tokens|k|\\\\n)\"[ ]?:[ ]?(0|[1-9][0-9]{0,20}|-[0-9]{1,3}(\\.[0-9]{1,2})?|[0-9]\\.[0-9]|1e2|\"(\\PC|\\\\\")*\"|true|fals|null|\\[([0-9]|\"x\"|\\{\\}|\\[\\]|,){0,4}\\]|\\{(\"total_tokens\":[0-9]{1,3}|\"k\":\\[\\]|,){0,3}\\}),?){0,5}\\}[ \r\n]{0,2}.?",
            cut in 0usize..120,
            flip in proptest::option::of((0usize..120, proptest::num::u8::ANY)),
        ) {
            let mut b = s.into_bytes();
            plain_agrees(&b);
            if let Some((at, byte)) = flip {
                if at < b.len() {
                    b[at] = byte;
                    plain_agrees(&b);
                }
            }
            b.truncate(cut.min(b.len()));
            plain_agrees(&b);
        }
    }
}
