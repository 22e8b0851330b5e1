//! The few JSON fields the gateway reads, without building a document.
//!
//! A request body is checked to be one JSON object and only
//! `max_completion_tokens` and `max_tokens` are kept; a response body yields
//! only `usage.total_tokens`. Every other value is skipped by the parser
//! (`IgnoredAny`), so nothing is allocated for the message text. The rules are
//! those of `serde_json::Value` lookups: a field counts when it is a
//! non-negative integer, and the last of duplicate keys wins.

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
    let mut de = serde_json::Deserializer::from_slice(body);
    let fields = de.deserialize_map(RequestVisitor).ok()?;
    de.end().ok()?;
    Some(fields)
}

/// `usage.total_tokens` of a JSON document, when it is a non-negative
/// integer.
pub fn usage_total_tokens(body: &[u8]) -> Option<u64> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let total = de.deserialize_map(UsageVisitor).ok()?;
    de.end().ok()?;
    total
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

    proptest::proptest! {
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
        }
    }
}
