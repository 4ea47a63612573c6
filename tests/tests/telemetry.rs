//! Telemetry of real `proglog agent` processes: OTLP traces received by an
//! in-test OTLP gRPC receiver, JSON log lines on stderr, and native
//! journald entries on a socket the test binds.
//!
//! Traces use real processes rather than in-process agents: the tracing
//! subscriber and the OpenTelemetry layer are per process, so three agents
//! in one process could not tell their spans apart; each process exports
//! with its node name as `service.instance.id`.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use proglog_client::proto::{ProduceRequest, Record};
use proglog_client::{Client, Target};
use proglog_tests::{eventually, free_port, proglog_bin, AgentProcess, ProcessCluster};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    node: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// An OTLP trace service that keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let node = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.instance.id")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        node: node.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_produce_sent_to_a_follower_is_one_trace_across_follower_and_leader() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut cluster = ProcessCluster::new(3, &["--otlp-endpoint", &endpoint]);
    // Export batches every 100 ms instead of 5 s.
    cluster
        .env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    cluster.start_all();
    let leader = cluster.leader();
    let follower = (0..3).find(|&i| i != leader).unwrap();

    // The client starts the trace: its traceparent goes to the follower.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let tls = cluster.root_tls();
    let offset = runtime.block_on(async {
        let mut client = Client::connect(Target::Tcp {
            addr: format!("127.0.0.1:{}", cluster.ports[follower]),
            tls: Some(tls),
        })
        .await
        .unwrap();
        let mut request = tonic::Request::new(ProduceRequest {
            record: Some(Record {
                value: b"traced"[..].into(),
                ..Record::default()
            }),
            ..ProduceRequest::default()
        });
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-{client_span}-01").parse().unwrap(),
        );
        client
            .rpc()
            .produce(request)
            .await
            .unwrap()
            .into_inner()
            .offset
    });
    assert_eq!(offset, 0);

    let (follower_name, leader_name) = (format!("node{follower}"), format!("node{leader}"));
    let ours = |s: &Received| hex(&s.trace_id) == trace_id;
    let (rpc, forward, forwarded) = eventually(
        "the follower's and the leader's spans of the produce",
        Duration::from_secs(30),
        || {
            let spans = receiver.spans.lock().unwrap();
            let find = |node: &str, name: &str| {
                spans
                    .iter()
                    .find(|s| ours(s) && s.node == node && s.name == name)
                    .cloned()
            };
            Some((
                find(&follower_name, "/log.v1.Log/Produce")?,
                find(&follower_name, "/raft.v1.Raft/Forward")?,
                find(&leader_name, "/raft.v1.Raft/Forward")?,
            ))
        },
    );
    // One chain: client -> follower's call -> its forward -> leader's call.
    assert_eq!(hex(&rpc.parent_span_id), client_span, "{rpc:?}");
    assert_eq!(forward.parent_span_id, rpc.span_id, "{forward:?}");
    assert_eq!(forwarded.parent_span_id, forward.span_id, "{forwarded:?}");
    // The leader's Raft append and fsync are traced too (their own traces:
    // one entry and one fsync serve many requests).
    eventually(
        "the leader's raft.append and wal.fsync spans",
        Duration::from_secs(30),
        || {
            let spans = receiver.spans.lock().unwrap();
            let has = |name: &str| {
                spans
                    .iter()
                    .any(|s| s.node == leader_name && s.name == name)
            };
            (has("raft.append") && has("wal.fsync")).then_some(())
        },
    );
}

/// `--dev` flags for one agent on fresh ports with its data in `dir`.
fn dev_args(dir: &std::path::Path, node: &str) -> Vec<String> {
    [
        "agent",
        "--dev",
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--rpc-port",
        &free_port().to_string(),
        "--bind-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--node-name",
        node,
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn json_log_lines_parse_and_name_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = dev_args(dir.path(), "json-node");
    args.extend(["--log-format".into(), "json".into()]);
    let mut agent = AgentProcess::start(&args, dir.path().join("stderr.log"));
    eventually("the agent to serve", Duration::from_secs(30), || {
        agent.stderr().contains("serving log.v1.Log").then_some(())
    });
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
    let stderr = agent.stderr();
    let mut lines = 0;
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["node"], "json-node", "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        // A first start is quiet: dependencies log at warn and above.
        let target = v["target"].as_str().unwrap_or_default();
        if !target.starts_with("proglog") {
            assert!(v["level"] == "WARN" || v["level"] == "ERROR", "{line}");
        }
        lines += 1;
    }
    assert!(
        stderr.contains("\"message\":\"raft stopped; log closed\""),
        "{stderr}"
    );
    assert!(lines >= 3, "{stderr}");
}

