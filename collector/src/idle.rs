//! Bounds on a gRPC connection a client holds without using it.
//!
//! A connection that reads nothing for `--idle-timeout` is closed: one
//! that connects and sends nothing, stops in the middle of its TLS
//! handshake, its HTTP/2 preface or a message. A live client is never
//! idle that long: the server pings every connection each
//! `--keepalive-interval` (HTTP/2 PING), and every HTTP/2 client answers
//! pings, also between batches. At most `--max-connections` are open at
//! once, and `--max-connections-per-ip` from one address (connections are
//! counted before any authentication: one address must not hold them
//! all); one more is closed as soon as it is accepted.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::warn;

/// A TCP connection closed when it reads nothing for `timeout`.
pub struct IdleTimeout {
    inner: TcpStream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    _slot: Slot,
    _peer: spyglass_proto::endpoints::PeerSlot,
}

/// A place among the open connections, freed on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.timeout;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing read for --idle-timeout; connection closed",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for IdleTimeout {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// The accepted connections of `listener`, each closed after `timeout`
/// without a byte read, at most `max` open at once and `per_ip` from one
/// address.
pub fn incoming(
    listener: tokio::net::TcpListener,
    timeout: Duration,
    max: usize,
    per_ip: usize,
) -> impl Stream<Item = io::Result<IdleTimeout>> {
    let open = Arc::new(AtomicUsize::new(0));
    let peers = spyglass_proto::endpoints::PeerCounts::default();
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |conn| {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let ip = stream.peer_addr().map_or(
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            |a| a.ip(),
        );
        let Some(peer) = peers.take(ip, per_ip) else {
            warn!(%ip, per_ip, "connection closed: --max-connections-per-ip are open from this address");
            return None;
        };
        if open.fetch_add(1, Ordering::Relaxed) >= max {
            open.fetch_sub(1, Ordering::Relaxed);
            warn!(
                peer = ?stream.peer_addr().ok(),
                max, "connection closed: --max-connections are open"
            );
            return None;
        }
        Some(Ok(IdleTimeout {
            inner: stream,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            _slot: Slot(open.clone()),
            _peer: peer,
        }))
    })
}
