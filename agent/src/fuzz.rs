//! Entry points of the fuzz targets (`agent/fuzz/`, cargo-fuzz): each takes
//! arbitrary bytes, feeds them to one parser of the agent, and panics only
//! when a property that must hold for every input is broken (a panic, a
//! hang or a huge allocation inside the parser is a finding in itself).
//!
//! The same functions replay every committed corpus file in a normal test
//! (`fuzz::tests`), so CI checks the corpora without a fuzzer. Not API:
//! the module is hidden from the docs and may change with the targets.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::log::fs::{FileSystem, SimFs};
use crate::log::index::Index;
use crate::log::segment::{self, Role, Segment, SegmentLimits};
use crate::log::store::{self, Store};
use crate::log::LogError;

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, as named in `agent/fuzz/fuzz_targets/` and
/// `agent/fuzz/corpus/`, with their entry points.
pub const TARGETS: &[(&str, Target)] = &[
    ("store_entry", store_entry),
    ("index", index),
    ("segment", segment),
    ("config_toml", config_toml),
    ("mux", mux),
    ("raft_frame", raft_frame),
];

const DIR: &str = "/fuzz";
const LIMITS: SegmentLimits = SegmentLimits {
    max_store_bytes: 1 << 20,
    max_index_bytes: 1024,
    prealloc_bytes: 0,
};

/// Writes `bytes` as the file `path` of `fs`.
fn put(fs: &SimFs, path: &Path, bytes: &[u8]) {
    let file = fs.create(path).expect("the simulated disk creates files");
    file.write_all_at(bytes, 0)
        .expect("the simulated disk writes files");
}

/// A store file's header followed by `body`.
fn store_file(body: &[u8]) -> Vec<u8> {
    let mut file = b"PLOGSTOR\x01\0\0\0\0\0\0\0".to_vec();
    file.extend_from_slice(body);
    file
}

/// Store entry decoding: `data` is the body of a store file (after its
/// header). A scan from the first entry (expecting the offset the first
/// frame claims) must never panic, and every entry it accepts must read
/// back by position and offset with its checksum. Also: `data` framed as
/// one entry scans back as exactly that payload.
pub fn store_entry(data: &[u8]) {
    let fs = SimFs::new();
    let path = PathBuf::from(DIR).join("scan.store");
    put(&fs, &path, &store_file(data));
    let Ok(store) = Store::open(&fs, &path) else {
        return;
    };
    let first = data
        .get(8..16)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if let Ok((found, end, _)) = store.scan(store::HEADER_LEN, first) {
        assert!(end <= store.allocated(), "scan ended past the file");
        let mut store = store;
        store.set_size(end);
        for (i, &pos) in found.iter().enumerate() {
            let offset = first + i as u64;
            assert!(store.read(pos, offset).is_ok(), "scanned entry unreadable");
            assert!(matches!(store.verify(pos, offset), Ok(Some(_))));
        }
    }

    let mut framed = Vec::new();
    store::encode(&mut framed, 7, data);
    let path = PathBuf::from(DIR).join("one.store");
    put(&fs, &path, &store_file(&framed));
    let store = Store::open(&fs, &path).expect("a store with a good header opens");
    let (found, end, how) = store
        .scan(store::HEADER_LEN, 7)
        .expect("scan of a good entry");
    assert_eq!(found, vec![store::HEADER_LEN]);
    assert_eq!(how, store::ScanEnd::Clean);
    assert_eq!(end, store.allocated());
    let mut store = store;
    store.set_size(end);
    assert_eq!(store.read(store::HEADER_LEN, 7).expect("read back"), data);
}

/// Five valid records with offsets 0..5, as a store file.
fn five_records() -> (Vec<u8>, Vec<Vec<u8>>) {
    let records: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; usize::from(i) * 3]).collect();
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        store::encode(&mut body, i as u64, r);
    }
    (store_file(&body), records)
}

