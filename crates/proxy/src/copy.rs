//! Moving bytes one way between two streams, counting them in one place.
//!
//! A connection runs two of these at once (see `connection::pump`); each one ends by
//! shutting down its writer, so a client that half-closes still receives the whole
//! response. Three ways, fastest first: [`splice_one_way`] between two plain TCP
//! sockets (zero-copy, a pipe only while data flows); [`copy_ready_one_way`] out of a
//! plain TCP socket into any writer (a pooled buffer only while data waits); and
//! [`copy_one_way`] for any stream (TLS), whose buffer starts small, grows while reads
//! fill it and shrinks back after a quiet second.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod splice;
mod tcp;

pub use splice::splice_one_way;
pub(crate) use splice::{
    flags as splice_flags, unsupported as splice_unsupported, Pipe, SPLICE_CHUNK,
};
pub use tcp::{copy_ready_one_way, TcpRef, READ_CHUNK};
pub(crate) use tcp::{give_buffer, take_buffer};

/// First buffer size of a direction.
pub const INITIAL_BUFFER: usize = 8 * 1024;
/// Largest buffer a direction grows to.
pub const MAX_BUFFER: usize = 256 * 1024;
/// A grown buffer goes back to the initial size after this long without data.
const SHRINK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How one direction ended.
#[derive(Debug)]
pub enum CopyEnd {
    /// The reader reached end of stream and the writer was shut down.
    Eof,
    /// An I/O error on either side. `after_data` tells whether bytes had flowed, in
    /// which case a reset is how many peers end connections, not a failure.
    Error { error: io::Error, after_data: bool },
}

/// A read buffer that grows on full reads and shrinks when idle.
#[derive(Debug)]
pub struct AdaptiveBuffer {
    buf: Vec<u8>,
}

impl Default for AdaptiveBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl AdaptiveBuffer {
    /// A buffer of [`INITIAL_BUFFER`] bytes.
    pub fn new() -> Self {
        Self {
            buf: vec![0; INITIAL_BUFFER],
        }
    }

    /// Current capacity used for reads.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Never true (a buffer always has room); present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads once. A grown buffer shrinks if nothing arrives for a while; the read
    /// then continues with the small buffer.
    pub async fn read_from<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        reader: &mut R,
    ) -> io::Result<usize> {
        if self.buf.len() > INITIAL_BUFFER {
            // `read` is cancel-safe: a timed-out read consumed nothing.
            if let Ok(r) = tokio::time::timeout(SHRINK_AFTER_IDLE, reader.read(&mut self.buf)).await
            {
                return self.grow_if_full(r);
            }
            self.buf = vec![0; INITIAL_BUFFER];
        }
        let r = reader.read(&mut self.buf).await;
        self.grow_if_full(r)
    }

    fn grow_if_full(&mut self, r: io::Result<usize>) -> io::Result<usize> {
        if let Ok(n) = r {
            if n == self.buf.len() && n < MAX_BUFFER {
                // Grow after the caller used the data: keep the filled bytes in place.
                let mut bigger = std::mem::take(&mut self.buf);
                bigger.resize((n * 2).min(MAX_BUFFER), 0);
                self.buf = bigger;
            }
        }
        r
    }

    /// The first `n` bytes (what the last read returned).
    pub fn filled(&self, n: usize) -> &[u8] {
        &self.buf[..n.min(self.buf.len())]
    }
}

/// TLS peers that close without `close_notify` surface as `UnexpectedEof`; for a byte
/// stream that is an ordinary end.
fn is_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

/// Copies `prefix` and then everything from `reader` to `writer`, calling `count` with
/// the number of bytes after each successful write, and shuts `writer` down at end of
/// stream.
pub async fn copy_one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    prefix: &[u8],
    count: &(dyn Fn(u64) + Send + Sync),
) -> CopyEnd
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut moved = match write_prefix(writer, prefix, count).await {
        Ok(moved) => moved,
        Err(end) => return end,
    };
    let mut buf = AdaptiveBuffer::new();
    loop {
        let n = match buf.read_from(reader).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_eof(&e) => break,
            Err(error) => {
                return CopyEnd::Error {
                    error,
                    after_data: moved,
                }
            }
        };
        // The buffer may have grown after the read; `filled` still points at the data.
        if let Err(error) = write_flush(writer, buf.filled(n)).await {
            return CopyEnd::Error {
                error,
                after_data: moved,
            };
        }
        count(n as u64);
        moved = true;
    }
    shutdown_end(writer, moved).await
}

/// Shuts `writer`'s sending side down at the end of a direction.
async fn shutdown_end<W: AsyncWrite + Unpin + ?Sized>(writer: &mut W, moved: bool) -> CopyEnd {
    match writer.shutdown().await {
        // The peer may already be gone; nothing is lost by that.
        Ok(()) => CopyEnd::Eof,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => CopyEnd::Eof,
        Err(error) => CopyEnd::Error {
            error,
            after_data: moved,
        },
    }
}

/// [`shutdown_end`] for a plain TCP socket, without waiting (a TCP shutdown never
/// blocks): the relays end a direction with it.
pub(crate) fn shutdown_tcp_end(writer: &tokio::net::TcpStream, moved: bool) -> CopyEnd {
    match socket2::SockRef::from(writer).shutdown(std::net::Shutdown::Write) {
        Ok(()) => CopyEnd::Eof,
        // The peer may already be gone; nothing is lost by that.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => CopyEnd::Eof,
        Err(error) => CopyEnd::Error {
            error,
            after_data: moved,
        },
    }
}

/// Writes the bytes read ahead of the copy (metadata-exchange leftovers, sniffed first
/// bytes) and counts them; `Ok(true)` when there were any.
async fn write_prefix<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    prefix: &[u8],
    count: &(dyn Fn(u64) + Send + Sync),
) -> Result<bool, CopyEnd> {
    if prefix.is_empty() {
        return Ok(false);
    }
    write_flush(writer, prefix)
        .await
        .map_err(|error| CopyEnd::Error {
            error,
            after_data: false,
        })?;
    count(prefix.len() as u64);
    Ok(true)
}

async fn write_flush<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    data: &[u8],
) -> io::Result<()> {
    writer.write_all(data).await?;
    writer.flush().await
}

#[cfg(test)]
pub(crate) mod tests;
