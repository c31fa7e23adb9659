//! Zero-copy forwarding between two plain TCP sockets with `splice(2)`: bytes go from
//! the reading socket into a pipe and from the pipe into the writing socket without
//! passing through user space. Driven by tokio's readiness, so nothing blocks a worker.
//!
//! A direction holds a pipe only while data flows: it takes one when its socket turns
//! readable and gives it back (empty) to a small shared pool once the socket would
//! block, so idle connections hold no pipe file descriptors.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::tcp::{drain_ready, TcpRef};
use super::{shutdown_end, write_prefix, CopyEnd};

/// Pipe capacity asked for (the kernel may refuse; the default 64 KiB then stays).
const PIPE_SIZE: i32 = 256 * 1024;
/// Most bytes moved by one `splice` call.
pub(crate) const SPLICE_CHUNK: usize = PIPE_SIZE as usize;
/// Empty pipes kept for reuse.
const POOL_PIPES: usize = 16;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// Both ends of a nonblocking pipe. Only empty pipes go back to the pool; a pipe
/// dropped anywhere else (an error, a cancelled copy) is closed with its contents.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
}

impl Pipe {
    pub(crate) fn take() -> io::Result<Self> {
        if let Some(p) = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(p);
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Larger pipes mean fewer splice calls per megabyte; not fatal when refused.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        Ok(Self { read, write })
    }

    /// Back to the pool; the caller guarantees the pipe is empty.
    pub(crate) fn give(self) {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_PIPES {
            pool.push(self);
        }
    }
}

pub(crate) fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Copies `prefix`, then everything `reader` sends, to `writer` with `splice(2)`,
/// counting bytes once they are in `writer`'s send buffer, and shuts `writer`'s
/// sending side down at end of stream. Falls back to a pooled buffer when no pipe
/// can be had (file descriptors exhausted) or the kernel refuses to splice.
pub async fn splice_one_way(
    reader: &TcpStream,
    writer: &TcpStream,
    prefix: &[u8],
    count: &(dyn Fn(u64) + Send + Sync),
) -> CopyEnd {
    let mut out = TcpRef(writer);
    let mut moved = match write_prefix(&mut out, prefix, count).await {
        Ok(moved) => moved,
        Err(end) => return end,
    };
    let mut can_splice = true;
    loop {
        let step = if can_splice {
            splice_ready(reader, writer, count, &mut moved).await
        } else {
            drain_ready(reader, &mut out, count, &mut moved)
                .await
                .map(Step::from_eof)
        };
        match step {
            Ok(Step::Eof) => return shutdown_end(&mut out, moved).await,
            Ok(Step::Idle) => {}
            Ok(Step::NoSplice) => can_splice = false,
            Err(error) => {
                return CopyEnd::Error {
                    error,
                    after_data: moved,
                }
            }
        }
    }
}

enum Step {
    /// The reader would block; wait again.
    Idle,
    /// End of stream.
    Eof,
    /// No pipe or no splice for these sockets: copy through user space instead.
    NoSplice,
}

impl Step {
    fn from_eof(eof: bool) -> Self {
        if eof {
            Step::Eof
        } else {
            Step::Idle
        }
    }
}

/// Waits until `reader` is readable, then splices until it would block.
async fn splice_ready(
    reader: &TcpStream,
    writer: &TcpStream,
    count: &(dyn Fn(u64) + Send + Sync),
    moved: &mut bool,
) -> io::Result<Step> {
    reader.readable().await?;
    let pipe = match Pipe::take() {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "no pipe for splice; copying through a buffer");
            return Ok(Step::NoSplice);
        }
    };
    loop {
        // The pipe is empty here, so `WouldBlock` means the socket has nothing more.
        let r = reader.try_io(Interest::READABLE, || {
            splice(reader, None, &pipe.write, None, SPLICE_CHUNK, flags()).map_err(io::Error::from)
        });
        let n = match r {
            Ok(0) => {
                pipe.give();
                return Ok(Step::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give();
                return Ok(Step::Idle);
            }
            Err(e) if unsupported(&e) => {
                pipe.give();
                return Ok(Step::NoSplice);
            }
            Err(e) => return Err(e),
        };
        // Drop the pipe with its contents if the writer fails: it must not be reused.
        drain_pipe(&pipe, writer, n).await?;
        count(n as u64);
        *moved = true;
    }
}

/// Moves exactly `n` bytes from `pipe` into `writer`.
async fn drain_pipe(pipe: &Pipe, writer: &TcpStream, n: usize) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        writer.writable().await?;
        let r = writer.try_io(Interest::WRITABLE, || {
            splice(&pipe.read, None, writer, None, left, flags()).map_err(io::Error::from)
        });
        match r {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "splice moved nothing out of a non-empty pipe",
                ))
            }
            Ok(m) => left -= m.min(left),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Errors that mean these descriptors cannot splice at all (not a connection error).
pub(crate) fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
    )
}
