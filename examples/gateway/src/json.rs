//! The few JSON fields the gateway reads, without building a document.
//!
//! A request body is checked to be one JSON object and only
//! `max_completion_tokens` and `max_tokens` are kept; a response body yields
//! only `usage.total_tokens`. Every other value is skipped by the parser
//! (`IgnoredAny`), so nothing is allocated for the message text. The rules are
//! those of `serde_json::Value` lookups: a field counts when it is a
//! non-negative integer, and the last of duplicate keys wins.
//!
//! A body of plain JSON (printable ASCII strings without escapes, numbers
//! without exponents, modest nesting: what vendors and clients send) is read
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
mod plain {
    /// Deeper nesting goes to serde_json (whose own limit is 128).
    pub(super) const MAX_DEPTH: u32 = 64;

    use crate::swar::{below, equal, non_ascii};

    /// The bytes of `word` (little-endian) that are a `"`, a `\`, or not
    /// printable ASCII (below 0x20, 0x7f, or past ASCII), each as its high
    /// bit; the lowest is exact (see [`crate::swar`]).
    #[inline]
    pub(super) fn to_judge(word: u64) -> u64 {
        non_ascii(word)
            | below(word, 0x20)
            | equal(word, 0x7f)
            | equal(word, b'"')
            | equal(word, b'\\')
    }

    struct Scan<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Scan<'a> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn ws(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
                self.i += 1;
            }
        }

        /// A string of printable ASCII without escapes, at its `"`.
        fn string(&mut self) -> Option<&'a [u8]> {
            self.i += 1;
            let start = self.i;
            // Eight bytes at a time: the first byte to judge ends the
            // string if it is a `"`, else the scanner gives up. The last
            // few bytes of the body go one at a time, below.
            while let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let word = u64::from_le_bytes(chunk.try_into().ok()?);
                let marks = to_judge(word);
                if marks == 0 {
                    self.i += 8;
                    continue;
                }
                self.i += (marks.trailing_zeros() / 8) as usize;
                if self.b[self.i] != b'"' {
                    return None;
                }
                let s = &self.b[start..self.i];
                self.i += 1;
                return Some(s);
            }
            loop {
                match *self.b.get(self.i)? {
                    b'"' => {
                        let s = &self.b[start..self.i];
                        self.i += 1;
                        return Some(s);
                    }
                    b'\\' => return None,
                    0x20..=0x7e => self.i += 1,
                    _ => return None,
                }
            }
        }

        fn digits(&mut self) -> usize {
            let start = self.i;
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
            self.i - start
        }

        /// A number without an exponent.
        fn number(&mut self) -> Option<()> {
            if self.peek() == Some(b'-') {
                self.i += 1;
            }
            match self.peek()? {
                b'0' => self.i += 1,
                b'1'..=b'9' => {
                    self.digits();
                }
                _ => return None,
            }
            if self.peek() == Some(b'.') {
                self.i += 1;
                if self.digits() == 0 {
                    return None;
                }
            }
            match self.peek() {
                Some(b'e' | b'E' | b'0'..=b'9') => None,
                _ => Some(()),
            }
        }

        fn literal(&mut self, word: &[u8]) -> Option<()> {
            let end = self.i.checked_add(word.len())?;
            (self.b.get(self.i..end)? == word).then(|| self.i = end)
        }

        /// Skips one value.
        fn value(&mut self, depth: u32) -> Option<()> {
            match self.peek()? {
                b'"' => self.string().map(drop),
                b'{' => self.object(depth, |s, _| s.value(depth + 1)),
                b'[' => self.array(depth),
                b't' => self.literal(b"true"),
                b'f' => self.literal(b"false"),
                b'n' => self.literal(b"null"),
                b'-' | b'0'..=b'9' => self.number(),
                _ => None,
            }
        }

        /// An object at its `{`; `field` reads each value, given its key.
        fn object(
            &mut self,
            depth: u32,
            mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
        ) -> Option<()> {
            if depth >= MAX_DEPTH {
                return None;
            }
            self.i += 1;
            self.ws();
            if self.peek()? == b'}' {
                self.i += 1;
                return Some(());
            }
            loop {
                if self.peek()? != b'"' {
                    return None;
                }
                let key = self.string()?;
                self.ws();
                if self.peek()? != b':' {
                    return None;
                }
                self.i += 1;
                self.ws();
                field(self, key)?;
                self.ws();
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        self.ws();
                    }
                    b'}' => {
                        self.i += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }

        /// An array at its `[`.
        fn array(&mut self, depth: u32) -> Option<()> {
            if depth >= MAX_DEPTH {
                return None;
            }
            self.i += 1;
            self.ws();
            if self.peek()? == b']' {
                self.i += 1;
                return Some(());
            }
            loop {
                self.value(depth + 1)?;
                self.ws();
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        self.ws();
                    }
                    b']' => {
                        self.i += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }

        /// A field read as a count: `Some(Some(n))` for a run of digits
        /// (a `u64`), `Some(None)` for a string, literal, object or array;
        /// any other number (negative, fraction, exponent, 20 digits or
        /// more) gives up (`None`).
        #[allow(clippy::option_option)]
        fn count(&mut self, depth: u32) -> Option<Option<u64>> {
            match self.peek()? {
                b'0'..=b'9' => {
                    let start = self.i;
                    let n = self.digits();
                    if n > 19 || (n > 1 && self.b[start] == b'0') {
                        return None;
                    }
                    if let Some(b'.' | b'e' | b'E') = self.peek() {
                        return None;
                    }
                    let v = self.b[start..self.i]
                        .iter()
                        .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
                    Some(Some(v))
                }
                b'-' => None,
                _ => {
                    self.value(depth)?;
                    Some(None)
                }
            }
        }
    }

    /// One JSON object and nothing but whitespace around it.
    fn document<'a>(
        b: &'a [u8],
        field: impl FnMut(&mut Scan<'a>, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        let mut s = Scan { b, i: 0 };
        s.ws();
        if s.peek()? != b'{' {
            return None;
        }
        s.object(0, field)?;
        s.ws();
        (s.i == b.len()).then_some(())
    }

    /// [`super::request_fields`], or `None` to ask serde_json.
    pub(super) fn request_fields(b: &[u8]) -> Option<super::RequestFields> {
        let mut out = super::RequestFields::default();
        document(b, |s, key| match key {
            b"max_completion_tokens" => {
                out.max_completion_tokens = s.count(1)?;
                Some(())
            }
            b"max_tokens" => {
                out.max_tokens = s.count(1)?;
                Some(())
            }
            _ => s.value(1),
        })?;
        Some(out)
    }

    /// [`super::usage_total_tokens`], or `None` to ask serde_json.
    #[allow(clippy::option_option)]
    pub(super) fn usage_total_tokens(b: &[u8]) -> Option<Option<u64>> {
        let mut total = None;
        document(b, |s, key| {
            if key != b"usage" {
                return s.value(1);
            }
            total = None;
            if s.peek()? == b'{' {
                s.object(1, |s, key| {
                    if key == b"total_tokens" {
                        total = s.count(2)?;
                        Some(())
                    } else {
                        s.value(2)
                    }
                })
            } else {
                s.value(1)
            }
        })?;
        Some(total)
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
        let judged = |b: u8| !(0x20..=0x7e).contains(&b) || b == b'"' || b == b'\\';
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
