//! Replays every committed corpus file (`agent/fuzz/corpus/<target>/`)
//! through the fuzz targets' entry points, so CI checks the corpora and
//! the regression inputs of past findings without a fuzzer.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn replay(target: &str) {
    let (_, entry) = super::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap();
    let files = corpus(target);
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for (path, bytes) in files {
        let run = std::panic::catch_unwind(|| entry(&bytes));
        assert!(run.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn every_target_has_a_corpus_directory() {
    for (name, _) in super::TARGETS {
        assert!(!corpus(name).is_empty(), "{name}");
    }
}

#[test]
fn store_entry_corpus_replays() {
    replay("store_entry");
}

#[test]
fn index_corpus_replays() {
    replay("index");
}

#[test]
fn segment_corpus_replays() {
    replay("segment");
}

#[test]
fn config_toml_corpus_replays() {
    replay("config_toml");
}

#[test]
fn mux_corpus_replays() {
    replay("mux");
}

#[test]
fn raft_frame_corpus_replays() {
    replay("raft_frame");
}

/// Writes the seed corpora (run once by hand, then committed):
/// `cargo test -p proglog-agent fuzz::tests::write_seed_corpora -- --ignored`.
#[test]
#[ignore]
fn write_seed_corpora() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    for (name, bytes) in seeds::store_entry() {
        write("store_entry", &name, &bytes);
    }
    for (name, bytes) in seeds::index() {
        write("index", &name, &bytes);
    }
    for (name, bytes) in seeds::segment() {
        write("segment", &name, &bytes);
    }
    for (name, bytes) in seeds::config_toml() {
        write("config_toml", &name, &bytes);
    }
    for (name, bytes) in seeds::mux() {
        write("mux", &name, &bytes);
    }
    for (name, bytes) in seeds::raft_frame() {
        write("raft_frame", &name, &bytes);
    }
}

mod seeds {
    use std::path::Path;
    use std::sync::Arc;

    use crate::log::fs::{FileSystem, SimFs};
    use crate::log::segment::{self, Segment};
    use crate::log::store;

    type Seeds = Vec<(String, Vec<u8>)>;

    fn entries(first: u64, records: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, r) in records.iter().enumerate() {
            store::encode(&mut body, first + i as u64, r);
        }
        body
    }

    pub fn store_entry() -> Seeds {
        let three = entries(0, &[b"a", b"", b"hello world"]);
        let mut torn = three.clone();
        torn.truncate(three.len() - 4);
        let mut bad_crc = three.clone();
        bad_crc[0] ^= 1;
        let mut zero_tail = three.clone();
        zero_tail.extend([0u8; 40]);
        let mut lost_middle = entries(0, &[b"a"]);
        lost_middle.extend([0u8; 16]);
        lost_middle.extend(entries(2, &[b"c"]));
        let mut huge_len = entries(0, &[b"x"]);
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        vec![
            ("empty".into(), vec![]),
            ("one".into(), entries(0, &[b"record"])),
            ("three".into(), three),
            ("torn".into(), torn),
            ("bad-crc".into(), bad_crc),
            ("zero-tail".into(), zero_tail),
            ("lost-middle".into(), lost_middle),
            ("huge-len".into(), huge_len),
            ("max-offset".into(), entries(u64::MAX - 1, &[b"y", b"z"])),
            ("zeros".into(), vec![0u8; 64]),
        ]
    }

    /// The store and index files of a segment at `base` holding `records`,
    /// sealed (clean index) or not.
    fn segment_files(base: u64, records: &[&[u8]], sealed: bool) -> (Vec<u8>, Vec<u8>) {
        let sim = Arc::new(SimFs::new());
        let fs: Arc<dyn FileSystem> = sim.clone();
        let dir = Path::new("/seed");
        let limits = segment::SegmentLimits {
            max_store_bytes: 1 << 20,
            max_index_bytes: 16 + 12 * 8,
            prealloc_bytes: 0,
        };
        let mut seg = Segment::create(&fs, dir, base, limits).unwrap();
        let mut buf = Vec::new();
        if !records.is_empty() {
            seg.append(records, &mut buf).unwrap();
        }
        if sealed {
            seg.seal().unwrap();
        }
        drop(seg);
        (
            sim.contents(&segment::store_path(dir, base)).unwrap(),
            sim.contents(&segment::index_path(dir, base)).unwrap(),
        )
    }

    pub fn index() -> Seeds {
        let recs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; usize::from(i) * 3]).collect();
        let recs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
        let (_, clean) = segment_files(0, &recs, true);
        let (_, dirty) = segment_files(0, &recs, false);
        let (_, empty) = segment_files(0, &[], true);
        let mut wrong_count = clean.clone();
        wrong_count[12..16].copy_from_slice(&6u32.to_le_bytes());
        let mut huge_pos = clean.clone();
        huge_pos[16 + 4 * 12 + 4..16 + 5 * 12].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        let mut bad_magic = clean.clone();
        bad_magic[0] = b'X';
        vec![
            ("clean".into(), clean),
            ("dirty".into(), dirty),
            ("empty-clean".into(), empty),
            ("wrong-count".into(), wrong_count),
            ("huge-position".into(), huge_pos),
            ("bad-magic".into(), bad_magic),
            ("short".into(), b"PLOGIDX\0\x01\0".to_vec()),
            ("nothing".into(), vec![]),
        ]
    }

    fn pack(store: &[u8], index: &[u8]) -> Vec<u8> {
        let mut out = (store.len() as u16).to_le_bytes().to_vec();
        out.extend_from_slice(store);
        out.extend_from_slice(index);
        out
    }

    pub fn segment() -> Seeds {
        let four: [&[u8]; 4] = [b"one", b"", b"three", b"four"];
        let (s_sealed, i_sealed) = segment_files(3, &four, true);
        let (s_open, i_open) = segment_files(3, &four, false);
        let (s_empty, i_empty) = segment_files(3, &[], false);
        let mut s_torn = s_open.clone();
        s_torn.truncate(s_open.len() - 2);
        vec![
            ("sealed".into(), pack(&s_sealed, &i_sealed)),
            ("unsealed".into(), pack(&s_open, &i_open)),
            ("empty".into(), pack(&s_empty, &i_empty)),
            ("torn".into(), pack(&s_torn, &i_open)),
            ("no-index".into(), pack(&s_sealed, &[])),
            ("header-only".into(), pack(&s_sealed[..16], &i_empty)),
            ("half-header".into(), pack(&s_sealed[..9], &i_empty)),
        ]
    }

    pub fn config_toml() -> Seeds {
        let texts: &[(&str, &str)] = &[
            ("example", include_str!("../../../config/proglog.toml")),
            ("dev", "dev = true\n"),
            ("unknown-key", "dev = true\nrpc_prot = 1\n"),
            ("wrong-type", "rpc_port = \"x\"\n"),
            ("port-overflow", "rpc_port = 70000\n"),
            ("limits-zero", "dev = true\nmax_connections = 0\nfirst_byte_timeout = \"0s\"\n"),
            ("durations", "dev = true\nproduce_timeout = \"1h30m\"\nretention_age = \"18446744073709551615s\"\n"),
            ("table", "[dev]\nx = 1\n"),
            ("arrays", "dev = true\nstart_join_addrs = [\"a:1\", \"b\", \":0\"]\npeer_names = []\n"),
            ("float", "dev = true\ntrace_sample_ratio = nan\n"),
            ("unix", "dev = true\nunix_socket = \"/tmp/x\"\nunix_socket_mode = \"0o777\"\n"),
            ("bad-toml", "dev = = true\n[[\n"),
        ];
        texts
            .iter()
            .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
            .collect()
    }

    pub fn mux() -> Seeds {
        let hello = crate::transport::tls::client_hello();
        let mut raft_hello = vec![crate::transport::RAFT_RPC];
        raft_hello.extend_from_slice(&hello);
        vec![
            ("empty".into(), vec![]),
            ("lone-raft-byte".into(), vec![0x01]),
            ("client-hello".into(), hello.clone()),
            ("raft-client-hello".into(), raft_hello),
            ("half-hello".into(), hello[..hello.len() / 2].to_vec()),
            (
                "tls-record-header".into(),
                vec![0x16, 0x03, 0x01, 0xff, 0xff],
            ),
            (
                "h2-preface".into(),
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            ),
            (
                "http1".into(),
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
            ("raft-garbage".into(), vec![0x01, 0x00, 0xff, 0x16, 0x03]),
            ("zeros".into(), vec![0u8; 64]),
        ]
    }

    pub fn raft_frame() -> Seeds {
        use crate::raft::codec::encode_msg;
        use crate::raft::{Entry, LogId, Member, Request, TypeConfig, Vote};
        use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
        use openraft::{CommittedLeaderId, EntryPayload, Membership};
        let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
        let append = Request::Append {
            records: vec![bytes::Bytes::from_static(b"a"), bytes::Bytes::new()],
            producer: Some(("p".into(), 7)),
            at_ms: 1,
        };
        let members =
            std::collections::BTreeMap::from([(1u64, Member::new("n1", "127.0.0.1:8400"))]);
        let membership = Membership::new(vec![std::collections::BTreeSet::from([1u64])], members);
        let entries = vec![
            Entry {
                log_id: log_id(1, 0),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Normal(append.clone()),
            },
            Entry {
                log_id: log_id(1, 2),
                payload: EntryPayload::Membership(membership),
            },
            Entry {
                log_id: log_id(2, 3),
                payload: EntryPayload::Normal(Request::Batch(vec![
                    append.clone(),
                    Request::Retain { lowest: 3 },
                ])),
            },
        ];
        let frame = |kind: u8, bytes: Vec<u8>| {
            let mut out = vec![kind];
            out.extend(bytes);
            out
        };
        let mut seeds: Seeds = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("entry-{i}"), frame(0, encode_msg(e))))
            .collect();
        let req: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(1, 2)),
            entries: entries.clone(),
            leader_commit: Some(log_id(1, 1)),
        };
        seeds.push(("append-entries".into(), frame(1, encode_msg(&req))));
        let vote = VoteRequest::new(Vote::new(3, 2), Some(log_id(2, 3)));
        seeds.push(("vote".into(), frame(2, encode_msg(&vote))));
        let ok: Result<AppendEntriesResponse<u64>, openraft::error::RaftError<u64>> =
            Ok(AppendEntriesResponse::Success);
        seeds.push(("append-ok".into(), frame(4, encode_msg(&ok))));
        seeds.push(("request".into(), frame(7, encode_msg(&append))));
        seeds.push(("bad-version".into(), vec![0, 9, 1, 2, 3]));
        seeds.push(("empty".into(), vec![1]));
        seeds
    }
}
