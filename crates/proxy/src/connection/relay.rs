//! The established phase of a connection whose two sides are plain TCP sockets, as one
//! small hand-written future: the two sockets, one state per direction and at most one
//! timer. An open connection carries only this (a few hundred bytes) while it is quiet;
//! a buffer or a pipe is borrowed from a shared pool only while bytes are moving.
//!
//! Each readable burst is first read into a pooled buffer and written out (one read and
//! one write: cheaper than two splices for a request of a few bytes). A read that fills
//! the buffer marks a bulk flow, and the direction's next bursts go through a pipe with
//! `splice(2)`, zero-copy, until a burst is small again.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::fcntl::splice;
use telemetry::ByteCounters;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::{is_normal_end, PumpEnd, PumpLimits};
use crate::copy::{
    give_buffer, shutdown_tcp_end, splice_flags, splice_unsupported, take_buffer, CopyEnd, Pipe,
    READ_CHUNK, SPLICE_CHUNK,
};

/// What a direction holds between polls.
#[derive(Default)]
enum Held {
    /// Nothing: waiting for the reader.
    #[default]
    Nothing,
    /// Bytes `from..to` of a pooled buffer are still to be written.
    Buffer {
        buf: Vec<u8>,
        // `u32`: a pooled buffer is 64 KiB, and every open connection carries two of
        // these states.
        from: u32,
        to: u32,
    },
    /// `left` bytes in a pipe are still to be written.
    Pipe { pipe: Pipe, left: usize },
}

/// One direction: reader to writer.
#[derive(Default)]
struct Dir {
    held: Held,
    /// The last burst filled a buffer: splice the next one.
    bulk: bool,
    /// These sockets cannot splice (or no pipe could be had): copy only.
    no_splice: bool,
    /// Bytes have flowed (a reset after data is an ordinary end).
    moved: bool,
    done: bool,
}

impl Drop for Dir {
    fn drop(&mut self) {
        // A buffer goes back to the pool whatever it held; a pipe with bytes in it is
        // closed with them (only empty pipes are reused).
        if let Held::Buffer { buf, .. } = std::mem::take(&mut self.held) {
            give_buffer(buf);
        }
    }
}

impl Dir {
    fn error(&self, error: io::Error) -> CopyEnd {
        CopyEnd::Error {
            error,
            after_data: self.moved,
        }
    }

