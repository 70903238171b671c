//! A TCP proxy on loopback that can be paused: while paused it forwards nothing in either
//! direction and closes nothing, so the connections through it hang the way a connection to
//! an apiserver behind a dead network path does. What was sent meanwhile waits in the
//! sockets' buffers and is delivered on [`PausableProxy::resume`]. Connections opened while
//! paused are accepted and hang as well.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; it stops, with every connection through it, when dropped.
pub struct PausableProxy {
    address: SocketAddr,
    paused: watch::Sender<bool>,
    open: Arc<AtomicUsize>,
    accepting: JoinHandle<()>,
}

impl PausableProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy's port")?;
        let address = listener.local_addr()?;
        let (paused, _) = watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let accepting = tokio::spawn({
            let paused = paused.subscribe();
            let open = open.clone();
            async move {
                // Dropped with this task: every connection goes with the proxy.
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let _ = client.set_nodelay(true);
                    let open = OpenGuard::new(open.clone());
                    connections.spawn(forward(client, upstream, paused.clone(), open));
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        Ok(Self {
            address,
            paused,
            open,
            accepting,
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops forwarding, in both directions, on every connection, new ones included.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Forwards again, starting with what waited.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Connections not yet closed on both sides.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for PausableProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Counts a connection while it lives.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Returns once not paused.
async fn running(paused: &mut watch::Receiver<bool>) {
    // Err: the proxy is gone, and this task with it.
    let _ = paused.wait_for(|p| !*p).await;
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    mut paused: watch::Receiver<bool>,
    _open: OpenGuard,
) {
    running(&mut paused).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, paused.clone()),
        pump(server_read, client_write, paused),
    );
}

/// Copies `from` to `to` while not paused; passes the end of the stream on.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut paused: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        running(&mut paused).await;
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read as the pause began are held back with the rest.
        running(&mut paused).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server, a client through the proxy: bytes flow, stop while paused (without the
    /// connection closing), and the held bytes arrive on resume.
    #[tokio::test]
    async fn paused_connections_hang_and_deliver_on_resume() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_address = echo.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = PausableProxy::start(echo_address).await.expect("proxy");
        let mut client = TcpStream::connect(proxy.address()).await.expect("connect");
        let mut answer = [0u8; 4];
        client.write_all(b"ping").await.expect("write");
        client.read_exact(&mut answer).await.expect("echo");
        assert_eq!(&answer, b"ping");
        assert_eq!(proxy.open_connections(), 1);

        proxy.pause();
        client.write_all(b"held").await.expect("write while paused");
        let waited =
            tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut answer)).await;
        assert!(waited.is_err(), "nothing crosses a paused proxy");
        // A connection opened while paused hangs too.
        let mut late = TcpStream::connect(proxy.address()).await.expect("connect");
        late.write_all(b"late").await.expect("write");

        proxy.resume();
        client.read_exact(&mut answer).await.expect("held bytes");
        assert_eq!(&answer, b"held");
        late.read_exact(&mut answer).await.expect("late bytes");
        assert_eq!(&answer, b"late");
        drop(client);
        drop(late);
    }
}
