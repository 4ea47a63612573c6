//! Listeners and the one-port multiplexer.
//!
//! A [`Transport`] turns a bound listener into a stream of connections that
//! tonic serves. TCP connections are split on their first byte: `0x01` is
//! the book's Raft byte, then TLS with the peer certificates; the peer's
//! CN must be a peer name (see [`tls::PeerTls`]) before the connection
//! reaches the Raft service ([`RaftRoute`]). Anything else is gRPC, over
//! TLS unless in dev mode (which has no Raft path: one node). Handshakes
//! run in a task per connection, so a slow or silent client never stalls
//! accept; the [`Limits`] bound how many connections are open, how long a
//! new one may stay silent before its first byte and how long its
//! handshake may take (see [`limits`]).

pub mod limits;
pub mod tls;

pub use limits::{Conn, Limits, Permit, PEER_RESERVE};

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// First byte of a Raft connection on the shared port (the book's RaftRPC).
pub const RAFT_RPC: u8 = 0x01;

/// A source of connections for tonic.
pub trait Transport: Send + 'static {
    /// The connection type handed to tonic.
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;

    /// Accepts connections until `cancel` fires.
    fn incoming(self, cancel: CancellationToken) -> ReceiverStream<io::Result<Self::Io>>;
}

/// TCP with mutual TLS; the server config is re-read for every connection
/// so a certificate or CA reload applies to new connections at once.
pub struct TlsTcp {
    /// The bound listener.
    pub listener: TcpListener,
    /// The current TLS config (swapped by hot reload).
    pub tls: Arc<ArcSwap<ServerConfig>>,
    /// Where Raft connections (first byte `0x01`) go; refused if `None`.
    pub raft: Option<RaftRoute>,
    /// Connection count and handshake time limits.
    pub limits: Limits,
}

/// The Raft path of the shared port: admitted peer connections go to
/// `conns`, which the Raft service serves.
#[derive(Clone)]
pub struct RaftRoute {
    /// The current peer TLS (swapped by hot reload).
    pub tls: Arc<ArcSwap<tls::PeerTls>>,
    /// Admitted connections.
    pub conns: mpsc::Sender<io::Result<Conn<TlsStream<TcpStream>>>>,
}

impl RaftRoute {
    /// Consumes the Raft byte, runs the TLS handshake with the peer
    /// config and admits the peer by its certificate's CN; a refused
    /// connection is dropped before any Raft call.
    async fn admit(&self, mut sock: TcpStream, permit: Permit) {
        let peer = sock.peer_addr().ok();
        let mut byte = [0u8; 1];
        if sock.read_exact(&mut byte).await.is_err() {
            return;
        }
        let tls = self.tls.load_full();
        let stream = match TlsAcceptor::from(Arc::clone(&tls.server))
            .accept(sock)
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                debug!(?peer, error = %e, "raft connection refused: TLS handshake failed");
                return;
            }
        };
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match tls.admit(leaf.map(|c| c.as_ref())) {
            Ok(cn) => {
                debug!(?peer, %cn, "raft connection admitted");
                let _ = self.conns.send(Ok(Conn::new(stream, permit))).await;
            }
            Err(why) => warn!(?peer, reason = %why, "raft connection refused"),
        }
    }
}

/// Plain TCP, for `--dev` only.
pub struct PlainTcp {
    /// The bound listener.
    pub listener: TcpListener,
    /// Connection count and first-byte time limits.
    pub limits: Limits,
}

/// A Unix domain socket for the co-located app; removes its file on drop.
/// It has places of its own, `limits.max_connections` of them (none kept
/// for peers, who never come this way): one more connection is closed as
/// soon as it is accepted, and one that sends nothing within
/// `limits.first_byte_timeout` is closed then.
pub struct Unix {
    /// The bound listener.
    pub listener: UnixListener,
    /// The socket file.
    pub path: PathBuf,
    /// The connection count and first-byte time limits.
    pub limits: Limits,
}

impl Unix {
    /// Binds `path` (replacing a stale socket file) with file mode `mode`.
    pub fn bind(path: &Path, mode: u32, limits: Limits) -> io::Result<Unix> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(Unix {
            listener,
            path: path.to_path_buf(),
            limits,
        })
    }
}

impl Drop for Unix {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A listener [`accept_conns`] serves: the RPC port or the Unix socket.
trait Listen: Send + 'static {
    /// A connection.
    type Stream: Send + 'static;
    /// Accepts the next connection; returns it and its peer, for logs.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
    /// Waits until `stream` has a byte to read, or its peer closed it,
    /// without taking the byte.
    fn first_byte(stream: &Self::Stream) -> impl Future<Output = io::Result<()>> + Send;
}

impl Listen for TcpListener {
    type Stream = TcpStream;

    async fn accept(&self) -> io::Result<(TcpStream, String)> {
        let (sock, peer) = TcpListener::accept(self).await?;
        let _ = sock.set_nodelay(true);
        Ok((sock, peer.to_string()))
    }

    async fn first_byte(sock: &TcpStream) -> io::Result<()> {
        sock.peek(&mut [0u8; 1]).await.map(drop)
    }
}

