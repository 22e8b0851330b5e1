//! Log lines to stderr, buffered per worker thread.
//!
//! One `request finished` line per request written straight to stderr is
//! one `write` system call per request, and with several worker threads the
//! writes also contend on stderr's lock. A worker thread instead appends its
//! lines to its own buffer, written out when it reaches [`FLUSH_AT`] bytes, at
//! least every [`FLUSH_EVERY`] (a task on the worker's runtime, see
//! [`flush_task`]), when the worker stops or its thread ends (unwinding
//! included), and at once for `WARN` and `ERROR` lines (so problems are never
//! held back, and the order of lines on a thread is kept). A process that
//! exits without its workers ending (the second shutdown signal) calls
//! [`flush_all`] first. Every other thread writes each line straight through.
//!
//! Lines of one thread stay in order; lines of different worker threads may
//! come out of order by up to [`FLUSH_EVERY`] (each carries its timestamp).
//!
//! A line is handed over whole: tracing-subscriber formats a line into its
//! own buffer and writes it with one `write_all`, so buffered flushes never
//! split a line, and one flush is one `write` of whole lines.

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// A worker's buffer is written out when it holds this many bytes.
pub const FLUSH_AT: usize = 32 * 1024;

/// The longest a buffered line waits.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A worker's buffer. Behind a mutex only so that [`flush_all`] can reach it
/// from another thread (the lock is uncontended otherwise); written out when
/// its thread ends, unwinding included.
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Drop for Buffer {
    fn drop(&mut self) {
        write_out(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

thread_local! {
    /// `Some` on threads that buffer (see [`buffer_this_thread`]).
    static BUFFER: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Every buffering thread's buffer, for [`flush_all`].
static ALL: Mutex<Vec<Weak<Mutex<Vec<u8>>>>> = Mutex::new(Vec::new());

/// The [`MakeWriter`] to give tracing-subscriber's `fmt` layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrLines;

/// One line's writer; see [`StderrLines`].
#[derive(Debug)]
pub struct Line {
    /// Flush the thread's buffer after this line (warnings and errors).
    urgent: bool,
}

impl<'a> MakeWriter<'a> for StderrLines {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match append(self.urgent, |buf| buf.extend_from_slice(bytes)) {
            None => Ok(()),
            Some(_) => io::stderr().write_all(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends one whole line, written by `line`, to the log: on a buffering
/// thread straight into its buffer (no copy), elsewhere to stderr at once.
/// `urgent` as for a `WARN` or `ERROR` line: the buffer is written out now.
///
/// For a line formatted outside tracing (the access line, see
/// [`AccessLine`](crate::logfmt::AccessLine)); `line` must append exactly
/// one line, newline included.
pub fn append_line(urgent: bool, line: impl FnOnce(&mut Vec<u8>)) {
    if let Some(line) = append(urgent, line) {
        let mut bytes = Vec::new();
        line(&mut bytes);
        // Errors are dropped, as for any log line (see `write_out`).
        let _ = io::stderr().write_all(&bytes);
    }
}

/// Appends `line` to this thread's buffer; gives it back when the thread
/// does not buffer (or the buffer is being flushed: a re-entry).
fn append<F: FnOnce(&mut Vec<u8>)>(urgent: bool, line: F) -> Option<F> {
    BUFFER.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return Some(line);
        };
        let Some(buf) = slot.as_mut() else {
            return Some(line);
        };
        let mut buf = buf.0.lock().unwrap_or_else(PoisonError::into_inner);
        line(&mut buf);
        if urgent || buf.len() >= FLUSH_AT {
            write_out(&mut buf);
        }
        None
    })
}

/// Writes `buf` to stderr and empties it. Errors are dropped: a log line that
/// cannot be written has nowhere else to go.
fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        let _ = io::stderr().write_all(buf);
        buf.clear();
    }
}

/// Makes this thread buffer its log lines from now on. The caller must also
/// run [`flush_task`] on the thread's runtime and call [`flush_this_thread`]
/// before the thread ends.
pub fn buffer_this_thread() {
    BUFFER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let buf = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_AT + 1024)));
            let mut all = ALL.lock().unwrap_or_else(PoisonError::into_inner);
            all.retain(|b| b.strong_count() > 0);
            all.push(Arc::downgrade(&buf));
            *slot = Some(Buffer(buf));
        }
    });
}

/// Writes out this thread's buffered lines, if any.
pub fn flush_this_thread() {
    BUFFER.with(|cell| {
        if let Ok(slot) = cell.try_borrow() {
            if let Some(buf) = slot.as_ref() {
                write_out(&mut buf.0.lock().unwrap_or_else(PoisonError::into_inner));
            }
        }
    });
}

/// Writes out every thread's buffered lines: for a process about to exit
/// without its workers ending (the second shutdown signal).
pub fn flush_all() {
    let all: Vec<_> = ALL
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for buf in all {
        write_out(&mut buf.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Flushes this thread's buffer every [`FLUSH_EVERY`]; spawn it on a
/// current-thread runtime whose thread called [`buffer_this_thread`].
pub async fn flush_task() {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush_this_thread();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffered_len() -> Option<usize> {
        BUFFER.with(|cell| {
            cell.borrow()
                .as_ref()
                .map(|b| b.0.lock().map_or(0, |v| v.len()))
        })
    }

    #[test]
    fn other_threads_write_through() {
        std::thread::spawn(|| {
            let mut line = StderrLines.make_writer();
            line.write_all(b"").unwrap();
            assert_eq!(buffered_len(), None);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn worker_lines_are_buffered_until_flushed() {
        std::thread::spawn(|| {
            buffer_this_thread();
            let info = Line { urgent: false };
            let mut info = info;
            info.write_all(b"").unwrap();
            info.write_all(b"{\"a\":1}\n").unwrap();
            assert_eq!(buffered_len(), Some(8));
            flush_this_thread();
            assert_eq!(buffered_len(), Some(0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn urgent_lines_and_full_buffers_flush_at_once() {
        std::thread::spawn(|| {
            buffer_this_thread();
            Line { urgent: false }.write_all(b"x\n").unwrap();
            assert_eq!(buffered_len(), Some(2));
            Line { urgent: true }.write_all(b"").unwrap();
            assert_eq!(buffered_len(), Some(0));
            let big = vec![b' '; FLUSH_AT];
            Line { urgent: false }.write_all(&big).unwrap();
            assert_eq!(buffered_len(), Some(0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn flush_all_reaches_other_threads_buffers() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            buffer_this_thread();
            Line { urgent: false }.write_all(b"x\n").unwrap();
            tx.send(buffered_len()).unwrap();
            done_rx.recv().unwrap();
            buffered_len()
        });
        assert_eq!(rx.recv().unwrap(), Some(2));
        flush_all();
        done_tx.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), Some(0));
    }

    #[test]
    fn levels_pick_urgency() {
        struct Probe;
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Probe {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let line = StderrLines.make_writer_for(event.metadata());
                let want = *event.metadata().level() <= Level::WARN;
                assert_eq!(line.urgent, want);
            }
        }
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(Probe);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::info!("i");
            tracing::debug!("d");
        });
    }
}
