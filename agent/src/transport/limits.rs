//! Limits of the RPC port against floods and slow or silent clients: how
//! many connections may be open at once, how long a new one may stay
//! silent or take over its handshake, and the HTTP/2 and in-flight call
//! limits the gRPC servers apply per connection.
//!
//! A connection holds a [`Permit`] of the connection semaphore for its
//! whole life (from accept to close, handshake included), carried by the
//! [`Conn`] wrapper that tonic serves, so a closed connection frees its
//! place whichever side closed it.
//!
//! Peers keep a way in when clients take every place: past
//! `max_connections`, up to [`PEER_RESERVE`] more connections are let in
//! to show their first byte, and only a peer's (the Raft byte) is served;
//! any other is closed at once. A flood of clients thus cannot cut a node
//! off from its cluster.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// The RPC port's connection limits (config keys `max_connections`,
/// `max_concurrent_streams`, `max_in_flight_per_connection`,
/// `first_byte_timeout`, `handshake_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, handshakes included (the RPC port and the
    /// Unix socket count theirs apart); one more is closed as soon as it
    /// is accepted.
    pub max_connections: usize,
    /// HTTP/2 streams open at once per connection (announced in SETTINGS).
    pub max_concurrent_streams: u32,
    /// Calls in progress at once per connection; one more is refused with
    /// RESOURCE_EXHAUSTED (tonic's concurrency limit with load shedding).
    pub max_in_flight_per_connection: usize,
    /// How long a new connection may stay silent before its first byte.
    pub first_byte_timeout: Duration,
    /// How long from accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_concurrent_streams: 1024,
            max_in_flight_per_connection: 1024,
            first_byte_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections past `max_connections` let in for peers only.
pub const PEER_RESERVE: usize = 64;

/// The places of one port: `max_connections` for anyone, and
/// [`PEER_RESERVE`] more for peers.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    any: Arc<Semaphore>,
    peers: Arc<Semaphore>,
}

impl Limits {
    /// The port's places under these limits, with `peer_places` more for
    /// peers ([`PEER_RESERVE`] on the RPC port, none on the Unix socket).
    pub(crate) fn connection_slots(&self, peer_places: usize) -> Slots {
        Slots {
            any: Arc::new(Semaphore::new(
                self.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            peers: Arc::new(Semaphore::new(peer_places)),
        }
    }
}

/// A connection's place, released on drop: one of `max_connections`, or
/// one of the [`PEER_RESERVE`] (then only a peer may keep it).
#[derive(Debug)]
pub struct Permit {
    _place: OwnedSemaphorePermit,
    peers_only: bool,
}

impl Permit {
    /// Takes a place if one is free: an ordinary one first, else one kept
    /// for peers.
    pub(crate) fn try_take(slots: &Slots) -> Option<Permit> {
        let take = |s: &Arc<Semaphore>| Arc::clone(s).try_acquire_owned().ok();
        match take(&slots.any) {
            Some(place) => Some(Permit {
                _place: place,
                peers_only: false,
            }),
            None => take(&slots.peers).map(|place| Permit {
                _place: place,
                peers_only: true,
            }),
        }
    }

    /// Whether this place is one kept for peers: a client holding it is
    /// past `max_connections`.
    pub(crate) fn peers_only(&self) -> bool {
        self.peers_only
    }
}

/// A served connection that holds its [`Permit`] until it is dropped.
#[derive(Debug)]
pub struct Conn<Io> {
    io: Io,
    _permit: Permit,
}

impl<Io> Conn<Io> {
    /// Wraps `io`, which keeps `permit` for its life.
    pub(crate) fn new(io: Io, permit: Permit) -> Conn<Io> {
        Conn {
            io,
            _permit: permit,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &Io {
        &self.io
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Conn<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Conn<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<Io: Connected> Connected for Conn<Io> {
    type ConnectInfo = Io::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
