//! Process-level tests of the real `proglog` binary: restart after kill -9,
//! exit codes, hot reload by the file watcher, SIGTERM, cfssl certificates.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use proglog_tests::{client, eventually, free_port, proglog, proglog_bin, AgentProcess, Fixture};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn acked_records_survive_kill_9_and_a_restart_with_the_same_command_line() {
    let fx = Fixture::new();
    let port = free_port();
    let mut args = fx.agent_args("data", port);
    // Small segments and frequent snapshots: the restart goes through a
    // snapshot, the cut-back data log and a replay of the Raft log.
    args.extend(
        [
            "--snapshot-threshold",
            "50",
            "--segment-max-store-bytes",
            "4096",
        ]
        .map(String::from),
    );
    let conn = fx.client_args("root", port);
    let mut agent = AgentProcess::start(&args, fx.path("agent1.log"));
    agent.wait_ready(&conn);

    // A producer streams lines through the CLI; we read its acks as they come.
    let mut producer = Command::new(proglog_bin())
        .arg("produce")
        .args(&conn)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for i in 0..100_000 {
            if writeln!(stdin, "record-{i}").is_err() {
                return;
            }
        }
    });
    let mut acks = BufReader::new(producer.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let line = acks.next().expect("producer ended early").unwrap();
        acked.push(line.parse::<u64>().unwrap());
    }
    let snapshot = fx.path("data/sm/snapshots/current/meta.json");
    eventually(
        "a snapshot before the crash",
        Duration::from_secs(30),
        || snapshot.exists().then_some(()),
    );
    agent.kill9();
    acked.extend(
        acks.map_while(Result::ok)
            .filter_map(|l| l.parse::<u64>().ok()),
    );
    let _ = producer.wait();
    let _ = feeder.join();
    assert_eq!(
        acked,
        (0..acked.len() as u64).collect::<Vec<_>>(),
        "offsets are dense"
    );

    let mut agent = AgentProcess::start(&args, fx.path("agent2.log"));
    agent.wait_ready(&conn);
    // Reads answer UNAVAILABLE until the restarted node has replayed its
    // Raft log; then every acked record is there.
    let out = eventually("the log to be replayed", Duration::from_secs(30), || {
        let out = client("consume", &conn, &["--json"], "");
        out.status.success().then_some(out)
    });
    let records: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records.len() >= acked.len(),
        "{} acked, {} present",
        acked.len(),
        records.len()
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["offset"], i as u64);
        assert_eq!(r["value"], format!("record-{i}"));
    }
    let next = client("produce", &conn, &["after-restart"], "");
    assert_eq!(stdout(&next).trim(), records.len().to_string());
}

#[test]
fn a_locked_data_dir_exits_1_naming_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let port = free_port().to_string();
    let conn = vec!["--addr".to_string(), format!("127.0.0.1:{port}")];
    let first = ["agent", "--dev", "--data-dir", &data, "--rpc-port", &port].map(String::from);
    let mut a = AgentProcess::start(&first, dir.path().join("a.log"));
    a.wait_ready(&conn);
    let other = free_port().to_string();
    let out = proglog(
        &["agent", "--dev", "--data-dir", &data, "--rpc-port", &other],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&data) && err.contains("locked"), "{err}");
    // Dev mode speaks plaintext with the CLI.
    let produced = client("produce", &conn, &["dev-record"], "");
    assert_eq!(stdout(&produced).trim(), "0");
    let consumed = client("consume", &conn, &[], "");
    assert_eq!(stdout(&consumed), "dev-record\n");
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proglog.toml");
    std::fs::write(&file, "dev = true\nmax_record_bytez = 5\n").unwrap();
    let out = proglog(&["agent", "--config-file", file.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_record_bytez"), "{err}");
    assert!(err.contains(file.to_str().unwrap()), "{err}");

    let out = Command::new(proglog_bin())
        .args(["agent", "--dev"])
        .env("PROGLOG_SYNC", "sometimes")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sync"));
}

#[test]
fn acl_edits_are_picked_up_by_the_file_watcher_and_sigterm_exits_0() {
    let fx = Fixture::new();
    let port = free_port();
    let mut agent = AgentProcess::start(&fx.agent_args("data", port), fx.path("agent.log"));
    agent.wait_ready(&fx.client_args("root", port));
    let nobody = fx.client_args("nobody", port);
    let denied = client("produce", &nobody, &["x"], "");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("PERMISSION_DENIED"));

    // Replace the policy by rename, as deployment tools do.
    let tmp = fx.path("policy.csv.new");
    std::fs::write(
        &tmp,
        "p, root, *, produce\np, root, *, consume\np, nobody, *, produce\n",
    )
    .unwrap();
    std::fs::rename(&tmp, fx.path("policy.csv")).unwrap();
    eventually("nobody to be allowed", Duration::from_secs(10), || {
        client("produce", &nobody, &["x"], "")
            .status
            .success()
            .then_some(())
    });

    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    assert!(agent.stderr().contains("log closed"), "{}", agent.stderr());
}