/// Decodes journald native-protocol datagrams: `KEY=value\n`, or `KEY\n`,
/// a little-endian u64 length, the value and `\n` for values with
/// newlines.
fn journal_fields(mut datagram: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !datagram.is_empty() {
        let end = datagram.iter().position(|&b| b == b'\n').unwrap();
        let line = &datagram[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            datagram = &datagram[end + 1..];
        } else {
            let rest = &datagram[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
            );
            datagram = &rest[8 + len + 1..];
        }
    }
    fields
}

#[test]
fn under_systemd_log_lines_are_native_journald_entries() {
    // journald's socket path is fixed (/run/systemd/journal/socket), so the
    // agent runs in its own mount namespace where /run is a directory of
    // this test, holding a datagram socket the test bound.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("systemd/journal")).unwrap();
    let journal = UnixDatagram::bind(run.join("systemd/journal/socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // systemd sets JOURNAL_STREAM to the device and inode of stderr.
    let log = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let meta = stderr.metadata().unwrap();
    let mut child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount --bind "$0" /run && exec "$@""#)
        .arg(&run)
        .arg(proglog_bin())
        .args(dev_args(dir.path(), "journal-node"))
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawning unshare (util-linux)");

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 1 << 16];
    let serving = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "agent exited with {status}: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no journald entry for serving; stderr: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        let Ok(n) = journal.recv(&mut buf) else {
            continue;
        };
        let fields = journal_fields(&buf[..n]);
        if fields.get("MESSAGE").map(String::as_str) == Some("serving log.v1.Log") {
            break fields;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    // INFO is journald's "notice" (5); our fields are upper-cased, unprefixed.
    assert_eq!(serving["PRIORITY"], "5", "{serving:?}");
    assert_eq!(serving["NODE"], "journal-node", "{serving:?}");
    assert_eq!(serving["SYSLOG_IDENTIFIER"], "proglog", "{serving:?}");
    assert!(serving["ADDR"].starts_with("127.0.0.1:"), "{serving:?}");
    assert_eq!(serving["TARGET"], "proglog_agent::agent", "{serving:?}");
    // Nothing went to stderr: the journal has the lines once.
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "");
}

#[test]
fn a_reload_changes_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proglog.toml");
    std::fs::write(&config, "log_level = \"info\"\nlog_format = \"json\"\n").unwrap();
    let mut args = dev_args(dir.path(), "reload-node");
    args.extend(["--config-file".into(), config.display().to_string()]);
    let port = &args[args.iter().position(|a| a == "--rpc-port").unwrap() + 1];
    let conn = vec!["--addr".to_string(), format!("127.0.0.1:{port}")];
    let agent = AgentProcess::start(&args, dir.path().join("stderr.log"));
    let produce = || proglog_tests::client("produce", &conn, &[], "x\n");
    // Serving, and (the agent does not wait for one to serve) a leader.
    eventually("the agent to lead", Duration::from_secs(30), || {
        agent.stderr().contains("leader known").then_some(())
    });
    let out = produce();
    assert!(out.status.success(), "{out:?}");
    let openraft_debug = |stderr: &str| {
        stderr
            .lines()
            .any(|l| l.contains("\"level\":\"DEBUG\"") && l.contains("\"target\":\"openraft"))
    };
    assert!(!openraft_debug(&agent.stderr()), "{}", agent.stderr());

    // A full directive is used as given, and applies without a restart.
    std::fs::write(
        &config,
        "log_level = \"info,openraft=debug\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    agent.signal("HUP");
    eventually(
        "openraft's debug lines after the reload",
        Duration::from_secs(30),
        || {
            let _ = produce();
            openraft_debug(&agent.stderr()).then_some(())
        },
    );
}
