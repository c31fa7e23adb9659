//! Copying out of a plain TCP socket without holding a buffer while it is quiet: wait
//! for readiness, borrow a buffer from a small shared pool, read until the socket
//! would block, give the buffer back.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{is_eof, shutdown_end, write_flush, write_prefix, CopyEnd};

/// Size of a pooled read buffer.
pub const READ_CHUNK: usize = 64 * 1024;
/// Buffers kept for reuse; more than this many in flight are freed when returned.
const POOL_BUFFERS: usize = 16;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of [`READ_CHUNK`] bytes, reused when one is free.
pub(crate) fn take_buffer() -> Vec<u8> {
    let reused = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
    reused.unwrap_or_else(|| vec![0; READ_CHUNK])
}

/// Returns a buffer to the pool (or frees it when the pool is full).
pub(crate) fn give_buffer(buf: Vec<u8>) {
    if buf.len() != READ_CHUNK {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < POOL_BUFFERS {
        pool.push(buf);
    }
}

/// Holds a pooled buffer and gives it back however the holder ends (also on
/// cancellation).
struct Lease(Vec<u8>);

impl Drop for Lease {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.0));
    }
}

/// A shared reference to a TCP stream, read and written through tokio's readiness,
/// so both directions of a connection can use the same socket at once.
#[derive(Clone, Copy, Debug)]
pub struct TcpRef<'a>(pub &'a TcpStream);

impl AsyncRead for TcpRef<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // A `WouldBlock` clears the readiness, so the next poll registers the waker.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TcpRef<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// Copies `prefix`, then everything `reader` sends, to `writer`, like
/// [`copy_one_way`](super::copy_one_way), holding a read buffer only while data is
/// waiting on `reader`.
pub async fn copy_ready_one_way<W>(
    reader: &TcpStream,
    writer: &mut W,
    prefix: &[u8],
    count: &(dyn Fn(u64) + Send + Sync),
) -> CopyEnd
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut moved = match write_prefix(writer, prefix, count).await {
        Ok(moved) => moved,
        Err(end) => return end,
    };
    loop {
        match drain_ready(reader, writer, count, &mut moved).await {
            Ok(true) => return shutdown_end(writer, moved).await,
            Ok(false) => {}
            Err(error) => {
                return CopyEnd::Error {
                    error,
                    after_data: moved,
                }
            }
        }
    }
}

/// Waits until `reader` is readable, then moves what it holds to `writer` with a
/// borrowed buffer. True at end of stream.
pub(crate) async fn drain_ready<W>(
    reader: &TcpStream,
    writer: &mut W,
    count: &(dyn Fn(u64) + Send + Sync),
    moved: &mut bool,
) -> io::Result<bool>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    reader.readable().await?;
    let mut buf = Lease(take_buffer());
    loop {
        match reader.try_read(&mut buf.0) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                write_flush(writer, &buf.0[..n]).await?;
                count(n as u64);
                *moved = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if is_eof(&e) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}