#[test]
fn certificates_made_by_cfssl_are_accepted() {
    let cfssl = Command::new("cfssl").arg("version").output();
    assert!(
        cfssl.is_ok_and(|o| o.status.success()),
        "cfssl is missing: install Debian's golang-cfssl (.ci/test does)"
    );
    let fx = Fixture::new();
    let gen = proglog_tests::workspace().join("certs/gen.sh");
    let certs = fx.path("certs");
    std::fs::remove_dir_all(&certs).unwrap();
    let out = Command::new("bash").arg(gen).arg(&certs).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut agent = AgentProcess::start(&fx.agent_args("data", port), fx.path("agent.log"));
    agent.wait_ready(&fx.client_args("root", port));
    let ok = client(
        "produce",
        &fx.client_args("root", port),
        &["from-cfssl"],
        "",
    );
    assert_eq!(stdout(&ok).trim(), "0");
    let denied = client("produce", &fx.client_args("nobody", port), &["x"], "");
    assert!(!denied.status.success());
}

/// Runs `proglog consume --follow` with `conn` until it printed `n` lines
/// (within 30 s), then stops it; returns those lines and its stderr.
fn follow_lines(conn: &[String], n: usize) -> (Vec<String>, String) {
    let mut child = Command::new(proglog_bin())
        .arg("consume")
        .args(conn)
        .arg("--follow")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("consume --follow printed {lines:?}, then {e}");
            }
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn consume_without_from_starts_where_retention_left_the_log() {
    // A --dev agent (plaintext: no certificates to make) with its Unix
    // socket; segments of about ten records, retention keeps about three.
    let dir = tempfile::tempdir().unwrap();
    let path = |rel: &str| dir.path().join(rel).display().to_string();
    let port = free_port().to_string();
    let args = [
        "agent",
        "--dev",
        "--data-dir",
        &path("data"),
        "--rpc-port",
        &port,
        "--bind-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--segment-max-store-bytes",
        "1024",
        "--segment-max-index-bytes",
        "4096",
        "--retention-bytes",
        "3000",
        "--unix-socket",
        &path("proglog.sock"),
        "--unix-socket-subject",
        "root",
    ]
    .map(String::from);
    let conn = vec!["--addr".to_string(), format!("127.0.0.1:{port}")];
    let unix = vec!["--unix-socket".to_string(), path("proglog.sock")];
    let mut agent = AgentProcess::start(&args, dir.path().join("agent.log"));
    agent.wait_ready(&conn);
    let record = |i: u64| format!("record-{i:04}-{}", "x".repeat(80));
    let lines: String = (0..100).map(|i| record(i) + "\n").collect();
    let produced = client("produce", &conn, &[], &lines);
    assert!(produced.status.success(), "{produced:?}");

    // The leader's retention check (every second) may move the lowest
    // offset while a command reads: poll until `--from 0` and the default
    // start agree on it.
    let removed =
        "proglog: OUT_OF_RANGE: offset 0 was removed by retention: the log starts at offset ";
    let lowest = eventually("retention to settle", Duration::from_secs(30), || {
        let explicit = client("consume", &conn, &["--from", "0"], "");
        let err = String::from_utf8_lossy(&explicit.stderr).into_owned();
        if explicit.status.success() || !err.starts_with(removed) {
            // Offset 0 is still there (retention may overtake the read:
            // that names a later offset).
            assert!(
                explicit.status.success() || err.contains("was removed by retention"),
                "{explicit:?}"
            );
            return None;
        }
        assert_eq!(explicit.status.code(), Some(1), "{explicit:?}");
        let named: u64 = err[removed.len()..].trim().parse().unwrap();
        let default = client("consume", &conn, &[], "");
        assert!(default.status.success(), "{default:?}");
        let err = String::from_utf8_lossy(&default.stderr).into_owned();
        let expected = format!(
            "proglog consume: records before offset {named} were removed by retention; \
             starting at {named}\n"
        );
        if err != expected {
            return None; // moved between the two commands
        }
        let want: String = (named..100).map(|i| record(i) + "\n").collect();
        assert_eq!(stdout(&default), want);
        Some(named)
    });
    assert!(lowest > 0 && lowest < 99, "lowest {lowest}");
    let note =
        format!("records before offset {lowest} were removed by retention; starting at {lowest}");

    // The same over the Unix socket.
    let default = client("consume", &unix, &[], "");
    assert!(default.status.success(), "{default:?}");
    assert!(String::from_utf8_lossy(&default.stderr).contains(&note));
    assert!(stdout(&default).starts_with(&(record(lowest) + "\n")));
    let explicit = client("consume", &unix, &["--from", "0"], "");
    assert_eq!(explicit.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&explicit.stderr)
        .contains(&format!("the log starts at offset {lowest}")));

    // Past the end, with --from: exit 1 saying so.
    let past = client("consume", &conn, &["--from", "100"], "");
    assert_eq!(past.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&past.stderr)
            .contains("offset 100 is past the end of the log (next offset 100)"),
        "{past:?}"
    );

    // --follow, over TCP (the cluster client) and the Unix socket.
    for conn in [&conn, &unix] {
        let (lines, err) = follow_lines(conn, 2);
        assert_eq!(lines, [record(lowest), record(lowest + 1)]);
        assert!(err.contains(&note), "{err}");
    }
}
