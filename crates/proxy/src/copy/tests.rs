use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::*;

/// Reads and writes at most `max` bytes per call, and returns `Pending` once before
/// every other operation, to shake out partial-I/O bugs.
pub(crate) struct ShortIo<S> {
    inner: S,
    max: usize,
    flip: bool,
}

impl<S> ShortIo<S> {
    pub(crate) fn new(inner: S, max: usize) -> Self {
        Self {
            inner,
            max,
            flip: false,
        }
    }

    fn stall(&mut self, cx: &mut Context<'_>) -> bool {
        self.flip = !self.flip;
        if self.flip {
            cx.waker().wake_by_ref();
        }
        self.flip
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ShortIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stall(cx) {
            return Poll::Pending;
        }
        let max = self.max.min(buf.remaining());
        let mut small = vec![0; max];
        let mut small_buf = ReadBuf::new(&mut small);
        match Pin::new(&mut self.inner).poll_read(cx, &mut small_buf) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(small_buf.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ShortIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.stall(cx) {
            return Poll::Pending;
        }
        let max = self.max.min(buf.len());
        Pin::new(&mut self.inner).poll_write(cx, &buf[..max])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn short_reads_and_writes_deliver_every_byte_and_count_once() {
    let data = pattern(300_000);
    let (mut src_w, src_r) = tokio::io::duplex(4096);
    let (dst_w, mut dst_r) = tokio::io::duplex(4096);
    let mut reader = ShortIo::new(src_r, 7);
    let mut writer = ShortIo::new(dst_w, 5);
    let counted = Arc::new(AtomicU64::new(0));
    let c = counted.clone();
    let count = move |n: u64| {
        c.fetch_add(n, Ordering::Relaxed);
    };
    let feed = {
        let data = data.clone();
        async move {
            src_w.write_all(&data).await.unwrap();
            src_w.shutdown().await.unwrap();
        }
    };
    let drain = async move {
        let mut out = Vec::new();
        dst_r.read_to_end(&mut out).await.unwrap();
        out
    };
    let (_, end, out) = tokio::join!(
        feed,
        copy_one_way(&mut reader, &mut writer, b"head:", &count),
        drain
    );
    assert!(matches!(end, CopyEnd::Eof), "{end:?}");
    let mut expected = b"head:".to_vec();
    expected.extend_from_slice(&data);
    assert_eq!(out.len(), expected.len());
    assert!(out == expected);
    assert_eq!(counted.load(Ordering::Relaxed), expected.len() as u64);
}

#[tokio::test]
async fn buffer_grows_on_full_reads_and_shrinks_when_idle() {
    tokio::time::pause();
    let (mut w, mut r) = tokio::io::duplex(1 << 20);
    let mut buf = AdaptiveBuffer::new();
    w.write_all(&pattern(MAX_BUFFER * 4)).await.unwrap();
    let mut total = 0;
    while total < MAX_BUFFER * 4 {
        total += buf.read_from(&mut r).await.unwrap();
    }
    assert_eq!(buf.len(), MAX_BUFFER);
    // Nothing arrives: after the idle period the buffer is small again, and the read
    // still returns the next data.
    let reader = tokio::spawn(async move {
        let n = buf.read_from(&mut r).await.unwrap();
        (n, buf.len())
    });
    tokio::time::sleep(SHRINK_AFTER_IDLE * 2).await;
    w.write_all(b"late").await.unwrap();
    let (n, len) = reader.await.unwrap();
    assert_eq!((n, len), (4, INITIAL_BUFFER));
}

#[tokio::test]
async fn writer_error_is_reported_with_data_flag() {
    let (mut src_w, mut src_r) = tokio::io::duplex(64);
    let (dst_w, dst_r) = tokio::io::duplex(64);
    drop(dst_r);
    let mut dst_w = dst_w;
    src_w.write_all(b"x").await.unwrap();
    let end = copy_one_way(&mut src_r, &mut dst_w, b"", &|_| {}).await;
    match end {
        CopyEnd::Error { after_data, .. } => assert!(!after_data),
        other => panic!("expected a write error, got {other:?}"),
    }
}
