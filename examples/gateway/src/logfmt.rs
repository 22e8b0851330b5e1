//! A fast JSON-lines event formatter for the gateway's logs.
//!
//! # Why
//!
//! The gateway logs one `request finished` event per request (see
//! [`crate::trace`]). Through tracing-subscriber's own JSON formatter
//! (`fmt().json().flatten_event(true).with_current_span(false)`) that line
//! costs about 20,000 instructions: a `String` for the timestamp, full
//! RFC 3339 formatting on every event, and serde_json's serialiser per
//! field. [`JsonLines`] writes the same line through a stack buffer into
//! tracing-subscriber's: the `YYYY-MM-DDTHH:MM:SS` part of the timestamp is
//! cached per thread for the current second, values are escaped while they
//! are formatted (eight bytes checked at a time), and nothing is allocated
//! per event. Measured with callgrind on the access line (release build):
//! about 4,800 instructions per event in the formatter instead of 18,200.
//!
//! # What it matches
//!
//! The output is the one the current configuration prints, byte for byte
//! for events outside spans (the tests compare against tracing-subscriber
//! directly): one JSON object per line, keys in this order:
//!
//! - `"timestamp"`: RFC 3339 UTC with microseconds, the shape of
//!   tracing-subscriber's default `SystemTime` timer
//!   (`2026-11-28T22:44:09.123456Z`; years past 9999 as `+10000`, before
//!   year 0 as `-0001`);
//! - `"level"`: `"ERROR"`, `"WARN"`, `"INFO"`, `"DEBUG"` or `"TRACE"`;
//! - the event's fields, flattened, in recording order, duplicates kept
//!   (the format string is the field `message`);
//! - `"target"`;
//! - `"spans"` when the event is inside spans: an array from root to leaf
//!   of objects holding the span's fields followed by `"name"`. The fields
//!   are included only when the layer's field formatter is [`JsonFields`];
//!   they are spliced in as recorded, where tracing-subscriber re-parses
//!   them into a map (so it sorts the keys and drops duplicates). With any
//!   other field formatter the objects hold only `"name"`.
//!
//! Field values follow tracing-subscriber (through tracing-serde and
//! serde_json): strings are JSON strings escaped as serde_json escapes them
//! (RFC 8259; `\b \t \n \f \r`, other control characters as `\u00xx`);
//! `u64`/`i64` are numbers; `f64` is the number serde_json prints, and
//! non-finite values are `null`; `bool` is `true`/`false`; `Debug` and
//! `Display` values, the message, errors (their `Display`), `u128`/`i128`
//! and byte slices (through tracing's defaults) are JSON strings.
//!
//! Not matched: events bridged from the `log` crate show tracing's `log`
//! metadata (tracing-subscriber's `tracing-log` feature, off in this
//! workspace, would normalise it).
//!
//! # Use
//!
//! ```no_run
//! use backstop_gateway::logfmt::JsonLines;
//! use tracing_subscriber::fmt::format::JsonFields;
//!
//! tracing_subscriber::fmt()
//!     .event_format(JsonLines::default())
//!     .fmt_fields(JsonFields::new())
//!     .with_writer(std::io::stderr)
//!     .init();
//! ```

use std::any::TypeId;
use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::swar::{below, equal};

/// A [`FormatEvent`] that writes each event as one JSON object per line, in
/// the shape of tracing-subscriber's `fmt().json().flatten_event(true)
/// .with_current_span(false)` (see the [module docs](self)), several times
/// faster.
///
/// Use it with `tracing_subscriber::fmt().event_format(JsonLines::default())
/// .fmt_fields(JsonFields::new())`; the field formatter only matters for
/// span fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines {
    _private: (),
}

impl JsonLines {
    /// The formatter (same as [`JsonLines::default`]).
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut out = Out::new(&mut writer);
        out.push_str("{\"timestamp\":\"");
        out.push_ascii(format_timestamp(SystemTime::now()).as_bytes());
        out.push_str("\",\"level\":\"");
        // `Level::as_str` spells levels as tracing-serde does.
        out.push_str(meta.level().as_str());
        out.push_str("\"");
        event.record(&mut FieldWriter(&mut out));
        out.push_str(",\"target\":\"");
        out.push_escaped(meta.target());
        out.push_str("\"");
        // As tracing-subscriber: the list is written when the event has a
        // parent (explicit or contextual) and lists the current spans.
        let in_span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current())
            .is_some();
        if in_span {
            write_spans(ctx, &mut out);
        }
        out.push_str("}\n");
        out.finish()
    }
}

