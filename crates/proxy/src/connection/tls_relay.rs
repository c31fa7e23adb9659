//! The established phase of a connection with mutual TLS on one side (the peer
//! sidecar) and plain TCP on the other (the local app or client), as one hand-written
//! future that drives the rustls session itself:
//!
//! - TLS to plain: records are read and decrypted by rustls, and what is decrypted is
//!   gathered into a pooled buffer, so a bulk flow leaves in large writes (a write
//!   per record costs more in wake-ups than the copy saves); no buffer is held while
//!   the connection is quiet;
//! - plain to TLS: a pooled buffer is borrowed while bytes wait on the plain socket,
//!   handed to rustls to encrypt and given back at once.
//!
//! The peer's metadata-exchange frame, when there is one, is read off the front of the
//! TLS side's plaintext with the same rules as [`crate::exchange::read_peer_frame`]:
//! the other direction never waits for it.

use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use mx::{Decoder, Progress, Step};
use telemetry::ByteCounters;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::relay::{log_end, Limits};
use super::{MxRead, PumpEnd};
use crate::copy::{give_buffer, shutdown_tcp_end, take_buffer, CopyEnd};
use crate::exchange::{self, ExchangeError, PeerFrame};

/// `io::Read` over a nonblocking tokio socket (rustls reads records through it).
struct SocketRead<'a>(&'a TcpStream);

impl Read for SocketRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // A `WouldBlock` clears the socket's readiness, so the next poll registers.
        self.0.try_read(buf)
    }
}

/// `io::Write` over a nonblocking tokio socket (rustls writes records through it).
struct SocketWrite<'a>(&'a TcpStream);

impl Write for SocketWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The TLS side: its socket and its session.
struct Tls {
    tcp: TcpStream,
    session: rustls::Connection,
    /// Our sending side is shut down (close_notify sent and flushed).
    write_closed: bool,
}

