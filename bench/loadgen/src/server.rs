//! The server end: an echo listener and an answer-then-close listener, on one thread
//! (the harness pins it to the load-generator core).

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::{IO_TIMEOUT, MESSAGE};

/// Echo read size; small because thousands of idle connections each hold one.
const ECHO_BUFFER: usize = 2048;

/// Serves both listeners until killed.
pub fn run(echo: SocketAddr, close: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let echo_l = TcpListener::bind(echo)
            .await
            .with_context(|| format!("cannot listen on --echo {echo}; pick a free address"))?;
        let close_l = TcpListener::bind(close)
            .await
            .with_context(|| format!("cannot listen on --close {close}; pick a free address"))?;
        let echo_task = tokio::spawn(accept_loop(echo_l, Kind::Echo));
        let close_task = tokio::spawn(accept_loop(close_l, Kind::AnswerThenClose));
        let (a, b) = tokio::join!(echo_task, close_task);
        a.context("echo accept loop")?;
        b.context("close accept loop")?;
        anyhow::Ok(())
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    AnswerThenClose,
}

async fn accept_loop(listener: TcpListener, kind: Kind) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Latency figures must not include Nagle delays.
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = match kind {
                        Kind::Echo => echo(stream).await,
                        Kind::AnswerThenClose => answer_then_close(stream).await,
                    };
                });
            }
            // Out of file descriptors or similar: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; ECHO_BUFFER];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        stream.write_all(&buf[..n]).await?;
    }
}

async fn answer_then_close(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; MESSAGE];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.write_all(&buf).await?;
    stream.shutdown().await
}