/// The fields of the gateway's access line, the `request finished` event
/// of [`crate::trace`].
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    /// `request_id`; left out when `None`, as tracing leaves out a `None`.
    pub request_id: Option<&'a str>,
    /// `method`.
    pub method: &'a str,
    /// `path`.
    pub path: &'a str,
    /// `status`; left out when `None`.
    pub status: Option<u16>,
    /// `attempts`.
    pub attempts: u32,
    /// `duration_ms`.
    pub duration_ms: u64,
    /// `outcome`.
    pub outcome: &'a str,
}

impl AccessLine<'_> {
    /// The event's target: the module that logs it.
    pub const TARGET: &'static str = "backstop_gateway::trace";

    /// Appends the line [`JsonLines`] prints for
    /// `tracing::info!(target: TARGET, message = "request finished",
    /// request_id, method, path, status, attempts, duration_ms, outcome)`
    /// outside any span, byte for byte (a test compares the two), without
    /// going through tracing: no field visitor, no staging and no UTF-8
    /// check of the line.
    pub fn format(&self, out: &mut Vec<u8>) {
        let string = |out: &mut Vec<u8>, s: &str| {
            out.push(b'"');
            escape_runs(s, |run| out.extend_from_slice(run.as_bytes()));
            out.push(b'"');
        };
        let number = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(decimal(v, &mut [0; 20]));
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(format_timestamp(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request finished\"");
        if let Some(id) = self.request_id {
            out.extend_from_slice(b",\"request_id\":");
            string(out, id);
        }
        out.extend_from_slice(b",\"method\":");
        string(out, self.method);
        out.extend_from_slice(b",\"path\":");
        string(out, self.path);
        if let Some(status) = self.status {
            out.extend_from_slice(b",\"status\":");
            number(out, u64::from(status));
        }
        out.extend_from_slice(b",\"attempts\":");
        number(out, u64::from(self.attempts));
        out.extend_from_slice(b",\"duration_ms\":");
        number(out, self.duration_ms);
        out.extend_from_slice(b",\"outcome\":");
        string(out, self.outcome);
        out.extend_from_slice(b",\"target\":\"");
        out.extend_from_slice(Self::TARGET.as_bytes());
        out.extend_from_slice(b"\"}\n");
    }
}

/// `,"spans":[...]`, the current spans from root to leaf.
fn write_spans<S, N>(ctx: &FmtContext<'_, S, N>, out: &mut Out<'_, '_>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let json_fields = TypeId::of::<N>() == TypeId::of::<JsonFields>();
    out.push_str(",\"spans\":[");
    if let Some(leaf) = ctx.lookup_current() {
        for (i, span) in leaf.scope().from_root().enumerate() {
            out.push_str(if i == 0 { "{" } else { ",{" });
            if json_fields {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    let inner = fields
                        .fields
                        .trim()
                        .strip_prefix('{')
                        .and_then(|f| f.strip_suffix('}'))
                        .unwrap_or("");
                    if !inner.trim().is_empty() {
                        out.push_str(inner);
                        out.push_str(",");
                    }
                }
            }
            out.push_str("\"name\":\"");
            out.push_escaped(span.metadata().name());
            out.push_str("\"}");
        }
    }
    out.push_str("]");
}

/// Writes `,"name":value` per field.
struct FieldWriter<'o, 'a, 'w>(&'o mut Out<'a, 'w>);

impl FieldWriter<'_, '_, '_> {
    /// `,"name":`.
    fn key(&mut self, field: &Field) {
        self.0.push_str(",\"");
        self.0.push_escaped(field.name());
        self.0.push_str("\":");
    }
}

impl Visit for FieldWriter<'_, '_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        self.0.push_f64(value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        if value < 0 {
            self.0.push_str("-");
        }
        self.0.push_u64(value.unsigned_abs());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.0.push_u64(value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.0.push_str("\"");
        self.0.push_escaped(value);
        self.0.push_str("\"");
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        self.0.push_str("\"");
        // Writing to `Out` cannot fail (errors are kept for `finish`), but
        // `Display` impls can; tracing-subscriber drops the line then too.
        if write!(Escaping(self.0), "{value}").is_err() {
            self.0.fail();
        }
        self.0.push_str("\"");
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.0.push_str("\"");
        if write!(Escaping(self.0), "{value:?}").is_err() {
            self.0.fail();
        }
        self.0.push_str("\"");
    }
}

