//! Istio's `tcp-echo` sample server: for every line a client sends it writes back
//! `<prefix> <line>`. The image takes `PORTS PREFIX`, ports comma-separated
//! (`["9000,9001,9002", "hello"]`), and serves the same prefix on each.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest line echoed; a client sending more without a newline is disconnected.
pub const MAX_LINE: usize = 64 * 1024;

/// Errors of the tcp-echo server.
#[derive(Debug, thiserror::Error)]
pub enum TcpEchoError {
    /// The port list is not comma-separated port numbers.
    #[error("tcp-echo: {value:?} is not a list of ports; fix: pass comma-separated port numbers such as \"9000,9001\"")]
    Ports {
        /// The argument as given.
        value: String,
    },
    /// A listener failed permanently.
    #[error("tcp-echo: accepting connections failed: {0}")]
    Accept(#[from] std::io::Error),
}

/// Configuration of one tcp-echo listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEchoConfig {
    /// Text written before each echoed line (followed by a space).
    pub prefix: String,
}

impl TcpEchoConfig {
    /// A listener that answers with `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// Reads `TCP_ECHO_PREFIX` (default `hello`, the prefix of Istio's sample); the
    /// image itself takes the prefix as an argument, see [`parse_args`].
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Self {
        Self::new(crate::env::var(env, "TCP_ECHO_PREFIX").unwrap_or_else(|| "hello".into()))
    }
}

/// The image's arguments, `PORTS PREFIX`: the ports and the configuration.
pub fn parse_args(ports: &str, prefix: &str) -> Result<(Vec<u16>, TcpEchoConfig), TcpEchoError> {
    let parsed: Option<Vec<u16>> = ports
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p != 0))
        .collect();
    match parsed {
        Some(list) if !list.is_empty() => Ok((list, TcpEchoConfig::new(prefix))),
        _ => Err(TcpEchoError::Ports {
            value: ports.to_string(),
        }),
    }
}

/// Serves `listener` until it fails permanently.
pub async fn serve(listener: TcpListener, config: TcpEchoConfig) -> Result<(), TcpEchoError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, prefix = %config.prefix, "listening");
    }
    let prefix: std::sync::Arc<str> = config.prefix.into();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                crate::web::accept_error("tcp-echo", e).await?;
                continue;
            }
        };
        let prefix = prefix.clone();
        tokio::spawn(async move {
            if let Err(e) = echo(stream, &prefix).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Serves every listener with the same configuration; returns when any fails.
pub async fn serve_all(
    listeners: Vec<TcpListener>,
    config: TcpEchoConfig,
) -> Result<(), TcpEchoError> {
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(serve(listener, config.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
            Err(join) => return Err(TcpEchoError::Accept(std::io::Error::other(join))),
        }
    }
    Ok(())
}

/// Echoes complete lines; a trailing partial line at end of stream is dropped, as the
/// original server does.
async fn echo(stream: TcpStream, prefix: &str) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 || line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                tracing::warn!(limit = MAX_LINE, "line too long, closing the connection");
            }
            let _ = write.shutdown().await;
            return Ok(());
        }
        let mut out = Vec::with_capacity(prefix.len() + 1 + line.len());
        out.extend_from_slice(prefix.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&line);
        write.write_all(&out).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_like_the_image() {
        let (ports, config) = parse_args("9000,9001,9002", "hello").unwrap();
        assert_eq!(ports, vec![9000, 9001, 9002]);
        assert_eq!(config.prefix, "hello");
        assert_eq!(
            parse_args("9000,x", "p").unwrap_err().to_string(),
            "tcp-echo: \"9000,x\" is not a list of ports; fix: pass comma-separated port numbers such as \"9000,9001\""
        );
        assert!(parse_args("", "p").is_err());
    }
}