/// Index contents: `data` is a whole index file beside an intact store of
/// five records. Opening the index alone must not panic; a segment opened
/// on it, active or sealed, must hold exactly five records whatever the
/// index says (the store is the truth), and a read never returns the
/// wrong record.
pub fn index(data: &[u8]) {
    let (store_bytes, records) = five_records();
    for role in [Role::Active, Role::Sealed { next: 5 }] {
        let sim = SimFs::new();
        let dir = Path::new(DIR);
        put(&sim, &segment::store_path(dir, 0), &store_bytes);
        put(&sim, &segment::index_path(dir, 0), data);
        if let Ok(mut idx) = Index::open(&sim, &segment::index_path(dir, 0)) {
            if let Some(count) = idx.clean_count() {
                for rel in 0..count.min(64) {
                    let _ = idx.position(rel);
                }
            }
        }
        let fs: Arc<dyn FileSystem> = Arc::new(sim);
        let seg = Segment::open(&fs, dir, 0, LIMITS, role).expect("an intact store opens");
        assert_eq!(seg.next_offset(), 5, "{role:?}: records lost or invented");
        // A clean index is trusted after checking its last entry, so a
        // damaged earlier entry may fail a read, but never return another
        // record's bytes.
        for (offset, want) in records.iter().enumerate() {
            if let Ok(got) = seg.read(offset as u64) {
                assert_eq!(&got, want, "{role:?}: offset {offset} read another record");
            }
        }
    }
}

/// Segment recovery from arbitrary bytes: `data` holds a store file and an
/// index file (the first two bytes give the store's length). Opening it
/// as the active segment must not panic; when it opens, every offset it
/// claims reads back (or, behind an index marked clean, which open trusts
/// after checking the last record, is reported corrupt: never a panic or
/// another record) and it takes one more append at the next offset.
/// Opening it as a sealed segment must not panic either.
pub fn segment(data: &[u8]) {
    let (head, rest) = data.split_at(data.len().min(2));
    let split = match head {
        [a, b] => usize::from(u16::from_le_bytes([*a, *b])).min(rest.len()),
        _ => rest.len(),
    };
    let (store_bytes, index_bytes) = rest.split_at(split);
    // Whether the index header claims a clean close (flags bit 0).
    let clean = index_bytes.get(10).is_some_and(|flags| flags & 1 == 1);
    let base = 3;
    for role in [Role::Active, Role::Sealed { next: base + 4 }] {
        let sim = SimFs::new();
        let dir = Path::new(DIR);
        put(&sim, &segment::store_path(dir, base), store_bytes);
        put(&sim, &segment::index_path(dir, base), index_bytes);
        let fs: Arc<dyn FileSystem> = Arc::new(sim);
        let Ok(mut seg) = Segment::open(&fs, dir, base, LIMITS, role) else {
            continue;
        };
        let next = seg.next_offset();
        assert!(next >= base);
        for offset in base..next {
            match seg.read(offset) {
                Ok(_) => {}
                // A clean index is trusted after checking its last record
                // only (fast open), so a damaged earlier record is found
                // by its read, as corrupt; a scanned segment has none.
                Err(LogError::Corrupt { .. }) if clean => {}
                Err(e) => panic!("{role:?}: offset {offset} unreadable: {e}"),
            }
        }
        assert!(seg.read(next).is_err());
        assert!(seg.read(u64::MAX).is_err());
        if role == Role::Active && seg.fit([5]) == 1 {
            seg.unseal().expect("unseal");
            let mut buf = Vec::new();
            assert_eq!(seg.append(&[b"after"], &mut buf).expect("append"), next);
            assert_eq!(seg.read(next).expect("read back"), b"after");
        }
    }
}

/// Config TOML: `data` as the text of a config file, merged over the
/// defaults as `Config::load` does, then validated. Neither may panic.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = crate::config::Config::from_toml_str(text) {
        let _ = config.validate();
        let _ = config.connection_limits();
        let _ = config.log_config();
    }
}