/// Bytes [`Out`] stages before handing them to the writer.
const OUT_CAP: usize = 512;

/// Stages a line in a stack buffer and hands it to tracing-subscriber's
/// writer in few large writes (each `Writer::write_str` is a dynamic call
/// and a `String` reserve), keeping the first error.
///
/// The staged bytes are always whole `&str` pieces (escaping splits only at
/// ASCII bytes), so they are valid UTF-8 whenever they are flushed.
struct Out<'a, 'w> {
    writer: &'a mut Writer<'w>,
    buf: [u8; OUT_CAP],
    len: usize,
    result: fmt::Result,
}

impl<'a, 'w> Out<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>) -> Self {
        Self {
            writer,
            buf: [0; OUT_CAP],
            len: 0,
            result: Ok(()),
        }
    }

    /// Records a failure; the line's result will be an error.
    fn fail(&mut self) {
        self.result = Err(fmt::Error);
    }

    /// Hands the staged bytes to the writer.
    fn flush(&mut self) {
        if self.len > 0 && self.result.is_ok() {
            self.result = match std::str::from_utf8(&self.buf[..self.len]) {
                Ok(s) => self.writer.write_str(s),
                Err(_) => Err(fmt::Error),
            };
        }
        self.len = 0;
    }

    /// Flushes and returns the first error.
    fn finish(mut self) -> fmt::Result {
        self.flush();
        self.result
    }

    #[inline]
    fn push_str(&mut self, s: &str) {
        if s.len() > OUT_CAP - self.len {
            self.flush();
            if s.len() > OUT_CAP {
                if self.result.is_ok() {
                    self.result = self.writer.write_str(s);
                }
                return;
            }
        }
        self.stage(s.as_bytes());
    }

    /// Copies `b` into the stage; the caller has checked that it fits and
    /// that it keeps the stage valid UTF-8.
    #[inline]
    fn stage(&mut self, b: &[u8]) {
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    /// Pushes ASCII bytes (anything else fails the line). ASCII is UTF-8,
    /// so short runs are staged without another check.
    fn push_ascii(&mut self, b: &[u8]) {
        if !b.is_ascii() {
            self.fail();
        } else if b.len() <= OUT_CAP - self.len {
            self.stage(b);
        } else if let Ok(s) = std::str::from_utf8(b) {
            self.push_str(s);
        }
    }

    /// Pushes `s` escaped as the inside of a JSON string (see
    /// [`escape_runs`]).
    fn push_escaped(&mut self, s: &str) {
        escape_runs(s, |run| self.push_str(run));
    }

    /// Pushes `v` in decimal.
    fn push_u64(&mut self, v: u64) {
        self.push_ascii(decimal(v, &mut [0; 20]));
    }

    /// Pushes `v` as serde_json writes it (so as tracing-subscriber does):
    /// its shortest round-trip form, and `null` when not finite.
    fn push_f64(&mut self, v: f64) {
        let mut buf = [0u8; 40];
        let mut rest = &mut buf[..];
        if serde_json::to_writer(&mut rest, &v).is_err() {
            self.fail();
            return;
        }
        let len = 40 - rest.len();
        self.push_ascii(&buf[..len]);
    }
}

/// [`Out`] as a [`fmt::Write`] that escapes what is written through it as
/// the inside of a JSON string, so values are escaped while they are
/// formatted.
struct Escaping<'o, 'a, 'w>(&'o mut Out<'a, 'w>);

impl fmt::Write for Escaping<'_, '_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.push_escaped(s);
        Ok(())
    }
}

