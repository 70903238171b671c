//! Loopback ports for the processes the tests start (etcd, kube-apiserver, Prometheus, the
//! operator, sidecars), which bind them themselves moments later.
//!
//! A port found by binding port 0 comes from the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768-60999 by default), the range every outgoing
//! connection's local port also comes from. Between the probe releasing it and the process binding
//! it, a client connecting anywhere could take it ("address already in use": Prometheus failed to
//! start that way in CI). So ports are handed out below that range, where neither outgoing
//! connections nor port-0 listeners land, each one probed by a bind, none twice per test process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Result, bail};

/// The range ports are handed out from: registered ports below the default ephemeral range.
const FIRST: u32 = 20_000;
const END: u32 = 32_768;

/// A loopback port that nothing listens on now, outside the ephemeral range, not handed out before
/// by this process.
pub fn unused_port() -> Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = END - FIRST;
    // Test processes that run at once start at different places.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = (FIRST + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {FIRST}..{END}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..200).map(|_| unused_port().unwrap()).collect();
        assert!(ports.iter().all(|&p| (FIRST..END).contains(&u32::from(p))));
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        // Each was free: it binds.
        let port = unused_port().unwrap();
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
