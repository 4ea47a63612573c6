//! Harness for tests that start real `proglog` processes: builds the binary
//! once, makes certificates, starts and kills agents, runs CLI commands, and
//! polls with deadlines (never sleeps as synchronisation).

pub mod faults;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Path of the `proglog` binary, built (once per test process) with the
/// same cargo that runs the tests.
pub fn proglog_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "proglog-agent",
                "--bin",
                "proglog",
            ])
            .current_dir(workspace())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building proglog failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        target.join("debug").join("proglog")
    })
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 20 ms until it returns `Some`, or panics naming
/// `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `proglog` with `args`, feeding `stdin`.
pub fn proglog(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(proglog_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning proglog");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Certificates and ACL files for one test, in a temp dir.
pub struct Fixture {
    /// The temp dir holding everything.
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// Makes certs with `proglog certs` and copies the example ACL.
    pub fn new() -> Fixture {
        Fixture::with_hosts(&["127.0.0.1", "localhost"])
    }

    /// [`Fixture::new`] with `hosts` as the server certificate's SANs (for
    /// agents bound to other addresses than loopback).
    pub fn with_hosts(hosts: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let hosts = hosts.join(",");
        let out = proglog(
            &["certs", "--dir", certs.to_str().unwrap(), "--hosts", &hosts],
            "",
        );
        assert!(
            out.status.success(),
            "proglog certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in ["model.conf", "policy.csv"] {
            std::fs::copy(workspace().join("config").join(f), dir.path().join(f)).unwrap();
        }
        Fixture { dir }
    }

    /// A path inside the fixture.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `proglog agent` flags for a TLS node with this fixture's files.
    pub fn agent_args(&self, data_dir: &str, port: u16) -> Vec<String> {
        let p = |rel: &str| self.path(rel).display().to_string();
        [
            "agent",
            "--data-dir",
            &p(data_dir),
            "--rpc-port",
            &port.to_string(),
            "--bind-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--bootstrap",
            "--acl-model-file",
            &p("model.conf"),
            "--acl-policy-file",
            &p("policy.csv"),
            "--server-tls-cert-file",
            &p("certs/server.pem"),
            "--server-tls-key-file",
            &p("certs/server-key.pem"),
            "--server-tls-ca-file",
            &p("certs/ca.pem"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Client flags for `user` (root or nobody) against `port`.
    pub fn client_args(&self, user: &str, port: u16) -> Vec<String> {
        self.client_args_at(user, "127.0.0.1", port)
    }

    /// [`Fixture::client_args`] against `host:port`.
    pub fn client_args_at(&self, user: &str, host: &str, port: u16) -> Vec<String> {
        let p = |rel: String| self.path(&rel).display().to_string();
        vec![
            "--addr".into(),
            format!("{host}:{port}"),
            "--tls-ca-file".into(),
            p("certs/ca.pem".into()),
            "--tls-cert-file".into(),
            p(format!("certs/{user}-client.pem")),
            "--tls-key-file".into(),
            p(format!("certs/{user}-client-key.pem")),
        ]
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// Whether `proglog servers` got the agent's answer: exit 0 (a leader
/// listed), or exit 1 after the list because it names no leader yet (an
/// agent serves before its cluster has elected one).
pub fn servers_answered(out: &Output) -> bool {
    out.status.success() || String::from_utf8_lossy(&out.stderr).contains("no leader:")
}

/// Runs a client subcommand (`produce`, `consume`, ...) with `conn` flags.
pub fn client(cmd: &str, conn: &[String], extra: &[&str], stdin: &str) -> Output {
    let mut args: Vec<&str> = vec![cmd];
    args.extend(conn.iter().map(String::as_str));
    args.extend(extra);
    proglog(&args, stdin)
}

/// A running `proglog agent` process; killed on drop.
pub struct AgentProcess {
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `proglog <args>` with stderr to `log`.
    pub fn start(args: &[String], log: PathBuf) -> AgentProcess {
        AgentProcess::start_with_env(args, log, &[])
    }

    /// [`AgentProcess::start`] with extra environment variables (such as
    /// `NOTIFY_SOCKET`).
    pub fn start_with_env(args: &[String], log: PathBuf, env: &[(&str, &str)]) -> AgentProcess {
        AgentProcess::start_in(None, args, log, env)
    }

    /// [`AgentProcess::start_with_env`] inside network namespace `netns`
    /// when given (`ip netns exec` execs the agent, so the child's pid is
    /// the agent's and SIGKILL reaches it).
    pub fn start_in(
        netns: Option<&str>,
        args: &[String],
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> AgentProcess {
        let stderr = std::fs::File::create(&log).unwrap();
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(proglog_bin());
                c
            }
            None => Command::new(proglog_bin()),
        };
        let child = command
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawning proglog agent");
        AgentProcess { child, log }
    }

    /// Waits until `proglog servers` with `conn` gets the agent's answer
    /// (with or without a leader: see [`servers_answered`]).
    pub fn wait_ready(&mut self, conn: &[String]) {
        eventually("the agent to serve", Duration::from_secs(30), || {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("agent exited with {status}: {}", self.stderr());
            }
            servers_answered(&client("servers", conn, &[], "")).then_some(())
        });
    }

    /// The agent's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal` ("TERM", "HUP", "INT", "STOP", "CONT", "KILL") with
    /// kill(2), from Rust: slim images lack the kill(1) program.
    pub fn signal(&self, signal: &str) {
        use rustix::process::{kill_process, Pid, Signal};
        let number = match signal {
            "TERM" => Signal::TERM,
            "HUP" => Signal::HUP,
            "INT" => Signal::INT,
            "STOP" => Signal::STOP,
            "CONT" => Signal::CONT,
            "KILL" => Signal::KILL,
            other => panic!("unknown signal {other}"),
        };
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .expect("a child pid is a positive i32");
        kill_process(pid, number).unwrap_or_else(|e| panic!("kill -{signal} failed: {e}"));
    }

    /// Waits for the process to exit (bounded) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        eventually("the agent to exit", timeout, || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster of real `proglog agent` processes on loopback sharing one
/// fixture: node 0 bootstraps, the others join it by `--start-join-addrs`
/// (node 0's gossip address).
/// The base of the cluster tests.
pub struct ProcessCluster {
    /// Certificates and ACL.
    pub fx: Fixture,
    /// RPC port of each node (fixed: membership records the address).
    pub ports: Vec<u16>,
    /// Gossip port of each node (fixed: the others join node 0's, and
    /// gossip reconnects to a restarted node at its old address).
    pub gossip_ports: Vec<u16>,
    /// Each node's process, `None` while it is down.
    pub procs: Vec<Option<AgentProcess>>,
    /// Each node's `--metrics-addr` port (empty: metrics off; see
    /// [`ProcessCluster::with_metrics`]).
    pub metrics_ports: Vec<u16>,
    /// The address each node binds (gossip and RPC); 127.0.0.1 unless the
    /// cluster was made with [`ProcessCluster::on_hosts`].
    pub hosts: Vec<String>,
    /// The network namespace each node runs in, if any.
    pub netns: Vec<Option<String>>,
    /// Extra flags for every node.
    extra: Vec<String>,
    /// Extra environment variables for every node (set before starting).
    pub env: Vec<(String, String)>,
    starts: usize,
}

impl ProcessCluster {
    /// Starts `n` nodes with `extra` flags each and waits until every node
    /// lists `n` servers and a leader.
    pub fn start(n: usize, extra: &[&str]) -> ProcessCluster {
        let mut cluster = ProcessCluster::new(n, extra);
        cluster.start_all();
        cluster
    }

    /// Starts every node and waits until each lists them all and a
    /// leader.
    pub fn start_all(&mut self) {
        let n = self.ports.len();
        for i in 0..n {
            self.start_node(i);
        }
        for i in 0..n {
            self.wait_servers(i, n);
        }
    }

    /// The TLS of the fixture's `root` client (allowed everything).
    pub fn root_tls(&self) -> proglog_client::Tls {
        let certs = self.fx.path("certs");
        proglog_client::Tls::from_files(
            &certs.join("ca.pem"),
            &certs.join("root-client.pem"),
            &certs.join("root-client-key.pem"),
        )
        .expect("the fixture's client certificate")
    }

    /// A cluster of `n` nodes with `extra` flags each, none running yet
    /// (start them with [`ProcessCluster::start_node`] or
    /// [`ProcessCluster::spawn_node`]).
    pub fn new(n: usize, extra: &[&str]) -> ProcessCluster {
        ProcessCluster {
            fx: Fixture::new(),
            ports: (0..n).map(|_| free_port()).collect(),
            gossip_ports: (0..n).map(|_| free_port()).collect(),
            procs: (0..n).map(|_| None).collect(),
            metrics_ports: Vec::new(),
            hosts: vec!["127.0.0.1".into(); n],
            netns: vec![None; n],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            starts: 0,
        }
    }

    /// A cluster (none running yet) whose node `i` binds `hosts[i]` and
    /// runs in network namespace `netns[i]`; the server certificate names
    /// every host.
    pub fn on_hosts(hosts: &[String], netns: &[Option<String>], extra: &[&str]) -> ProcessCluster {
        let mut sans: Vec<&str> = vec!["127.0.0.1", "localhost"];
        sans.extend(hosts.iter().map(String::as_str));
        let n = hosts.len();
        ProcessCluster {
            fx: Fixture::with_hosts(&sans),
            ports: (0..n).map(|_| free_port()).collect(),
            gossip_ports: (0..n).map(|_| free_port()).collect(),
            procs: (0..n).map(|_| None).collect(),
            metrics_ports: Vec::new(),
            hosts: hosts.to_vec(),
            netns: netns.to_vec(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            starts: 0,
        }
    }

    /// Gives each node a metrics port (`--metrics-addr` on loopback).
    pub fn with_metrics(mut self) -> ProcessCluster {
        self.metrics_ports = (0..self.ports.len()).map(|_| free_port()).collect();
        self
    }

    /// The `--metrics-addr` of node `i` (after [`ProcessCluster::with_metrics`]).
    pub fn metrics_addr(&self, i: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.metrics_ports[i]))
    }

    /// Starts node `i` with `args` (stderr to a new log file) without
    /// waiting for it to serve.
    pub fn spawn_with(&mut self, i: usize, args: &[String]) -> &mut AgentProcess {
        self.starts += 1;
        let log = self.fx.path(&format!("node{i}.{}.log", self.starts));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let agent = AgentProcess::start_in(self.netns[i].as_deref(), args, log, &env);
        self.procs[i].insert(agent)
    }

    /// Starts node `i` on its data dir without waiting for it to serve.
    pub fn spawn_node(&mut self, i: usize) {
        let args = self.args(i);
        self.spawn_with(i, &args);
    }

    /// Sends SIGTERM to node `i` and waits (bounded) until it exits;
    /// returns its exit status and stderr.
    pub fn terminate(&mut self, i: usize) -> (ExitStatus, String) {
        let mut agent = self.procs[i].take().expect("node is running");
        agent.signal("TERM");
        let status = agent.wait_exit(Duration::from_secs(60));
        (status, agent.stderr())
    }

    /// `proglog agent` flags of node `i`.
    pub fn args(&self, i: usize) -> Vec<String> {
        let mut args = self.fx.agent_args(&format!("node{i}"), self.ports[i]);
        if let Some(at) = args.iter().position(|a| a == "--bind-addr") {
            args[at + 1] = format!("{}:{}", self.hosts[i], self.gossip_ports[i]);
        }
        if i > 0 {
            args.retain(|a| a != "--bootstrap");
            args.push("--start-join-addrs".into());
            args.push(format!("{}:{}", self.hosts[0], self.gossip_ports[0]));
        }
        args.extend(["--node-name".into(), format!("node{i}")]);
        if let Some(port) = self.metrics_ports.get(i) {
            args.extend(["--metrics-addr".into(), format!("127.0.0.1:{port}")]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts (or restarts) node `i` on its data dir and waits until it
    /// serves.
    pub fn start_node(&mut self, i: usize) {
        let conn = self.conn(i);
        self.spawn_node(i);
        self.procs[i]
            .as_mut()
            .expect("just spawned")
            .wait_ready(&conn);
    }

    /// Client flags (user `root`) for node `i`.
    pub fn conn(&self, i: usize) -> Vec<String> {
        self.fx
            .client_args_at("root", &self.hosts[i], self.ports[i])
    }

    /// The RPC address (`host:port`) of node `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("{}:{}", self.hosts[i], self.ports[i])
    }

    /// `proglog servers` on node `i`: (name, address, leads).
    pub fn servers(&self, i: usize) -> Vec<(String, String, bool)> {
        let out = client("servers", &self.conn(i), &[], "");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut f = line.split('\t');
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()? == "leader",
                ))
            })
            .collect()
    }

    /// `proglog members` on node `i`: (name, gossip address, status, tags).
    pub fn members(&self, i: usize) -> Vec<(String, String, String, String)> {
        let out = client("members", &self.conn(i), &[], "");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next().unwrap_or_default().to_string(),
                ))
            })
            .collect()
    }

    /// Waits until node `i` lists `n` servers and a leader.
    pub fn wait_servers(&self, i: usize, n: usize) {
        eventually(
            &format!("node{i} to list {n} servers and a leader"),
            Duration::from_secs(60),
            || {
                let servers = self.servers(i);
                (servers.len() == n && servers.iter().any(|s| s.2)).then_some(())
            },
        );
    }

    /// The node every running node names as leader, once they agree on a
    /// running one.
    pub fn leader(&self) -> usize {
        eventually(
            "a running leader every running node agrees on",
            Duration::from_secs(60),
            || {
                let mut views = (0..self.procs.len())
                    .filter(|&i| self.procs[i].is_some())
                    .map(|i| self.servers(i).into_iter().find(|s| s.2).map(|s| s.0));
                let first = views.next()??;
                let leader: usize = first.strip_prefix("node")?.parse().ok()?;
                (self.procs[leader].is_some() && views.all(|v| v.as_ref() == Some(&first)))
                    .then_some(leader)
            },
        )
    }

    /// SIGKILLs node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut agent) = self.procs[i].take() {
            agent.kill9();
        }
    }

    /// Produces each of `values` through node `i` with the CLI; returns
    /// the offsets it printed.
    pub fn produce(&self, i: usize, values: &[String]) -> Vec<u64> {
        let input: String = values.iter().map(|v| format!("{v}\n")).collect();
        let out = client("produce", &self.conn(i), &[], &input);
        assert!(
            out.status.success(),
            "produce via node{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().expect("an offset per line"))
            .collect()
    }

    /// Waits until node `i` returns `value` at each `(offset, value)`.
    pub fn wait_records(&self, i: usize, acked: &[(u64, String)]) {
        eventually(
            &format!("node{i} to hold {} acked records", acked.len()),
            Duration::from_secs(60),
            || {
                let out = client("consume", &self.conn(i), &["--from", "0", "--json"], "");
                if !out.status.success() && out.stdout.is_empty() {
                    return None;
                }
                let got: std::collections::HashMap<u64, String> =
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter_map(|l| {
                            let v: serde_json::Value = serde_json::from_str(l).ok()?;
                            Some((v["offset"].as_u64()?, v["value"].as_str()?.to_string()))
                        })
                        .collect();
                acked
                    .iter()
                    .all(|(o, v)| got.get(o) == Some(v))
                    .then_some(())
            },
        );
    }
}
