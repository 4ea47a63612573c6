//! The metrics port of real agents: a scrape after a produce and a denied
//! call shows them counted and passes `promtool check metrics`; a real
//! Prometheus (Debian's `prometheus` package) scrapes a 3-node cluster.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proglog_tests::{client, eventually, free_port, ProcessCluster};

/// `GET path` from `addr` over HTTP/1.0: (status, body); `None` if the
/// connection failed.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The value of the sample `name` whose labels include every `labels`
/// pair, in Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let series = l.rsplit_once(' ').map_or("", |(s, _)| s);
            let bare = series.split('{').next() == Some(name);
            bare && labels
                .iter()
                .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[test]
fn a_scrape_counts_produces_denials_and_fsyncs_and_promtool_accepts_it() {
    let mut c = ProcessCluster::new(1, &[]).with_metrics();
    c.start_node(0);
    c.wait_servers(0, 1);
    let addr = c.metrics_addr(0);
    assert_eq!(http_get(addr, "/health").map(|r| r.0), Some(200));
    eventually("/ready to answer 200", Duration::from_secs(30), || {
        (http_get(addr, "/ready")?.0 == 200).then_some(())
    });
    let produced = c.produce(0, &["a".into(), "b".into(), "c".into()]);
    assert_eq!(produced.len(), 3);
    let nobody = c.fx.client_args("nobody", c.ports[0]);
    let denied = client("produce", &nobody, &["x"], "");
    assert!(!denied.status.success(), "nobody may not produce");

    let (status, text) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let produce = [("service", "log.v1.Log"), ("method", "Produce")];
    let calls = sample(&text, "proglog_grpc_requests_total", &produce).unwrap_or(0.0);
    assert!(
        calls >= 4.0,
        "3 produces and 1 denied one, got {calls}:\n{text}"
    );
    let denials = [
        ("service", "log.v1.Log"),
        ("method", "Produce"),
        ("code", "PERMISSION_DENIED"),
    ];
    assert_eq!(
        sample(&text, "proglog_grpc_errors_total", &denials),
        Some(1.0),
        "{text}"
    );
    let latency = sample(
        &text,
        "proglog_grpc_request_duration_seconds_count",
        &produce,
    );
    assert!(latency.unwrap_or(0.0) >= 4.0, "{text}");
    assert_eq!(
        sample(&text, "proglog_grpc_requests_in_flight", &produce),
        Some(0.0),
        "{text}"
    );
    let fsyncs = sample(&text, "proglog_wal_fsync_duration_seconds_count", &[]);
    assert!(fsyncs.unwrap_or(0.0) > 0.0, "no fsync recorded:\n{text}");
    // The produces' entries, hop by hop; the sync hop waited for an fsync.
    for hop in [
        "submit",
        "write",
        "sync",
        "commit",
        "apply_handoff",
        "apply",
        "answer",
    ] {
        let entries = sample(
            &text,
            "proglog_raft_hop_duration_seconds_count",
            &[("hop", hop)],
        );
        assert!(entries.unwrap_or(0.0) >= 1.0, "no {hop} hop:\n{text}");
    }
    let synced = sample(
        &text,
        "proglog_raft_hop_duration_seconds_sum",
        &[("hop", "sync")],
    );
    assert!(synced.unwrap_or(0.0) > 0.0, "{text}");
    assert_eq!(sample(&text, "proglog_raft_is_leader", &[]), Some(1.0));
    assert!(sample(&text, "proglog_raft_term", &[]).unwrap_or(0.0) >= 1.0);
    let data_records = sample(&text, "proglog_wal_records", &[("log", "data")]);
    assert!(data_records.unwrap_or(0.0) >= 3.0, "{text}");
    assert!(sample(&text, "proglog_data_dir_free_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert!(sample(&text, "proglog_process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert!(sample(&text, "proglog_process_open_fds", &[]).unwrap_or(0.0) > 0.0);
    eventually(
        "gossip to count this node alive",
        Duration::from_secs(30),
        || {
            let (_, text) = http_get(addr, "/metrics")?;
            (sample(&text, "proglog_members", &[("status", "alive")]) == Some(1.0)).then_some(())
        },
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; .ci/test installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics failed: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// A Prometheus server started by a test; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Debian's `prometheus` scraping `targets` every second, with
    /// its config, TSDB and log in `dir`, on a free loopback port.
    fn start(dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: proglog\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package `prometheus`; .ci/test installs it)");
        Prometheus { child, addr }
    }

    /// The `result` array of an instant query, once the API answers.
    fn query(&self, query: &str) -> Option<Vec<serde_json::Value>> {
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={query}"))?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one instant-vector sample of the query API.
fn value(sample: &serde_json::Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_every_node_of_a_cluster() {
    let mut c = ProcessCluster::new(3, &[]).with_metrics();
    c.start_all();
    c.produce(0, &["x".into()]);
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<SocketAddr> = (0..3).map(|i| c.metrics_addr(i)).collect();
    let prometheus = Prometheus::start(dir.path(), &targets);

    let up = eventually(
        "Prometheus to see all three targets up",
        Duration::from_secs(60),
        || {
            let result = prometheus.query("up")?;
            (result.len() == 3 && result.iter().all(|s| value(s) == Some(1.0))).then_some(result)
        },
    );
    let instances: Vec<&str> = up
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str())
        .collect();
    for t in &targets {
        assert!(instances.contains(&t.to_string().as_str()), "{up:?}");
    }
    eventually(
        "a non-zero proglog counter in Prometheus",
        Duration::from_secs(60),
        || {
            let result = prometheus.query("sum(proglog_grpc_requests_total)")?;
            (value(result.first()?)? > 0.0).then_some(())
        },
    );
    let leaders = eventually("one leader in Prometheus", Duration::from_secs(60), || {
        let result = prometheus.query("sum(proglog_raft_is_leader)")?;
        let n = value(result.first()?)?;
        (n == 1.0).then_some(n)
    });
    assert_eq!(leaders, 1.0);
    // The leader reports the replication lag of both followers.
    eventually("the lag of two followers", Duration::from_secs(60), || {
        let result = prometheus.query("count(proglog_raft_replication_lag_entries)")?;
        (value(result.first()?)? == 2.0).then_some(())
    });
    // Peer calls are counted too: both followers serve the leader's
    // raft.v1 calls (AppendEntries at least).
    eventually(
        "raft.v1 calls counted on two nodes or more",
        Duration::from_secs(60),
        || {
            let result = prometheus.query(
                "count(count%20by%20(instance)%20\
                 (proglog_grpc_requests_total%7Bservice%3D%22raft.v1.Raft%22%7D))",
            )?;
            (value(result.first()?)? >= 2.0).then_some(())
        },
    );
    // Gossip: every node counts three alive members.
    eventually(
        "three alive members on each node",
        Duration::from_secs(60),
        || {
            let result = prometheus.query("proglog_members%7Bstatus%3D%22alive%22%7D")?;
            (result.len() == 3 && result.iter().all(|s| value(s) == Some(3.0))).then_some(())
        },
    );
}