impl Tls {
    /// Writes what rustls has queued (records, alerts) to the socket.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.session.wants_write() && !self.write_closed {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.session.write_tls(&mut SocketWrite(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads records from the socket and decrypts them (`Ready(Ok)` once something was
    /// read, end of stream included).
    fn poll_read_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            if self.read_records_now()? {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Reads what the socket holds now and decrypts it; false when it had nothing (the
    /// socket's readiness is then cleared, so the next poll registers).
    fn read_records_now(&mut self) -> io::Result<bool> {
        match self.session.read_tls(&mut SocketRead(&self.tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        if let Err(e) = self.session.process_new_packets() {
            // rustls queued an alert for the peer: send it if the socket takes it now.
            let _ = self.session.write_tls(&mut SocketWrite(&self.tcp));
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(true)
    }
}

/// Reading the peer's metadata-exchange frame off the front of the TLS plaintext.
struct MxFront<'a> {
    read: MxRead<'a>,
    decoder: Decoder,
    deadline: Pin<Box<Sleep>>,
    /// Nothing arrived within the time limit and the peer was reported unknown.
    quiet_reported: bool,
}

impl<'a> MxFront<'a> {
    fn new(read: MxRead<'a>) -> Self {
        Self {
            decoder: Decoder::new(read.max_frame_len),
            deadline: Box::pin(tokio::time::sleep(read.timeout)),
            quiet_reported: false,
            read,
        }
    }

    /// Reports the peer once: on a quiet timeout, or with the frame's outcome.
    fn report(&mut self, peer: Option<mx::PeerMetadata>, reason: Option<String>) {
        if !self.quiet_reported {
            (self.read.on_result)(peer, reason);
        }
    }

    /// Feeds the plaintext rustls holds to the decoder, reading records as needed,
    /// until the frame (or its absence) is known.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        tls: &mut Tls,
    ) -> Poll<Result<PeerFrame, ExchangeError>> {
        loop {
            let mut reader = tls.session.reader();
            let chunk = match reader.fill_buf() {
                Ok([]) => return Poll::Ready(exchange::end_of_stream(&self.decoder)),
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(exchange::end_of_stream(&self.decoder))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match tls.poll_read_records(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                        Poll::Pending => return self.poll_deadline(cx),
                    }
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            };
            let was_mid_frame = self.decoder.is_mid_frame();
            let len = chunk.len();
            match self.decoder.feed(chunk) {
                Ok(Step::NeedMore) => {
                    reader.consume(len);
                    if !was_mid_frame {
                        // The frame's time limit runs from its first byte.
                        let at = Instant::now() + self.read.timeout;
                        self.deadline.as_mut().reset(at);
                    }
                }
                // The current chunk stays in rustls's buffer and is forwarded as usual.
                Ok(Step::NotAFrame { buffered }) => {
                    return Poll::Ready(Ok(PeerFrame {
                        peer: None,
                        unknown_reason: Some(
                            "the peer's stream does not start with an istio-peer-exchange frame"
                                .into(),
                        ),
                        leftover: buffered,
                        eof: false,
                    }))
                }
                Ok(Step::Frame { consumed, peer }) => {
                    reader.consume(consumed);
                    return Poll::Ready(Ok(exchange::frame_result(peer, Vec::new())));
                }
                Err(e) => return Poll::Ready(Err(ExchangeError::TooLarge(e))),
            }
        }
    }

    /// Nothing more to read now: apply the time limits.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Result<PeerFrame, ExchangeError>> {
        let mid_frame = self.decoder.is_mid_frame();
        if !mid_frame && self.quiet_reported {
            return Poll::Pending;
        }
        ready!(self.deadline.as_mut().poll(cx));
        if mid_frame {
            let progress: Progress = self.decoder.progress();
            return Poll::Ready(match exchange::partial_magic(progress) {
                Some(magic) => Ok(exchange::not_a_frame(
                    magic,
                    false,
                    "no istio-peer-exchange frame",
                )),
                None => Err(ExchangeError::Stalled {
                    progress,
                    timeout: self.read.timeout,
                }),
            });
        }
        // The peer may be waiting for us (a server-first protocol): report the
        // connection now with an unknown peer, and keep reading.
        (self.read.on_result)(
            None,
            Some("no istio-peer-exchange frame within the time limit".into()),
        );
        self.quiet_reported = true;
        Poll::Pending
    }
}

/// TLS to plain.
#[derive(Default)]
struct FromTls<'a> {
    mx: Option<Box<MxFront<'a>>>,
    /// Plaintext waiting for the plain socket, `buf[from..to]`: a pooled buffer while
    /// bytes flow, or what the frame decoder took that turned out to be application
    /// data. Empty while the connection is quiet.
    buf: Vec<u8>,
    from: usize,
    to: usize,
    /// The TLS side ended: once `buf` is written, the plain side is shut down.
    eof: bool,
    /// The TLS side failed after `buf` was gathered: reported once `buf` is written
    /// (decrypted bytes are delivered before the error, as a plain socket would).
    failed: Option<io::Error>,
    moved: bool,
    done: bool,
}

impl Drop for FromTls<'_> {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.buf));
    }
}

