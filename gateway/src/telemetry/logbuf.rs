//! The access log's writer: each thread appends its lines to a buffer of its own, and one
//! background thread writes the buffers to stderr every [`FLUSH_EVERY`] (or sooner once one
//! holds [`FLUSH_AT`] bytes), like nginx's `access_log … buffer= flush=`.
//!
//! Why not a write per line: with several runtime workers, one `write(2)` per request on the
//! shared stderr serialises the workers on stderr's lock (a futex wait and wake for about every
//! other request) and puts a syscall on the request path. Why not `tracing-appender`'s
//! non-blocking writer: it sends every line through one channel to its writer thread, which
//! wakes that thread (another futex) for every line that finds it idle. Here a line costs an
//! uncontended lock and a copy; the writer thread is woken once per [`FLUSH_AT`] bytes at most.
//!
//! A buffer never grows past [`MAX_BUFFERED`]: when stderr cannot keep up, further lines are
//! dropped and counted (`gateway_access_log_dropped_lines_total`), so a slow log never blocks or
//! exhausts the proxy. [`flush`] writes everything out (at exit).

use std::{
    cell::RefCell,
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, OnceLock},
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

use super::metrics;

/// The longest a line waits in a buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full wakes the writer thread at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// A buffer never holds more; lines beyond are dropped and counted.
pub const MAX_BUFFERED: usize = 4 * 1024 * 1024;

type Buffer = Arc<Mutex<Vec<u8>>>;

struct Shared {
    /// Every thread's buffer, registered at its first line.
    buffers: Mutex<Vec<Buffer>>,
    /// Set when a buffer reached [`FLUSH_AT`] or a flush is asked for.
    wake: Mutex<bool>,
    woken: Condvar,
}

fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let shared =
            Arc::new(Shared { buffers: Mutex::new(Vec::new()), wake: Mutex::new(false), woken: Condvar::new() });
        let writer = shared.clone();
        let spawned = std::thread::Builder::new().name("gateway-log".into()).spawn(move || {
            loop {
                let woken = writer.wake.lock().unwrap_or_else(|p| p.into_inner());
                let (mut woken, _) =
                    writer.woken.wait_timeout_while(woken, FLUSH_EVERY, |w| !*w).unwrap_or_else(|p| p.into_inner());
                *woken = false;
                drop(woken);
                writer.write_out();
            }
        });
        if let Err(e) = spawned {
            // Lines then wait for `flush` (or are dropped once the buffers are full).
            eprintln!("cannot start the access log writer thread: {e}");
        }
        shared
    })
}

impl Shared {
    /// Swaps every buffer for an empty one and writes what they held, in one `write` each.
    fn write_out(&self) {
        let buffers: Vec<Buffer> = self.buffers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut pending = Vec::new();
        let mut stderr = io::stderr().lock();
        for buffer in buffers {
            {
                let mut held = buffer.lock().unwrap_or_else(|p| p.into_inner());
                if held.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *held, &mut pending);
            }
            // Nowhere to report a failed write of the log itself.
            let _ = stderr.write_all(&pending);
            pending.clear();
        }
        let _ = stderr.flush();
    }
}

thread_local! {
    static MINE: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Appends one formatted line to this thread's buffer.
pub fn append(line: &[u8]) {
    MINE.with(|mine| {
        let mut mine = mine.borrow_mut();
        let buffer = mine.get_or_insert_with(|| {
            let buffer: Buffer = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_AT)));
            shared().buffers.lock().unwrap_or_else(|p| p.into_inner()).push(buffer.clone());
            buffer
        });
        let mut held = buffer.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() + line.len() > MAX_BUFFERED {
            drop(held);
            metrics::global().access_log_dropped();
            return;
        }
        let before = held.len();
        held.extend_from_slice(line);
        let crossed = before < FLUSH_AT && held.len() >= FLUSH_AT;
        drop(held);
        if crossed {
            let shared = shared();
            *shared.wake.lock().unwrap_or_else(|p| p.into_inner()) = true;
            shared.woken.notify_one();
        }
    });
}

/// Writes every buffered line to stderr now (at exit, and in tests).
pub fn flush() {
    shared().write_out();
}

/// The access log's [`MakeWriter`] (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct Buffered;

/// Appends to the calling thread's buffer. The formatter hands over each line whole in one
/// `write`, and a buffer belongs to one thread, so lines never interleave.
#[derive(Debug, Default)]
pub struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_stay_whole_and_reach_the_buffers() {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        Buffered.make_writer().write_all(format!("thread {t} line {i}\n").as_bytes()).expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let held: Vec<u8> =
            shared().buffers.lock().expect("buffers").iter().flat_map(|b| b.lock().expect("buffer").clone()).collect();
        let text = String::from_utf8(held).expect("utf-8");
        // Whatever the writer thread already took, every line still here is whole.
        assert!(text.lines().all(|l| l.starts_with("thread ") && l.contains(" line ")), "{text}");
    }
}
