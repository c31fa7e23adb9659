//! One stream type for "plaintext or TLS" connections.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Either of two stream types, read and written as one.
#[derive(Debug)]
pub enum EitherStream<A, B> {
    /// The first kind (plaintext).
    Left(A),
    /// The second kind (TLS), boxed: a TLS session is about 1.1 KB, and every place a
    /// connection's future holds this enum (often twice, once moved-from) would
    /// otherwise reserve that much, for plaintext connections too.
    Right(Box<B>),
}

impl<A: AsyncRead + Unpin, B: AsyncRead + Unpin> AsyncRead for EitherStream<A, B> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EitherStream::Left(s) => Pin::new(s).poll_read(cx, buf),
            EitherStream::Right(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<A: AsyncWrite + Unpin, B: AsyncWrite + Unpin> AsyncWrite for EitherStream<A, B> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EitherStream::Left(s) => Pin::new(s).poll_write(cx, buf),
            EitherStream::Right(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EitherStream::Left(s) => Pin::new(s).poll_flush(cx),
            EitherStream::Right(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EitherStream::Left(s) => Pin::new(s).poll_shutdown(cx),
            EitherStream::Right(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EitherStream::Left(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            EitherStream::Right(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            EitherStream::Left(s) => s.is_write_vectored(),
            EitherStream::Right(s) => s.is_write_vectored(),
        }
    }
}
