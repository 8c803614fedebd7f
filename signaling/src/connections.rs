//! Bounds on connections before anyone has said who they are: a limit on the TCP connections
//! one address holds at once, deadlines for the TLS handshake and for each request's header,
//! and the process's file descriptor limit raised at start-up.
//!
//! Every WebSocket, every page load and every API call is a TCP connection, and each holds a
//! file descriptor: without a bound one address could take them all (about 1,000 idle
//! sockets exhausted systemd's default limit of 1,024), or hold them open by sending one byte
//! of a request every few seconds.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Default for `--max-connections-per-ip`.
pub const DEFAULT_MAX_PER_IP: usize = 256;
/// Default time for a client to complete the TLS handshake, to send its first request once
/// the handshake is done, and to send each request's whole header.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Open TCP connections per address, and how many were refused.
#[derive(Debug)]
pub struct ConnectionLimits {
    /// `None`: no limit (load tests from one generator address).
    max_per_ip: Option<usize>,
    open: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
}

impl ConnectionLimits {
    pub fn new(max_per_ip: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            max_per_ip,
            open: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        })
    }

    /// Connections refused so far because their address held too many.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now, from every address.
    pub fn open(&self) -> usize {
        self.lock().values().sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection from `ip`, or refuses it when `ip` holds its limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = canonical(ip);
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if self.max_per_ip.is_some_and(|max| *count >= max) {
            drop(open);
            self.refused.fetch_add(1, Ordering::Relaxed);
            if crate::metrics::Refusal::ConnectionsPerIp.count() {
                tracing::warn!(%ip, limit = ?self.max_per_ip, "connection refused: too many open from this address");
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

/// An IPv4 client reaching a dual-stack listener is one address, whichever form it takes.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One counted connection; dropping it (the connection closed) uncounts it.
#[derive(Debug)]
struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A TCP stream that holds its [`Slot`] for as long as it lives, WebSocket included.
#[derive(Debug)]
pub struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Counts each accepted TCP connection against its address before handing it to `inner`
/// (the TLS acceptor); one over the limit is closed at once, before any TLS work.
#[derive(Debug, Clone)]
pub struct LimitingAcceptor<A> {
    pub inner: A,
    pub limits: Arc<ConnectionLimits>,
}

impl<A, S> Accept<TcpStream, S> for LimitingAcceptor<A>
where
    A: Accept<Counted, S> + Clone + Send + 'static,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
    S: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future =
        Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send + 'static>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = stream
            .peer_addr()
            .ok()
            .and_then(|peer| self.limits.admit(peer.ip()));
        match slot {
            Some(slot) => {
                let counted = Counted {
                    stream,
                    _slot: slot,
                };
                Box::pin(self.inner.accept(counted, service))
            }
            None => Box::pin(std::future::ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "too many connections from this address",
            )))),
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so that the server is bounded by
/// its own limits rather than the shell's default (often 1,024). Returns the effective limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_limit_and_closing_frees_a_place() {
        let limits = ConnectionLimits::new(Some(2));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = limits.admit(a).expect("first");
        let _second = limits.admit(a).expect("second");
        assert!(limits.admit(a).is_none());
        // The same address seen through a dual-stack socket is the same address.
        assert!(
            limits
                .admit("::ffff:192.0.2.1".parse().expect("ip"))
                .is_none()
        );
        assert!(limits.admit(b).is_some());
        assert_eq!(limits.refused(), 2);
        drop(first);
        assert!(limits.admit(a).is_some());
    }

    #[test]
    fn no_limit_counts_but_never_refuses() {
        let limits = ConnectionLimits::new(None);
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let held: Vec<_> = (0..1_000).filter_map(|_| limits.admit(ip)).collect();
        assert_eq!(held.len(), 1_000);
        assert_eq!(limits.open(), 1_000);
        drop(held);
        assert_eq!(limits.open(), 0);
    }
}