/// The first bytes of a connection on the shared port: `data` is sent on a
/// fresh TCP connection to a TLS transport with a Raft route (so the
/// first-byte split, the gRPC TLS acceptor and the peer path with its TLS
/// and admission all see it), then the client half-closes. The server must
/// close the connection within the deadline (a hang is a finding) and keep
/// accepting.
pub fn mux(data: &[u8]) {
    let server = MuxServer::get();
    server.runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("the fuzz server accepts");
        // The server may close early (a refused handshake): that is fine.
        let _ = sock.write_all(data).await;
        let _ = sock.shutdown().await;
        let mut sink = vec![0u8; 16 << 10];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match sock.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        assert!(closed.await.is_ok(), "the server kept the connection open");
    });
}

/// A TLS transport with a Raft route on 127.0.0.1, started once per process.
struct MuxServer {
    runtime: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
}

impl MuxServer {
    fn get() -> &'static MuxServer {
        static SERVER: OnceLock<MuxServer> = OnceLock::new();
        SERVER.get_or_init(MuxServer::start)
    }

    fn start() -> MuxServer {
        use crate::transport::{tls, Limits, RaftRoute, TlsTcp, Transport};
        use tokio_stream::StreamExt;
        // Certificates of this process's server, removed once loaded.
        let certs = std::env::temp_dir().join(format!("proglog-fuzz-mux-{}", std::process::id()));
        let certs = certs.as_path();
        crate::certs::generate(certs, &["127.0.0.1".into()]).expect("dev certs");
        let (cert, key, ca) = (
            certs.join("server.pem"),
            certs.join("server-key.pem"),
            certs.join("ca.pem"),
        );
        let server = tls::server_config(&cert, &key, &ca).expect("server TLS");
        let peer = tls::peer_tls(&cert, &key, &ca, &[]).expect("peer TLS");
        let _ = std::fs::remove_dir_all(certs);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let addr = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("bound address");
            let (conns, mut raft_conns) = tokio::sync::mpsc::channel(16);
            let transport = TlsTcp {
                listener,
                tls: Arc::new(arc_swap::ArcSwap::new(server)),
                raft: Some(RaftRoute {
                    tls: Arc::new(arc_swap::ArcSwap::from_pointee(peer)),
                    conns,
                }),
                limits: Limits {
                    first_byte_timeout: Duration::from_secs(1),
                    handshake_timeout: Duration::from_secs(2),
                    ..Limits::default()
                },
            };
            let mut incoming = transport.incoming(tokio_util::sync::CancellationToken::new());
            // Nothing serves what passes the handshake: dropping closes it.
            tokio::spawn(async move { while incoming.next().await.is_some() {} });
            tokio::spawn(async move { while raft_conns.recv().await.is_some() {} });
            addr
        });
        MuxServer { runtime, addr }
    }
}

/// The Raft frame decoder (`raft::codec::decode_msg`): the first byte of
/// `data` picks a message type the peers exchange, the rest is the frame.
/// Decoding must not panic; what decodes must encode to the same bytes.
pub fn raft_frame(data: &[u8]) {
    use crate::raft::codec::{decode_msg, encode_msg};
    use crate::raft::TypeConfig;
    use openraft::error::{InstallSnapshotError, RaftError};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    };

    fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(frame: &[u8]) {
        if let Ok(msg) = decode_msg::<T>(frame) {
            let again = encode_msg(&msg);
            let msg2: T = decode_msg(&again).expect("an encoded message decodes");
            assert_eq!(encode_msg(&msg2), again, "encoding is not stable");
        }
    }

    let Some((&kind, frame)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => round_trip::<crate::raft::Entry>(frame),
        1 => round_trip::<AppendEntriesRequest<TypeConfig>>(frame),
        2 => round_trip::<VoteRequest<u64>>(frame),
        3 => round_trip::<InstallSnapshotRequest<TypeConfig>>(frame),
        4 => round_trip::<Result<AppendEntriesResponse<u64>, RaftError<u64>>>(frame),
        5 => round_trip::<Result<VoteResponse<u64>, RaftError<u64>>>(frame),
        6 => {
            round_trip::<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>>(
                frame,
            )
        }
        _ => round_trip::<crate::raft::Request>(frame),
    }
}

#[cfg(test)]
mod tests;
