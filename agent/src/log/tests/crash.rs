//! Crash test: a child process appends with `SyncPolicy::Always` and reports
//! each acknowledged offset; the parent SIGKILLs it mid-stream, reopens the
//! log, and checks every acknowledged record reads back identical.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::{Log, LogConfig};

const CHILD_ENV: &str = "PROGLOG_WAL_CRASH_CHILD_DIR";

/// The record a writer appends as its `seq`-th: its identity, padded to a
/// length that varies with `seq`.
fn payload(writer: u64, seq: u64) -> Vec<u8> {
    let mut p = format!("w{writer}-s{seq}-").into_bytes();
    p.resize(p.len() + (seq % 300) as usize, b'0' + (seq % 10) as u8);
    p
}

fn crash_config() -> LogConfig {
    LogConfig {
        max_store_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

/// Runs only as the child of `acked_records_survive_sigkill`.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let log = Arc::new(Log::open(dir, crash_config()).unwrap());
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                for seq in 0.. {
                    let offset = if seq % 7 == 0 {
                        log.append_batch(&[payload(w, seq), payload(w, seq + 1_000_000)])
                            .unwrap()
                    } else {
                        log.append(&payload(w, seq)).unwrap()
                    };
                    println!("ack {offset} {w} {seq}");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
}

#[test]
fn acked_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "log::tests::crash::crash_child_writer",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < 3000 {
        assert!(
            Instant::now() < deadline,
            "child acked only {} records",
            acked.len()
        );
        let line = lines.next().expect("child exited early").unwrap();
        acked.extend(parse_ack(&line));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acks printed before the kill count too; a torn last line does not.
    acked.extend(lines.map_while(Result::ok).filter_map(|l| parse_ack(&l)));

    let log = Log::open(dir.path(), crash_config()).unwrap();
    let next = log.next_offset();
    for &(offset, w, seq) in &acked {
        assert!(offset < next, "acked offset {offset} lost (next is {next})");
        assert_eq!(
            log.read(offset).unwrap(),
            payload(w, seq),
            "offset {offset}"
        );
        if seq % 7 == 0 {
            assert_eq!(log.read(offset + 1).unwrap(), payload(w, seq + 1_000_000));
        }
    }
    // Everything up to the end reads back, and appends continue densely.
    for offset in 0..next {
        log.read(offset).unwrap();
    }
    assert_eq!(log.append(b"after the crash").unwrap(), next);
}

fn parse_ack(line: &str) -> Option<(u64, u64, u64)> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    let mut num = || parts.next()?.parse().ok();
    Some((num()?, num()?, num()?))
}