    /// Moves bytes from `r` to `w` until `r` would block (`Pending`), ends (`Eof`, with
    /// `w` shut down for sending unless `last`) or fails. `count` is told every byte
    /// written. `last`: the other direction is over, so both sockets are closed as soon
    /// as this one ends, and closing `w` sends its end of stream.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        r: &TcpStream,
        w: &TcpStream,
        count: &dyn Fn(u64),
        last: bool,
    ) -> Poll<CopyEnd> {
        loop {
            if let Err(e) = ready!(self.poll_flush(cx, w, count)) {
                return Poll::Ready(self.error(e));
            }
            if let Err(e) = ready!(r.poll_read_ready(cx)) {
                return Poll::Ready(self.error(e));
            }
            let read = if self.bulk && !self.no_splice {
                self.splice_in(r)
            } else {
                self.read_in(r)
            };
            match read {
                Ok(true) => {}
                // `try_io` cleared the readiness: the next `poll_read_ready`
                // registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(false) => return Poll::Ready(self.finish(w, last)),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(self.finish(w, last))
                }
                Err(e) => return Poll::Ready(self.error(e)),
            }
        }
    }

    /// Reads one burst into a pooled buffer; `Ok(false)` at end of stream.
    fn read_in(&mut self, r: &TcpStream) -> io::Result<bool> {
        let mut buf = take_buffer();
        let mut got = 0;
        let read = r.try_io(Interest::READABLE, || {
            got = io::Read::read(&mut &*socket2::SockRef::from(r), &mut buf)?;
            if got > 0 && got < buf.len() {
                // A short read emptied the socket: report it as drained, so the
                // readiness is cleared now and the next poll waits for the next edge
                // instead of spending a read on EAGAIN. An end of stream that follows
                // is not missed: tokio never clears the read-closed readiness. (The one
                // short read that leaves bytes queued stops at a TCP urgent mark; the
                // bytes after it wait for the peer's next segment or its close.
                // Urgent data is obsolete, RFC 6093, and was never relayed.)
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match read {
            Ok(()) if got == 0 => {
                give_buffer(buf);
                Ok(false)
            }
            Err(e) if got == 0 || e.kind() != io::ErrorKind::WouldBlock => {
                give_buffer(buf);
                Err(e)
            }
            _ => {
                self.bulk = got == buf.len();
                self.held = Held::Buffer {
                    buf,
                    from: 0,
                    to: got as u32,
                };
                Ok(true)
            }
        }
    }

    /// Splices one burst into a pooled pipe; `Ok(false)` at end of stream.
    fn splice_in(&mut self, r: &TcpStream) -> io::Result<bool> {
        let pipe = match Pipe::take() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for splice; copying through a buffer");
                self.no_splice = true;
                return Ok(true);
            }
        };
        let spliced = r.try_io(Interest::READABLE, || {
            splice(r, None, &pipe.write, None, SPLICE_CHUNK, splice_flags())
                .map_err(io::Error::from)
        });
        match spliced {
            Ok(0) => {
                pipe.give();
                Ok(false)
            }
            Ok(n) => {
                self.bulk = n >= READ_CHUNK;
                self.held = Held::Pipe { pipe, left: n };
                Ok(true)
            }
            Err(e) if splice_unsupported(&e) => {
                pipe.give();
                self.no_splice = true;
                Ok(true)
            }
            Err(e) => {
                pipe.give();
                Err(e)
            }
        }
    }

    /// Writes out what the direction holds.
    fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        w: &TcpStream,
        count: &dyn Fn(u64),
    ) -> Poll<io::Result<()>> {
        loop {
            let n = match &mut self.held {
                Held::Nothing => return Poll::Ready(Ok(())),
                Held::Buffer { buf, from, to } if *from < *to => {
                    ready!(w.poll_write_ready(cx))?;
                    match w.try_write(&buf[*from as usize..*to as usize]) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => {
                            *from += n as u32;
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                Held::Pipe { pipe, left } if *left > 0 => {
                    ready!(w.poll_write_ready(cx))?;
                    let out = w.try_io(Interest::WRITABLE, || {
                        splice(&pipe.read, None, w, None, *left, splice_flags())
                            .map_err(io::Error::from)
                    });
                    match out {
                        Ok(0) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::WriteZero,
                                "splice moved nothing out of a non-empty pipe",
                            )))
                        }
                        Ok(n) => {
                            *left -= n.min(*left);
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                // Everything written: the buffer or the (empty) pipe goes back.
                _ => {
                    match std::mem::take(&mut self.held) {
                        Held::Buffer { buf, .. } => give_buffer(buf),
                        Held::Pipe { pipe, .. } => pipe.give(),
                        Held::Nothing => {}
                    }
                    continue;
                }
            };
            count(n as u64);
            self.moved = true;
        }
    }

    /// End of stream: shut the writer's sending side, so a half-closing client still
    /// receives the whole response. Not when this is the `last` direction: both sockets
    /// are closed next, which sends the same end of stream one call cheaper (neither has
    /// unread bytes, so neither close turns into a reset).
    fn finish(&mut self, w: &TcpStream, last: bool) -> CopyEnd {
        self.done = true;
        if last {
            return CopyEnd::Eof;
        }
        shutdown_tcp_end(w, self.moved)
    }
}

/// The idle and maximum-duration limits of a relay, on one timer.
pub(super) struct Limits {
    sleep: Pin<Box<Sleep>>,
    idle: Option<std::time::Duration>,
    end_at: Option<Instant>,
    /// Byte counts at the last look, and when they last changed.
    last: (u64, u64),
    quiet_since: Instant,
}

impl Limits {
    /// `bytes` as they stand now (a replayed request head is counted before the copy
    /// starts): the idle clock starts from them.
    pub(super) fn new(limits: PumpLimits, bytes: &ByteCounters) -> Option<Box<Self>> {
        if limits.idle_timeout.is_none() && limits.max_duration.is_none() {
            return None;
        }
        let now = Instant::now();
        let end_at = limits.max_duration.map(|d| now + d);
        let first = earliest(limits.idle_timeout.map(|t| now + t), end_at);
        // Boxed: most connections have no limit and should not reserve room for one.
        Some(Box::new(Self {
            sleep: Box::pin(tokio::time::sleep_until(first.unwrap_or(now))),
            idle: limits.idle_timeout,
            end_at,
            last: (bytes.received(), bytes.sent()),
            quiet_since: now,
        }))
    }

