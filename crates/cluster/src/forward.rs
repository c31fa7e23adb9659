//! Host ports into the cluster: the ingress gateway's ports and `weir dashboard`.
//! The listener is a host socket; the upstream socket is made inside the node's
//! network namespace (the caller's runtime threads live there), so the host needs no
//! route, address or rule towards the pod network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Where a forwarded connection goes, decided per connection (pods come and go).
pub type Target = Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync>;

/// Accepts on `listener` until `stop`; copies each connection to `target()` both ways.
/// A connection with no target, or whose upstream refuses, is closed at once.
pub async fn serve(
    listener: TcpListener,
    target: Target,
    what: &'static str,
    stop: CancellationToken,
) {
    loop {
        let (client, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let target = target.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Some(upstream) = target() else {
                tracing::warn!(%peer, "{what}: no ready pod to forward to");
                return;
            };
            let connect =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream));
            let mut server = match connect.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, %upstream, "{what}: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, %upstream, "{what}: connect timed out");
                    return;
                }
            };
            let _ = server.set_nodelay(true);
            let _ = client.set_nodelay(true);
            let mut client = client;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
}

/// Binds a host listener, naming the flag that changes the port when it is taken.
pub fn bind_host(
    addr: &str,
    what: &'static str,
    flag: &'static str,
) -> Result<std::net::TcpListener, crate::ClusterError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|error| crate::ClusterError::PortInUse {
            addr: addr.to_owned(),
            what,
            flag,
            error,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| crate::ClusterError::io(std::path::Path::new(addr), "configure", e))?;
    Ok(listener)
}