impl FromTls<'_> {
    fn error(&self, error: io::Error) -> CopyEnd {
        CopyEnd::Error {
            error,
            after_data: self.moved,
        }
    }

    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        tls: &mut Tls,
        plain: &TcpStream,
        count: &dyn Fn(u64),
    ) -> Poll<Result<CopyEnd, ExchangeError>> {
        if let Some(front) = &mut self.mx {
            let frame = ready!(front.poll_frame(cx, tls))?;
            front.report(frame.peer, frame.unknown_reason);
            (self.from, self.to) = (0, frame.leftover.len());
            self.buf = frame.leftover;
            self.mx = None;
        }
        loop {
            while self.from < self.to {
                if let Err(e) = ready!(plain.poll_write_ready(cx)) {
                    return Poll::Ready(Ok(self.error(e)));
                }
                match plain.try_write(&self.buf[self.from..self.to]) {
                    Ok(0) => return Poll::Ready(Ok(self.error(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => {
                        self.from += n;
                        count(n as u64);
                        self.moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Ok(self.error(e))),
                }
            }
            give_buffer(std::mem::take(&mut self.buf));
            (self.from, self.to) = (0, 0);
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Ok(self.error(e)));
            }
            if self.eof {
                return Poll::Ready(Ok(self.finish(plain)));
            }
            // Gather what is decrypted and what the socket holds now into one buffer,
            // so a bulk flow is written in large pieces rather than a record at a time.
            let mut buf = take_buffer();
            let mut n = 0;
            let gathered = loop {
                match tls.session.reader().read(&mut buf[n..]) {
                    // close_notify: the peer's clean end.
                    Ok(0) => {
                        self.eof = true;
                        break Ok(());
                    }
                    Ok(k) => {
                        n += k;
                        if n == buf.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match tls.read_records_now() {
                            Ok(true) => {}
                            Ok(false) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    }
                    // The peer closed TCP without close_notify: for a byte stream, an end.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.eof = true;
                        break Ok(());
                    }
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = gathered {
                if n == 0 {
                    give_buffer(buf);
                    return Poll::Ready(Ok(self.error(e)));
                }
                self.failed = Some(e);
            }
            if n == 0 {
                give_buffer(buf);
                if !self.eof {
                    if let Err(e) = ready!(tls.poll_read_records(cx)) {
                        return Poll::Ready(Ok(self.error(e)));
                    }
                }
                continue;
            }
            (self.buf, self.from, self.to) = (buf, 0, n);
        }
    }

    fn finish(&mut self, plain: &TcpStream) -> CopyEnd {
        self.done = true;
        shutdown_tcp_end(plain, self.moved)
    }
}

/// Plain to TLS.
#[derive(Default)]
struct ToTls {
    /// Plaintext handed to rustls and not yet on the wire.
    unflushed: u64,
    eof: bool,
    moved: bool,
    done: bool,
}

impl ToTls {
    fn error(&self, error: io::Error) -> CopyEnd {
        CopyEnd::Error {
            error,
            after_data: self.moved,
        }
    }

    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        plain: &TcpStream,
        tls: &mut Tls,
        count: &dyn Fn(u64),
    ) -> Poll<CopyEnd> {
        loop {
            if let Err(e) = ready!(tls.poll_flush(cx)) {
                return Poll::Ready(self.error(e));
            }
            if self.unflushed > 0 {
                count(self.unflushed);
                self.unflushed = 0;
                self.moved = true;
            }
            if self.eof {
                // close_notify is flushed: shut the socket's sending side, as
                // tokio-rustls's shutdown does.
                self.done = true;
                tls.write_closed = true;
                return Poll::Ready(shutdown_tcp_end(&tls.tcp, self.moved));
            }
            if let Err(e) = ready!(plain.poll_read_ready(cx)) {
                return Poll::Ready(self.error(e));
            }
            let mut buf = take_buffer();
            let read = plain.try_read(&mut buf);
            let result = match read {
                Ok(0) => {
                    self.eof = true;
                    tls.session.send_close_notify();
                    Ok(())
                }
                // No buffer limit on the session: rustls takes it all, and the flush
                // above empties it before the next read, so at most one read's worth
                // waits in rustls.
                Ok(n) => tls.session.writer().write_all(&buf[..n]).map(|()| {
                    self.unflushed += n as u64;
                }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.eof = true;
                    tls.session.send_close_notify();
                    Ok(())
                }
                Err(e) => Err(e),
            };
            give_buffer(buf);
            if let Err(e) = result {
                return Poll::Ready(self.error(e));
            }
        }
    }
}

/// Copies both ways between a TLS side and a plain TCP side until both directions end,
/// one fails, the metadata exchange fails, a limit is reached or the proxy cuts its
/// connections. Request bytes are counted as received, response bytes as sent.
pub struct TlsRelay<'a, 'm> {
    plain: TcpStream,
    tls: Box<Tls>,
    /// The TLS side is the downstream (inbound); else the upstream (outbound).
    tls_downstream: bool,
    from_tls: FromTls<'m>,
    to_tls: ToTls,
    bytes: &'a ByteCounters,
    limits: Option<Box<Limits>>,
    cut: Pin<Box<WaitForCancellationFuture<'a>>>,
    log_ctx: &'a (dyn std::fmt::Display + Sync),
    /// Flips every poll: which direction goes first.
    flip: bool,
}

/// One side of a [`TlsRelay`]: the TLS session and the socket under it.
pub(super) type TlsSide = (TcpStream, rustls::Connection);

impl<'a, 'm> TlsRelay<'a, 'm> {
    /// `mx`, when given, reads the peer's frame off the TLS side.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        plain: TcpStream,
        (tcp, mut session): TlsSide,
        tls_downstream: bool,
        mx: Option<MxRead<'m>>,
        bytes: &'a ByteCounters,
        limits: Option<Box<Limits>>,
        cut: &'a CancellationToken,
        log_ctx: &'a (dyn std::fmt::Display + Sync),
    ) -> Self {
        // Reads are bounded by the pooled buffer and flushed before the next one.
        session.set_buffer_limit(None);
        Self {
            plain,
            tls: Box::new(Tls {
                tcp,
                session,
                write_closed: false,
            }),
            tls_downstream,
            from_tls: {
                let mut from_tls = FromTls::default();
                from_tls.mx = mx.map(|m| Box::new(MxFront::new(m)));
                from_tls
            },
            to_tls: ToTls::default(),
            bytes,
            limits,
            cut: Box::pin(cut.cancelled()),
            log_ctx,
            flip: false,
        }
    }
}