    /// `Ready` with how the connection ends when a limit is reached. The timer wakes a
    /// quiet connection once, at its deadline; one that moved bytes since the last look
    /// is looked at again a quarter timeout later (the copy loops never touch a timer).
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, bytes: &ByteCounters) -> Poll<PumpEnd> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
            if self.end_at.is_some_and(|end| now >= end) {
                return Poll::Ready(PumpEnd::DurationLimit);
            }
            let idle_at = self.idle.map(|timeout| {
                let counts = (bytes.received(), bytes.sent());
                if counts != self.last {
                    self.last = counts;
                    self.quiet_since = now;
                    now + (timeout / 4).max(std::time::Duration::from_millis(10))
                } else {
                    self.quiet_since + timeout
                }
            });
            if idle_at.is_some_and(|at| at <= now) {
                return Poll::Ready(PumpEnd::Idle);
            }
            let next = earliest(idle_at, self.end_at).unwrap_or(now);
            self.sleep.as_mut().reset(next);
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Copies both ways between two plain TCP sockets until both directions end, one fails,
/// a limit is reached or the proxy cuts its connections. Request bytes (downstream to
/// upstream) are counted as received, response bytes as sent.
pub struct Relay<'a> {
    down: TcpStream,
    up: TcpStream,
    request: Dir,
    response: Dir,
    bytes: &'a ByteCounters,
    limits: Option<Box<Limits>>,
    cut: Pin<Box<WaitForCancellationFuture<'a>>>,
    log_ctx: &'a (dyn std::fmt::Display + Sync),
    /// Flips every poll: which direction goes first.
    flip: bool,
}

impl<'a> Relay<'a> {
    pub(super) fn new(
        down: TcpStream,
        up: TcpStream,
        bytes: &'a ByteCounters,
        limits: Option<Box<Limits>>,
        cut: &'a CancellationToken,
        log_ctx: &'a (dyn std::fmt::Display + Sync),
    ) -> Self {
        Self {
            down,
            up,
            request: Dir::default(),
            response: Dir::default(),
            bytes,
            limits,
            cut: Box::pin(cut.cancelled()),
            log_ctx,
            flip: false,
        }
    }
}

/// Logs how a direction of a relayed connection ended; true when the connection is
/// over (an error ends both directions).
pub(super) fn log_end(log_ctx: &dyn std::fmt::Display, end: CopyEnd, what: &str) -> bool {
    match end {
        CopyEnd::Eof => false,
        CopyEnd::Error { error, after_data } => {
            if after_data && is_normal_end(&error) {
                tracing::debug!(conn = %log_ctx, direction = what, %error, "connection ended by the peer");
            } else {
                tracing::debug!(conn = %log_ctx, direction = what, %error, "connection ended with an error");
            }
            true
        }
    }
}

impl Future for Relay<'_> {
    type Output = PumpEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PumpEnd> {
        let this = self.get_mut();
        // The cut and the limits first: a bulk direction may use up the task's I/O
        // budget, after which nothing polled later makes progress in this turn.
        if this.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(PumpEnd::Cut);
        }
        if let Some(limits) = &mut this.limits {
            if let Poll::Ready(end) = limits.poll(cx, this.bytes) {
                return Poll::Ready(end);
            }
        }
        // Which direction goes first alternates, so neither starves the other.
        this.flip = !this.flip;
        for request in [this.flip, !this.flip] {
            let bytes = this.bytes;
            let Relay {
                request: req,
                response: resp,
                ..
            } = this;
            let (dir, last, r, w, what, count): (_, _, _, _, _, &dyn Fn(u64)) = if request {
                (req, resp.done, &this.down, &this.up, "request", &|n| {
                    bytes.add_received(n)
                })
            } else {
                (resp, req.done, &this.up, &this.down, "response", &|n| {
                    bytes.add_sent(n)
                })
            };
            if dir.done {
                continue;
            }
            if let Poll::Ready(end) = dir.poll_move(cx, r, w, count, last) {
                if log_end(this.log_ctx, end, what) {
                    return Poll::Ready(PumpEnd::Done);
                }
            }
        }
        if this.request.done && this.response.done {
            return Poll::Ready(PumpEnd::Done);
        }
        Poll::Pending
    }
}