/// Accepts connections and hands each, in its own task, to `handle`,
/// which returns the connection to serve (or `None` to drop it). A
/// connection past `limits.max_connections` takes one of `peer_places`
/// places kept for peers (which `handle` serves only if its first byte is
/// the Raft byte), and one past those too is closed at once; one that
/// sends no byte within `limits.first_byte_timeout`, or whose `handle`
/// (the handshake) is not done `limits.handshake_timeout` after accept, is
/// closed.
fn accept_conns<L, Io, F, Fut>(
    listener: L,
    limits: Limits,
    peer_places: usize,
    cancel: CancellationToken,
    handle: F,
) -> ReceiverStream<io::Result<Conn<Io>>>
where
    L: Listen,
    Io: Send + 'static,
    F: Fn(L::Stream, Permit) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Conn<Io>>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(128);
    let slots = limits.connection_slots(peer_places);
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        while !tx.is_closed() {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                a = listener.accept() => a,
            };
            let (sock, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(permit) = Permit::try_take(&slots) else {
                debug!(%peer, limit = limits.max_connections,
                    "connection closed: max_connections and the peer reserve reached");
                continue;
            };
            let (tx, handle, cancel) = (tx.clone(), Arc::clone(&handle), cancel.clone());
            tokio::spawn(async move {
                let silent = peer.clone();
                let conn = async move {
                    let first =
                        tokio::time::timeout(limits.first_byte_timeout, L::first_byte(&sock));
                    if first.await.is_err() {
                        debug!(peer = %silent, "connection dropped: no first byte in time");
                        return None;
                    }
                    handle(sock, permit).await
                };
                let io = tokio::select! {
                    _ = cancel.cancelled() => return,
                    io = tokio::time::timeout(limits.handshake_timeout, conn) => io,
                };
                match io {
                    Ok(Some(io)) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(None) => {}
                    Err(_) => debug!(%peer, "connection dropped: handshake timed out"),
                }
            });
        }
        // The listener (the Unix socket's file with it) goes now.
        drop(listener);
    });
    ReceiverStream::new(rx)
}

impl Listen for Unix {
    type Stream = UnixStream;

    async fn accept(&self) -> io::Result<(UnixStream, String)> {
        let (sock, _) = self.listener.accept().await?;
        Ok((sock, "unix socket".into()))
    }

    /// tokio reports a fresh Unix socket readable at once, so readiness
    /// alone does not tell: the byte is peeked.
    async fn first_byte(sock: &UnixStream) -> io::Result<()> {
        let mut byte = [0u8; 1];
        loop {
            sock.readable().await?;
            let peeked = sock.try_io(tokio::io::Interest::READABLE, || {
                let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
                rustix::net::recv(sock, &mut byte[..], flags).map_err(io::Error::from)
            });
            match peeked {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// What a connection's first byte asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Grpc,
    Raft,
    /// The peer closed before sending a byte.
    Closed,
}

/// Peeks at the first byte (it stays in the socket).
async fn route(sock: &TcpStream) -> Route {
    let mut b = [0u8; 1];
    match sock.peek(&mut b).await {
        Ok(1) if b[0] == RAFT_RPC => Route::Raft,
        Ok(1) => Route::Grpc,
        _ => Route::Closed,
    }
}

impl Transport for TlsTcp {
    type Io = Conn<TlsStream<TcpStream>>;

    fn incoming(self, cancel: CancellationToken) -> ReceiverStream<io::Result<Self::Io>> {
        let (tls, raft) = (self.tls, self.raft);
        accept_conns(
            self.listener,
            self.limits,
            PEER_RESERVE,
            cancel,
            move |sock, permit| {
                let acceptor = TlsAcceptor::from(tls.load_full());
                let raft = raft.clone();
                async move {
                    match (route(&sock).await, raft) {
                        (Route::Grpc, _) if permit.peers_only() => {
                            debug!("connection closed: max_connections reached");
                            return None;
                        }
                        (Route::Grpc, _) => {}
                        (Route::Raft, Some(raft)) => {
                            raft.admit(sock, permit).await;
                            return None;
                        }
                        (Route::Raft, None) => {
                            debug!("raft connection refused: no peer TLS on this node");
                            return None;
                        }
                        (Route::Closed, _) => return None,
                    }
                    let peer = sock.peer_addr().ok();
                    match acceptor.accept(sock).await {
                        Ok(tls) => Some(Conn::new(tls, permit)),
                        Err(e) => {
                            debug!(?peer, error = %e, "TLS handshake failed");
                            None
                        }
                    }
                }
            },
        )
    }
}

impl Transport for PlainTcp {
    type Io = Conn<TcpStream>;

    fn incoming(self, cancel: CancellationToken) -> ReceiverStream<io::Result<Self::Io>> {
        accept_conns(
            self.listener,
            self.limits,
            PEER_RESERVE,
            cancel,
            |sock, permit| async move {
                // Dev mode is one node: no Raft path, so no use for the
                // places kept for peers.
                let served = route(&sock).await == Route::Grpc && !permit.peers_only();
                served.then(|| Conn::new(sock, permit))
            },
        )
    }
}

impl Transport for Unix {
    type Io = Conn<UnixStream>;

    fn incoming(self, cancel: CancellationToken) -> ReceiverStream<io::Result<Self::Io>> {
        // No places kept for peers: they never come this way.
        let limits = self.limits;
        accept_conns(self, limits, 0, cancel, |sock, permit| async move {
            Some(Conn::new(sock, permit))
        })
    }
}