impl Future for TlsRelay<'_, '_> {
    type Output = PumpEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PumpEnd> {
        let this = self.get_mut();
        let bytes = this.bytes;
        let received = |n| bytes.add_received(n);
        let sent = |n| bytes.add_sent(n);
        let (from_count, to_count, from_name, to_name): (&dyn Fn(u64), &dyn Fn(u64), _, _) =
            if this.tls_downstream {
                (&received, &sent, "request", "response")
            } else {
                (&sent, &received, "response", "request")
            };
        // The cut and the limits first: a bulk direction may use up the task's I/O
        // budget, after which nothing polled later makes progress in this turn.
        if this.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(PumpEnd::Cut);
        }
        if let Some(limits) = &mut this.limits {
            if let Poll::Ready(end) = limits.poll(cx, bytes) {
                return Poll::Ready(end);
            }
        }
        // Which direction goes first alternates, so neither starves the other.
        this.flip = !this.flip;
        for from_tls in [this.flip, !this.flip] {
            if from_tls && !this.from_tls.done {
                match this
                    .from_tls
                    .poll_move(cx, &mut this.tls, &this.plain, from_count)
                {
                    Poll::Ready(Err(e)) => return Poll::Ready(PumpEnd::Exchange(e)),
                    Poll::Ready(Ok(end)) => {
                        if log_end(this.log_ctx, end, from_name) {
                            return Poll::Ready(PumpEnd::Done);
                        }
                    }
                    Poll::Pending => {}
                }
            } else if !from_tls && !this.to_tls.done {
                let moved = this
                    .to_tls
                    .poll_move(cx, &this.plain, &mut this.tls, to_count);
                if let Poll::Ready(end) = moved {
                    if log_end(this.log_ctx, end, to_name) {
                        return Poll::Ready(PumpEnd::Done);
                    }
                }
            }
        }
        // What reading queued (alerts, key updates) goes out now, not with the next
        // plaintext; a failure shows on the next write.
        let _ = this.tls.poll_flush(cx);
        if this.from_tls.done && this.to_tls.done {
            return Poll::Ready(PumpEnd::Done);
        }
        Poll::Pending
    }
}