/// `v` in decimal, written at the end of `buf`.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// `s` escaped as the inside of a JSON string (RFC 8259, as serde_json
/// escapes): `"`, `\\` and control characters; everything else, non-ASCII
/// included, as is. Hands `emit` the pieces in order: runs of `s` that need
/// no escape and the escapes between them. Scans eight bytes at a time.
#[inline]
fn escape_runs(s: &str, mut emit: impl FnMut(&str)) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes read in place; the last word padded with spaces
        // (which need no escape), so short keys and tails take one check
        // too.
        let (word, n) = match bytes.get(i..i + 8) {
            Some(w) => (u64::from_le_bytes(w.try_into().unwrap_or([0; 8])), 8),
            None => {
                let mut w = [b' '; 8];
                let tail = &bytes[i..];
                w[..tail.len()].copy_from_slice(tail);
                (u64::from_le_bytes(w), tail.len())
            }
        };
        if !may_need_escape(word) {
            i += n;
            continue;
        }
        let end = i + n;
        while i < end {
            let b = bytes[i];
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                0..0x20 => CONTROL[usize::from(b)],
                _ => {
                    i += 1;
                    continue;
                }
            };
            // Escaped bytes are ASCII, so `start` and `i` are char
            // boundaries.
            emit(&s[start..i]);
            emit(escape);
            i += 1;
            start = i;
        }
    }
    if start < bytes.len() {
        emit(&s[start..]);
    }
}

/// Whether a byte of the eight in `x` may need escaping: `"`, `\` or a
/// control character. No false negatives; a false positive only sends the
/// word through the byte-wise check.
fn may_need_escape(x: u64) -> bool {
    // Bytes from 0x80 are not below 0x20 (see `crate::swar`).
    below(x, 0x20) | equal(x, b'"') | equal(x, b'\\') != 0
}

/// The escapes of the control characters, as serde_json writes them.
const CONTROL: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b",
    "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012",
    "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a",
    "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// A fixed stack buffer; pushes past its end are dropped (never happens
