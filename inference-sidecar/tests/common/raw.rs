//! Clients that misbehave on purpose, over raw TCP: headers dribbled byte by byte, bodies that
//! never complete, answers never read (a small receive window, so the server's writes stall
//! soon). And the server's resident memory, read from /proc.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `host:port` of a sidecar's base URL.
pub fn addr(base: &str) -> std::net::SocketAddr {
    base.trim_start_matches("http://")
        .parse()
        .expect("a sidecar address")
}

/// A connection whose receive buffer is as small as the kernel allows: a client that does not
/// read fills it after a few KiB.
pub async fn connect_small_window(base: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(addr(base)).await.expect("connect")
}

/// A POST's head for a JSON body of `length` bytes.
pub fn post_head(path: &str, length: usize) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .into_bytes()
}

/// Sends a whole JSON request and reads nothing back.
pub async fn send_json(stream: &mut TcpStream, path: &str, body: &serde_json::Value) {
    let body = body.to_string();
    let mut request = post_head(path, body.len());
    request.extend_from_slice(body.as_bytes());
    stream.write_all(&request).await.expect("send the request");
}

/// How a connection ended, seen from the client.
#[derive(Debug)]
pub struct Ended {
    /// Everything the server sent.
    pub received: Vec<u8>,
    /// The server closed (or reset) the connection.
    pub closed: bool,
}

impl Ended {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }

    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }
}

/// Reads until the server closes the connection, or `limit` passes (then `closed` is false).
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Ended {
    let deadline = Instant::now() + limit;
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => {
                return Ended {
                    received,
                    closed: false,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Ended {
                    received,
                    closed: true,
                };
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Sends `bytes` one at a time, `pause` apart, until the server closes the connection (true) or
/// they run out (false).
pub async fn dribble(stream: &mut TcpStream, bytes: &[u8], pause: Duration) -> bool {
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() {
            return true;
        }
        tokio::time::sleep(pause).await;
        // A closed connection shows on the read side first.
        let mut probe = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            return true;
        }
    }
    false
}

/// Whether the server has closed its end of `stream`, seen without reading from it: the state of
/// the server's socket in /proc/net/tcp (server and test share the machine). A client that must
/// not read can learn this no other way: the server's FIN waits behind the data the client has
/// not taken.
pub fn server_closed(stream: &TcpStream) -> bool {
    const ESTABLISHED: &str = "01";
    let server = format!(":{:04X}", stream.peer_addr().expect("peer address").port());
    let client = format!(
        ":{:04X}",
        stream.local_addr().expect("local address").port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let state = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        (local.ends_with(&server) && remote.ends_with(&client)).then(|| state.to_string())
    });
    state.is_none_or(|s| s != ESTABLISHED)
}

/// The resident set size of process `pid`, in MiB (`VmRSS` in /proc/<pid>/status).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib / 1024.0
}