/// with the sizes used here).
#[derive(Clone, Copy)]
struct Buf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    fn push(&mut self, b: &[u8]) {
        let end = (self.len + b.len()).min(N);
        self.bytes[self.len..end].copy_from_slice(&b[..end - self.len]);
        self.len = end;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<const N: usize> fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// `YYYY-MM-DDTHH:MM:SS` for one second since the epoch. The longest
/// (year `+292277026596`) is 28 bytes.
#[derive(Clone, Copy)]
struct SecondPrefix {
    secs: i64,
    text: Buf<32>,
}

thread_local! {
    /// The prefix for the last second this thread formatted.
    static LAST_SECOND: Cell<SecondPrefix> = const {
        Cell::new(SecondPrefix { secs: i64::MIN, text: Buf::new() })
    };
}

/// Seconds and nanoseconds since the epoch, floored (as tracing-subscriber
/// splits instants before the epoch).
fn split(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

/// `t` as RFC 3339 UTC with microseconds (`2026-11-28T22:44:09.123456Z`),
/// the seconds part from the thread's cache.
fn format_timestamp(t: SystemTime) -> Buf<40> {
    let (secs, nanos) = split(t);
    let mut prefix = LAST_SECOND.get();
    if prefix.secs != secs {
        prefix = SecondPrefix {
            secs,
            text: format_second(secs),
        };
        LAST_SECOND.set(prefix);
    }
    let mut out = Buf::new();
    out.push(prefix.text.as_bytes());
    let mut frac = *b".000000Z";
    let mut micros = nanos / 1_000;
    for d in frac[1..7].iter_mut().rev() {
        *d = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.push(&frac);
    out
}

/// `YYYY-MM-DDTHH:MM:SS` for `secs` since the epoch, years formatted as
/// tracing-subscriber does.
fn format_second(secs: i64) -> Buf<32> {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut text = Buf::new();
    // Writing to a `Buf` cannot fail.
    let _ = if year > 9999 {
        write!(text, "+{year}")
    } else if year < 0 {
        write!(text, "{year:05}")
    } else {
        write!(text, "{year:04}")
    };
    let _ = write!(
        text,
        "-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    text
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01:
/// Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html#civil_from_days>).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], from March
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing::{Level, debug, error, info, info_span, trace, warn};
    use tracing_subscriber::fmt::format::JsonFields;

    use super::*;

    /// A `MakeWriter` appending to a shared buffer.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap().clone();
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'));
            text.lines().map(str::to_owned).collect()
        }
    }

    /// The lines tracing-subscriber's json formatter (as the gateway
    /// configures it) prints for `f`'s events.
    fn reference(f: &dyn Fn()) -> Vec<String> {
        let out = Capture::default();
        let w = out.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_max_level(Level::TRACE)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        out.lines()
    }

    /// The lines [`JsonLines`] prints for `f`'s events.
    fn ours(f: &dyn Fn()) -> Vec<String> {
        let out = Capture::default();
        let w = out.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLines::default())
            .fmt_fields(JsonFields::new())
            .with_max_level(Level::TRACE)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        out.lines()
    }

    const TS_PREFIX: &str = "{\"timestamp\":\"";
    const TS_LEN: usize = "2026-11-28T22:44:09.123456Z".len();

    /// Checks the timestamp's shape and that it is within a few seconds of
    /// now; returns the line without it.
    fn strip_timestamp(line: &str) -> String {
        assert!(line.starts_with(TS_PREFIX), "{line}");
        let ts = &line[TS_PREFIX.len()..TS_PREFIX.len() + TS_LEN];
        check_timestamp(ts);
        assert_eq!(&line[TS_PREFIX.len() + TS_LEN..][..1], "\"", "{line}");
        format!("{TS_PREFIX}{}", &line[TS_PREFIX.len() + TS_LEN..])
    }

    /// Shape: `YYYY-MM-DDTHH:MM:SS.ffffffZ`, within 5 s of now.
    fn check_timestamp(ts: &str) {
        let b = ts.as_bytes();
        assert_eq!(b.len(), TS_LEN, "{ts}");
        for (i, &c) in b.iter().enumerate() {
            match i {
                4 | 7 => assert_eq!(c, b'-', "{ts}"),
                10 => assert_eq!(c, b'T', "{ts}"),
                13 | 16 => assert_eq!(c, b':', "{ts}"),
                19 => assert_eq!(c, b'.', "{ts}"),
                26 => assert_eq!(c, b'Z', "{ts}"),
                _ => assert!(c.is_ascii_digit(), "{ts}"),
            }
        }
        let num = |r: std::ops::Range<usize>| ts[r].parse::<i64>().unwrap();
        let secs = days_from_civil(num(0..4), num(5..7), num(8..10)) * 86_400
            + num(11..13) * 3600
            + num(14..16) * 60
            + num(17..19);
        let now = split(SystemTime::now()).0;
        assert!((now - secs).abs() <= 5, "{ts} is not now");
    }

    /// Hinnant's `days_from_civil`, to check timestamps independently.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Asserts [`JsonLines`] prints the same lines as tracing-subscriber,
    /// byte for byte apart from the timestamp, and that they parse as JSON
    /// to the same values.
    fn same(f: &dyn Fn()) -> Vec<String> {
        let theirs = reference(f);
        let mine = ours(f);
        assert_eq!(theirs.len(), mine.len(), "{theirs:#?}\n{mine:#?}");
        assert!(!mine.is_empty());
        for (t, m) in theirs.iter().zip(&mine) {
            let (t, m) = (strip_timestamp(t), strip_timestamp(m));
            assert_eq!(t, m);
            let tv: serde_json::Value = serde_json::from_str(&t).unwrap();
            let mv: serde_json::Value = serde_json::from_str(&m).unwrap();
            assert_eq!(tv, mv);
        }
        mine
    }

    #[test]
    fn message_only() {
        let lines = same(&|| info!("request finished"));
        let m = strip_timestamp(&lines[0]);
        assert_eq!(
            m,
            "{\"timestamp\":\"\",\"level\":\"INFO\",\"message\":\"request finished\",\
             \"target\":\"backstop_gateway::logfmt::tests\"}"
        );
    }

    /// The access line names its message as a `&str` field (recorded as a
    /// string, not formatted through `fmt`): the line is the same as with a
    /// format string, here and in tracing-subscriber's formatter.
    #[test]
    fn message_as_a_field_prints_as_a_format_string() {
        let as_field = same(&|| info!(message = "request finished", a = 1u64, b = "x"));
        let as_format = same(&|| info!(a = 1u64, b = "x", "request finished"));
        assert_eq!(
            strip_timestamp(&as_field[0]),
            strip_timestamp(&as_format[0])
        );
    }

    #[test]
    fn every_field_type() {
        #[derive(Debug)]
        struct Dbg {
            #[allow(dead_code)]
            a: u8,
        }
        same(&|| {
            info!(
                s = "str",
                u = 42u64,
                umax = u64::MAX,
                i = -7i64,
                imin = i64::MIN,
                zero = 0u64,
                f = 1.5f64,
                fint = 2.0f64,
                fbig = 1e300f64,
                fsmall = -1.25e-9f64,
                nan = f64::NAN,
                inf = f64::INFINITY,
                t = true,
                no = false,
                big = u128::MAX,
                neg = i128::MIN,
                bytes = &b"\x01ab"[..],
                d = ?Dbg { a: 1 },
                shown = %"dis\"play",
                opt = ?Some("x"),
                none = Option::<&str>::None,
                "message {} {:?}",
                1,
                "two"
            );
        });
    }

    #[test]
    fn gateway_access_line() {
        same(&|| {
            let method = http::Method::POST;
            info!(
                request_id = Some("r-1"),
                method = %method,
                path = "/v1/chat/completions",
                status = 200u16,
                attempts = 2u32,
                duration_ms = 12u64,
                outcome = "ok",
                "request finished"
            );
            info!(
                request_id = Option::<&str>::None,
                status = Option::<u16>::None,
                "request finished"
            );
        });
    }

    #[test]
    fn escapes() {
        same(&|| {
            info!(
                s = "quote \" backslash \\ newline \n tab \t cr \r nul \0 one \u{1} \
                     esc \u{1b} del \u{7f} bs \u{8} ff \u{c} unicode é ✓ 🦀 \u{2028}",
                d = ?"debug \"quoted\" \n",
                shown = %"display \\ \u{1f}",
                "msg with \"quotes\" and \n newline and \u{1}"
            );
            info!(k = "", "");
            info!("{}", "trailing \\");
            info!("\"");
        });
    }

    #[test]
    fn display_and_debug_fields() {
        same(&|| {
            let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
            let d = Duration::from_millis(1500);
            info!(addr = %addr, dur = ?d, vec = ?vec![1, 2], "peer");
            warn!(path = %std::path::Path::new("/tmp/a b").display());
        });
    }

    #[test]
    fn error_field() {
        same(&|| {
            let e = io::Error::other("disk \"full\"\n");
            let e: &(dyn std::error::Error + 'static) = &e;
            error!(error = e, "failed");
            let parse = "x".parse::<u32>().unwrap_err();
            error!(error = &parse as &(dyn std::error::Error + 'static));
        });
    }

    #[test]
    fn message_field_in_other_positions() {
        same(&|| {
            info!(a = 1, message = "explicit", b = 2);
            info!(message = %"display message", z = true);
            info!(a = 1, message = "field", "format {}", 2);
            info!(dup = 1, dup = "twice", "dups");
        });
    }

    #[test]
    fn levels_and_targets() {
        let lines = same(&|| {
            error!("e");
            warn!("w");
            info!("i");
            debug!("d");
            trace!("t");
            info!(target: "custom::tgt", "targeted");
            info!(target: "we\"ird", x = 1);
        });
        let levels: Vec<_> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["level"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            levels,
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE", "INFO", "INFO"]
        );
    }

    #[test]
    fn spans_list_names_and_json_fields() {
        let f = || {
            let outer = info_span!("outer", a = 1, s = "x\"y");
            let _o = outer.enter();
            let inner = info_span!("inner");
            let _i = inner.enter();
            info!(k = 2, "inside");
        };
        let theirs = reference(&f);
        let mine = ours(&f);
        assert_eq!(theirs.len(), 1);
        assert_eq!(mine.len(), 1);
        let tv: serde_json::Value = serde_json::from_str(&theirs[0]).unwrap();
        let mv: serde_json::Value = serde_json::from_str(&mine[0]).unwrap();
        assert_eq!(tv["spans"], mv["spans"]);
        assert_eq!(
            mv["spans"],
            serde_json::json!([{"a": 1, "s": "x\"y", "name": "outer"}, {"name": "inner"}])
        );
        // Apart from the spans (whose inner key order may differ), the same.
        let cut = |l: &str| strip_timestamp(&l[..l.find(",\"spans\"").unwrap()]);
        assert_eq!(cut(&theirs[0]), cut(&mine[0]));
        assert!(mine[0].ends_with("}]}"));

        // Without JsonFields: names only.
        let out = Capture::default();
        let w = out.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLines::new())
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        let lines = out.lines();
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(
            v["spans"],
            serde_json::json!([{"name": "outer"}, {"name": "inner"}])
        );
    }

    #[test]
    fn explicit_parent_outside_span_writes_empty_list() {
        let f = || {
            let span = info_span!("p");
            info!(parent: &span, "orphan");
        };
        let theirs = reference(&f);
        let mine = ours(&f);
        assert_eq!(strip_timestamp(&theirs[0]), strip_timestamp(&mine[0]));
        assert!(mine[0].ends_with(",\"spans\":[]}"));
    }

    /// `t` formatted by [`push_timestamp`].
    fn ts(t: SystemTime) -> String {
        String::from_utf8(format_timestamp(t).as_bytes().to_vec()).unwrap()
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn timestamp_known_instants() {
        assert_eq!(ts(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29: 10957 days to 2000-01-01, +59 days.
        let leap = (10_957 + 59) * 86_400 + 12 * 3600 + 34 * 60 + 56;
        assert_eq!(ts(at(leap, 1_000)), "2000-02-29T12:34:56.000001Z");
        assert_eq!(ts(at(leap, 999)), "2000-02-29T12:34:56.000000Z");
        assert_eq!(ts(at(leap - 1, 999_999_999)), "2000-02-29T12:34:55.999999Z");
        // 2026-11-28: 20454 days to 2026-01-01, +331 days.
        let day = (20_454 + 331) * 86_400;
        assert_eq!(
            ts(at(day + 22 * 3600 + 44 * 60 + 9, 123_456_789)),
            "2026-11-28T22:44:09.123456Z"
        );
        assert_eq!(ts(at(day - 1, 0)), "2026-11-27T23:59:59.000000Z");
        // 2100 is not a leap year: 2100-02-28 is followed by 2100-03-01.
        // 47482 days to 2100-01-01, +59 days.
        let mar1 = (47_482 + 59) * 86_400;
        assert_eq!(ts(at(mar1, 0)), "2100-03-01T00:00:00.000000Z");
        assert_eq!(ts(at(mar1 - 1, 0)), "2100-02-28T23:59:59.000000Z");
        assert_eq!(ts(at(253_402_300_799, 0)), "9999-12-31T23:59:59.000000Z");
        assert_eq!(ts(at(253_402_300_800, 0)), "+10000-01-01T00:00:00.000000Z");
        // Before the epoch, floored as tracing-subscriber does.
        let before = UNIX_EPOCH - Duration::new(0, 1_000);
        assert_eq!(ts(before), "1969-12-31T23:59:59.999999Z");
        let y0 = UNIX_EPOCH - Duration::from_secs(62_167_219_200);
        assert_eq!(ts(y0), "0000-01-01T00:00:00.000000Z");
        let ym1 = UNIX_EPOCH - Duration::from_secs(62_167_219_200 + 1);
        assert_eq!(ts(ym1), "-0001-12-31T23:59:59.000000Z");
    }

    #[test]
    fn timestamp_cache_follows_the_second() {
        // Alternate seconds on one thread: the cache must not leak a stale
        // prefix.
        for _ in 0..3 {
            assert_eq!(ts(at(0, 5_000)), "1970-01-01T00:00:00.000005Z");
            assert_eq!(ts(at(1, 0)), "1970-01-01T00:00:01.000000Z");
            assert_eq!(ts(at(86_400, 0)), "1970-01-02T00:00:00.000000Z");
        }
    }

    #[test]
    fn civil_from_days_round_trips() {
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
    }

    /// `s` escaped by [`Out::push_escaped`], quoted.
    fn escaped(s: &str) -> String {
        let mut text = String::new();
        let mut w = Writer::new(&mut text);
        let mut out = Out::new(&mut w);
        out.push_str("\"");
        out.push_escaped(s);
        out.push_str("\"");
        out.finish().unwrap();
        text
    }

    #[test]
    fn escaping_matches_serde_json_at_every_offset() {
        let chars = (0u8..0x80)
            .map(char::from)
            .chain(['\u{80}', '\u{ff}', 'é', '✓', '🦀', '\u{2028}']);
        for c in chars {
            for before in 0..20 {
                for after in [0, 1, 7, 8, 9] {
                    let s = format!("{}{c}{}", "a".repeat(before), "~".repeat(after));
                    assert_eq!(escaped(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
                    let twice = format!("{s}{c}{s}");
                    assert_eq!(escaped(&twice), serde_json::to_string(&twice).unwrap());
                }
            }
        }
    }

    #[test]
    fn long_values_pass_through_the_buffer() {
        let long: String = (0..3 * OUT_CAP)
            .map(|i| match i % 37 {
                0 => '"',
                5 => '\n',
                11 => 'é',
                _ => 'x',
            })
            .collect();
        assert_eq!(escaped(&long), serde_json::to_string(&long).unwrap());
        let plain = "y".repeat(2 * OUT_CAP);
        assert_eq!(escaped(&plain), serde_json::to_string(&plain).unwrap());
        same(&|| {
            info!(a = %long, b = plain.as_str(), c = long.as_str(), "{}", long);
            info!(b = plain.as_str());
        });
    }

    /// [`AccessLine::format`] writes the line that the access event
    /// (`trace::Info::log`'s, at its target) gets from [`JsonLines`], and so
    /// from tracing-subscriber's own JSON formatter: with and without the
    /// optional fields, and with values that need escaping.
    #[test]
    fn the_access_line_written_directly_is_the_events_line() {
        let lines = [
            AccessLine {
                request_id: Some("0192f0c4-7b1e-7c3a-9d2e-5f6a7b8c9d0e"),
                method: "POST",
                path: "/v1/chat/completions",
                status: Some(200),
                attempts: 1,
                duration_ms: 12,
                outcome: "success",
            },
            AccessLine {
                request_id: None,
                method: "GET",
                path: "/v1/models",
                status: None,
                attempts: 0,
                duration_ms: u64::MAX,
                outcome: "cancelled",
            },
            AccessLine {
                request_id: Some("id \"quoted\" \\ back\u{1}slash, caf\u{e9}"),
                method: "PATCH",
                path: "/v1/\"odd\"/p\u{e4}th\n",
                status: Some(504),
                attempts: u32::MAX,
                duration_ms: 0,
                outcome: "timeout",
            },
        ];
        for line in lines {
            let event = || {
                info!(
                    target: "backstop_gateway::trace",
                    message = "request finished",
                    request_id = line.request_id,
                    method = line.method,
                    path = line.path,
                    status = line.status,
                    attempts = line.attempts,
                    duration_ms = line.duration_ms,
                    outcome = line.outcome,
                );
            };
            let evented = same(&event);
            let mut direct = Vec::new();
            line.format(&mut direct);
            let direct = String::from_utf8(direct).unwrap();
            let direct = direct.strip_suffix('\n').expect("one whole line");
            assert!(!direct.contains('\n'), "{direct}");
            assert_eq!(evented.len(), 1);
            assert_eq!(strip_timestamp(direct), strip_timestamp(&evented[0]));
        }
    }

    /// For callgrind: the access line written directly, `n` times, to a
    /// buffer emptied as the log writer empties its own.
    #[test]
    #[ignore = "benchmark; run under valgrind --tool=callgrind"]
    fn bench_direct() {
        let mut out = Vec::with_capacity(64 * 1024);
        for i in 0..bench_events() {
            AccessLine {
                request_id: Some("0192f0c4-7b1e-7c3a-9d2e-5f6a7b8c9d0e"),
                method: "POST",
                path: "/v1/chat/completions",
                status: Some(200),
                attempts: 1,
                duration_ms: i % 500,
                outcome: "ok",
            }
            .format(&mut out);
            if out.len() > 32 * 1024 {
                out.clear();
            }
        }
        std::hint::black_box(&out);
    }

    /// Events per benchmark run: `LOGFMT_BENCH_EVENTS`, default 10,000.
    fn bench_events() -> u64 {
        std::env::var("LOGFMT_BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    }

    /// The gateway's access line, `n` times.
    fn access_lines(n: u64) {
        let method = http::Method::POST;
        for i in 0..n {
            info!(
                request_id = Some("0192f0c4-7b1e-7c3a-9d2e-5f6a7b8c9d0e"),
                method = %method,
                path = "/v1/chat/completions",
                status = Some(200u16),
                attempts = 1u32,
                duration_ms = i % 500,
                outcome = "ok",
                "request finished"
            );
        }
    }

    /// For callgrind: the reference formatter, to a sink.
    #[test]
    #[ignore = "benchmark; run under valgrind --tool=callgrind"]
    fn bench_reference() {
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(io::sink)
            .finish();
        tracing::subscriber::with_default(sub, || access_lines(bench_events()));
    }

    /// For callgrind: [`JsonLines`], to a sink.
    #[test]
    #[ignore = "benchmark; run under valgrind --tool=callgrind"]
    fn bench_json_lines() {
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLines::default())
            .fmt_fields(JsonFields::new())
            .with_writer(io::sink)
            .finish();
        tracing::subscriber::with_default(sub, || access_lines(bench_events()));
    }
}
