//! The fault harness of `tests/tests/faults.rs`: a seeded random source,
//! a continuous producer through the client crate that records every
//! acknowledged `(offset, value)`, the end-of-run invariant check over
//! every node's log, network namespaces whose links can be cut (for
//! partitions), a small tmpfs (for a full disk) and a torn store tail.
//!
//! Every wait here is bounded: polls run under a deadline and panic with
//! what they waited for.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use proglog_client::{ClusterClient, ClusterConfig, Target};

use crate::{eventually, ProcessCluster};

/// A number from the environment variable `name`, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A small seeded generator (xorshift64*), so a failing run can be
/// replayed with `PROGLOG_FAULT_SEED`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator for test `name`: seeded from `PROGLOG_FAULT_SEED`, or
    /// from the clock; the seed is printed either way.
    pub fn for_test(name: &str) -> Rng {
        let seed = env_or(
            "PROGLOG_FAULT_SEED",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        );
        eprintln!("[{name}] seed {seed} (replay with PROGLOG_FAULT_SEED={seed})");
        Rng(seed | 1)
    }

    /// The next raw value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability one half.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

/// What a [`Producer`] saw.
#[derive(Debug, Default, Clone)]
pub struct Produced {
    /// Every acknowledged `(offset, value)`, in ack order.
    pub acked: Vec<(u64, String)>,
    /// Values whose produce failed: each may or may not be in the log.
    pub failed: Vec<String>,
}

impl Produced {
    /// Every value ever sent, acknowledged or not.
    pub fn attempted(&self) -> HashSet<String> {
        self.acked
            .iter()
            .map(|a| a.1.clone())
            .chain(self.failed.iter().cloned())
            .collect()
    }
}

/// Producers writing continuously through one [`ClusterClient`] (one
/// idempotent producer id) from a thread of their own, each task sending
/// one record at a time. Values are `"{prefix}-{task}-{n}"`, so every
/// value is sent once.
pub struct Producer {
    seen: Arc<Mutex<Produced>>,
    acks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Producer {
    /// Starts `tasks` producing tasks (at most 8, well under the servers'
    /// window of 32 remembered sequences per producer) as `root`, with
    /// every node of `cluster` as a seed.
    pub fn start(cluster: &ProcessCluster, prefix: &str, tasks: usize) -> Producer {
        assert!((1..=8).contains(&tasks));
        let seeds: Vec<String> = (0..cluster.ports.len()).map(|i| cluster.addr(i)).collect();
        let tls = cluster.root_tls();
        let seen = Arc::new(Mutex::new(Produced::default()));
        let acks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, a, st, prefix) = (
            Arc::clone(&seen),
            Arc::clone(&acks),
            Arc::clone(&stop),
            prefix.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let config = ClusterConfig::new(seeds, Some(tls));
                let started = Instant::now();
                let client = loop {
                    match ClusterClient::connect(config.clone()).await {
                        Ok(c) => break c,
                        Err(e) => {
                            assert!(
                                started.elapsed() < Duration::from_secs(60),
                                "the producer could not connect: {e}"
                            );
                            // Retry backoff, not synchronisation.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                };
                let mut handles = Vec::new();
                for task in 0..tasks {
                    let (client, seen, acks, stop, prefix) = (
                        client.clone(),
                        Arc::clone(&s),
                        Arc::clone(&a),
                        Arc::clone(&st),
                        prefix.clone(),
                    );
                    handles.push(tokio::spawn(async move {
                        let mut n = 0u64;
                        while !stop.load(Ordering::SeqCst) {
                            let value = format!("{prefix}-{task}-{n}");
                            n += 1;
                            match client.produce(value.clone()).await {
                                Ok(offset) => {
                                    seen.lock().unwrap().acked.push((offset, value));
                                    acks.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(_) => seen.lock().unwrap().failed.push(value),
                            }
                        }
                    }));
                }
                for h in handles {
                    h.await.unwrap();
                }
            });
        });
        Producer {
            seen,
            acks,
            stop,
            thread: Some(thread),
        }
    }

    /// Records acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acks.load(Ordering::SeqCst)
    }

    /// The largest offset acknowledged so far.
    pub fn last_offset(&self) -> Option<u64> {
        self.seen.lock().unwrap().acked.iter().map(|a| a.0).max()
    }

    /// Waits until `more` records beyond those acked now are acknowledged
    /// (the cluster makes progress), panicking after `timeout`.
    pub fn wait_progress(&self, more: u64, timeout: Duration, what: &str) {
        let target = self.acked() + more;
        eventually(&format!("{more} more acks ({what})"), timeout, || {
            (self.acked() >= target).then_some(())
        });
    }

    /// Stops the tasks (each finishes its call in flight, within the
    /// client's deadline) and returns what they saw.
    pub fn stop(mut self) -> Produced {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("stopped once");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the producer did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        thread.join().expect("the producer thread panicked");
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Runs `call` to its end on a runtime of its own, with the target of node
/// `i` (its RPC address, mutual TLS as root): one client call from a
/// synchronous test.
pub fn on_node<F, T>(cluster: &ProcessCluster, i: usize, call: impl FnOnce(Target) -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    let target = Target::Tcp {
        addr: cluster.addr(i),
        tls: Some(cluster.root_tls()),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(call(target))
}

/// Node `i`'s whole log as `(offset, value)`, streamed from offset 0 from
/// that node alone (ConsumeStream; the end is where nothing arrives for a
/// second and a Consume there answers OUT_OF_RANGE); `None` if the node did
/// not answer or a value is not UTF-8. Meant for a quiet cluster (the
/// producer stopped).
pub fn read_log(cluster: &ProcessCluster, i: usize) -> Option<Vec<(u64, String)>> {
    use proglog_client::Client;
    use tokio_stream::StreamExt;
    on_node(cluster, i, |target| async move {
        let connect = tokio::time::timeout(Duration::from_secs(5), Client::connect(target));
        let mut client = connect.await.ok()?.ok()?;
        let mut stream = client.consume_stream(0).await.ok()?;
        let mut log = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                Ok(Some(Ok((offset, value)))) => {
                    log.push((offset, String::from_utf8(value.to_vec()).ok()?))
                }
                Ok(_) => return None,
                Err(_) => break,
            }
        }
        match client.consume(log.len() as u64).await {
            Err(proglog_client::Error::Status(s)) if s.code() == tonic::Code::OutOfRange => {
                Some(log)
            }
            _ => None,
        }
    })
}

/// The figures of one invariant check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Records acknowledged by the cluster.
    pub acked: usize,
    /// Records in every node's log (acked, plus unacked ones that made it).
    pub logged: usize,
    /// Acknowledged records missing or at another offset (0 on success).
    pub lost: usize,
    /// Values logged twice (0 on success).
    pub duplicates: usize,
}

/// Checks the harness's invariants over `nodes` of `cluster` once their
/// logs agree: acked offsets are unique (no two records acknowledged at one
/// offset), every node holds every acked record at its acked offset,
/// offsets are dense from 0, no value appears twice, nothing was invented
/// (every value was sent), and the nodes' logs are identical. Polls (up to
/// `timeout`) until the nodes answer and hold the same log with every acked
/// record; panics naming the first violation.
pub fn check_logs(
    cluster: &ProcessCluster,
    nodes: &[usize],
    produced: &Produced,
    timeout: Duration,
) -> Checked {
    let mut at: HashMap<u64, &str> = HashMap::new();
    for (offset, value) in &produced.acked {
        if let Some(other) = at.insert(*offset, value) {
            panic!("two records acknowledged at offset {offset}: {other:?} and {value:?}");
        }
    }
    let holds_acked = |log: &[(u64, String)]| {
        produced
            .acked
            .iter()
            .all(|(o, v)| log.get(*o as usize).is_some_and(|r| r.1 == *v))
    };
    let deadline = Instant::now() + timeout;
    let logs: Vec<Vec<(u64, String)>> = loop {
        let logs: Option<Vec<_>> = nodes.iter().map(|&i| read_log(cluster, i)).collect();
        if let Some(logs) = logs {
            if logs.iter().all(|l| l == &logs[0] && holds_acked(l)) {
                break logs;
            }
            if Instant::now() >= deadline {
                for (i, log) in nodes.iter().zip(&logs) {
                    let lost = produced
                        .acked
                        .iter()
                        .filter(|(o, v)| log.get(*o as usize).is_none_or(|r| r.1 != *v))
                        .take(5)
                        .collect::<Vec<_>>();
                    eprintln!(
                        "node{i}: {} records; acked records missing or moved (first 5): {lost:?}",
                        log.len()
                    );
                    if !lost.is_empty() {
                        let stderr = cluster.procs[*i].as_ref().map(|p| p.stderr());
                        let stderr = stderr.unwrap_or_default();
                        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        eprintln!("node{i}'s log ends:\n{}", tail.join("\n"));
                    }
                }
                panic!("the nodes' logs did not converge on every acked record in {timeout:?}");
            }
        } else {
            assert!(
                Instant::now() < deadline,
                "a node did not answer consume within {timeout:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = &logs[0];
    for (i, (offset, _)) in log.iter().enumerate() {
        assert_eq!(*offset, i as u64, "offsets are dense from 0");
    }
    let mut seen = HashSet::new();
    let duplicates: Vec<&String> = log
        .iter()
        .map(|r| &r.1)
        .filter(|v| !seen.insert(*v))
        .collect();
    assert!(duplicates.is_empty(), "values logged twice: {duplicates:?}");
    let attempted = produced.attempted();
    let invented: Vec<&String> = log
        .iter()
        .map(|r| &r.1)
        .filter(|v| !attempted.contains(*v))
        .collect();
    assert!(invented.is_empty(), "values nobody sent: {invented:?}");
    Checked {
        acked: produced.acked.len(),
        logged: log.len(),
        lost: 0,
        duplicates: 0,
    }
}

/// Runs a command (an `ip` call), panicking with its stderr on failure.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command, ignoring failure (cleanup of what may not exist).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// The prefix of every namespace and link this harness makes.
const NET_PREFIX: &str = "pgf";

/// Network namespaces `pgf{pid}x{run}n{i}`, one per node, each with a veth
/// pair whose outer end sits on a bridge in the root namespace. The bridge
/// has an address of its own, so the test process (in the root namespace)
/// reaches every node directly, and nodes reach each other through it.
/// Links are cut two ways: [`Netns::cut`] adds blackhole routes between two
/// nodes (each still reaches the test process), [`Netns::unplug`] takes a
/// node's bridge port down (it reaches nothing, packets are dropped
/// silently). Everything is removed on drop, and leftovers of test
/// processes that died are removed before a new set is made.
pub struct Netns {
    /// Namespace name per node.
    pub names: Vec<String>,
    /// Address per node.
    pub hosts: Vec<String>,
    bridge: String,
    ports: Vec<String>,
    cut: HashSet<(usize, usize)>,
}

impl Netns {
    /// Makes namespaces for `n` nodes, or explains why it cannot (not
    /// root, no `ip`).
    pub fn create(n: usize) -> Result<Netns, String> {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let available = Command::new("ip").arg("-V").output();
        if !available.is_ok_and(|o| o.status.success()) {
            return Err("the `ip` command (iproute2) is not installed".into());
        }
        Netns::sweep();
        let pid = std::process::id();
        let seq = RUN.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{NET_PREFIX}{pid}x{seq}");
        // A /24 per run: 10.213.0.0/16 is ours; the third octet from the
        // pid and the run, so concurrent test processes do not meet.
        let net = format!(
            "10.213.{}",
            (pid.wrapping_mul(7).wrapping_add(seq)) % 250 + 1
        );
        let bridge = format!("{tag}b");
        if bridge.len() > 15 {
            return Err(format!("interface name {bridge} too long"));
        }
        let probe = Command::new("ip")
            .args(["netns", "add", &format!("{tag}n0")])
            .output();
        match probe {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "`ip netns add` failed (root is needed): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => return Err(format!("running ip: {e}")),
        }
        let mut ns = Netns {
            names: (0..n).map(|i| format!("{tag}n{i}")).collect(),
            hosts: (0..n).map(|i| format!("{net}.{}", 10 + i)).collect(),
            bridge: bridge.clone(),
            ports: (0..n).map(|i| format!("{tag}v{i}")).collect(),
            cut: HashSet::new(),
        };
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        run(
            "ip",
            &["addr", "add", &format!("{net}.1/24"), "dev", &bridge],
        );
        run("ip", &["link", "set", &bridge, "up"]);
        for i in 0..n {
            let name = ns.names[i].clone();
            if i > 0 {
                run("ip", &["netns", "add", &name]);
            }
            let (outer, inner) = (ns.ports[i].clone(), format!("{tag}e{i}"));
            run(
                "ip",
                &[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ],
            );
            run("ip", &["link", "set", &inner, "netns", &name]);
            let addr = format!("{}/24", ns.hosts[i]);
            run("ip", &["-n", &name, "addr", "add", &addr, "dev", &inner]);
            run("ip", &["-n", &name, "link", "set", &inner, "up"]);
            run("ip", &["-n", &name, "link", "set", "lo", "up"]);
            run("ip", &["link", "set", &outer, "master", &bridge]);
            run("ip", &["link", "set", &outer, "up"]);
        }
        ns.cut.clear();
        Ok(ns)
    }

    /// Removes namespaces and bridges of earlier test processes that are
    /// gone (a test killed before its drop ran).
    fn sweep() {
        let alive = |name: &str| {
            let digits: String = name[NET_PREFIX.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.is_empty() || Path::new(&format!("/proc/{digits}")).exists()
        };
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                if name.starts_with(NET_PREFIX) && !alive(name) {
                    run_quiet("ip", &["netns", "del", name]);
                }
            }
        }
        if let Ok(out) = Command::new("ip")
            .args(["-o", "link", "show", "type", "bridge"])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split(':').nth(1).unwrap_or_default().trim();
                if name.starts_with(NET_PREFIX) && !alive(name) {
                    run_quiet("ip", &["link", "del", name]);
                }
            }
        }
    }

    /// The namespaces as [`ProcessCluster::on_hosts`] takes them.
    pub fn netns(&self) -> Vec<Option<String>> {
        self.names.iter().cloned().map(Some).collect()
    }

    /// Cuts the link between nodes `a` and `b` both ways (blackhole routes
    /// in both namespaces); other links stay.
    pub fn cut(&mut self, a: usize, b: usize) {
        let key = (a.min(b), a.max(b));
        if self.cut.insert(key) {
            for (from, to) in [(a, b), (b, a)] {
                let host = format!("{}/32", self.hosts[to]);
                run(
                    "ip",
                    &["-n", &self.names[from], "route", "add", "blackhole", &host],
                );
            }
        }
    }

    /// Restores the link between `a` and `b`.
    pub fn mend(&mut self, a: usize, b: usize) {
        let key = (a.min(b), a.max(b));
        if self.cut.remove(&key) {
            for (from, to) in [(a, b), (b, a)] {
                let host = format!("{}/32", self.hosts[to]);
                run(
                    "ip",
                    &["-n", &self.names[from], "route", "del", "blackhole", &host],
                );
            }
        }
    }

    /// Cuts node `i` from every other node (the test process still
    /// reaches it).
    pub fn isolate(&mut self, i: usize) {
        for j in (0..self.names.len()).filter(|&j| j != i) {
            self.cut(i, j);
        }
    }

    /// Takes node `i`'s bridge port down: it reaches nobody and nobody
    /// reaches it, the test process included; packets vanish silently.
    pub fn unplug(&self, i: usize) {
        run("ip", &["link", "set", &self.ports[i], "down"]);
    }

    /// Brings node `i`'s bridge port back up.
    pub fn plug(&self, i: usize) {
        run("ip", &["link", "set", &self.ports[i], "up"]);
    }

    /// Restores every link and port.
    pub fn heal(&mut self) {
        let cut: Vec<(usize, usize)> = self.cut.iter().copied().collect();
        for (a, b) in cut {
            self.mend(a, b);
        }
        for i in 0..self.names.len() {
            self.plug(i);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            run_quiet("ip", &["netns", "del", name]);
        }
        run_quiet("ip", &["link", "del", &self.bridge]);
    }
}

/// A tmpfs mounted at a directory for the life of the value (a small,
/// fillable disk); unmounted on drop.
pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=`, e.g. "16m") at
    /// `path`, creating it; explains why when it cannot.
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (root is needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file open cannot block it.
        run_quiet("umount", &["-l", &self.path.display().to_string()]);
    }
}

/// Whether this process runs as root (namespaces and mounts need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Waits until every node of `nodes` names the same leader, one of
/// `nodes` and not `not`; returns it.
pub fn agreed_leader(
    cluster: &ProcessCluster,
    nodes: &[usize],
    not: Option<usize>,
    timeout: Duration,
) -> usize {
    eventually(
        &format!("nodes {nodes:?} to agree on a leader among them other than {not:?}"),
        timeout,
        || {
            let mut views = nodes.iter().map(|&i| {
                cluster
                    .servers(i)
                    .into_iter()
                    .find(|s| s.2)
                    .and_then(|s| s.0.strip_prefix("node")?.parse::<usize>().ok())
            });
            let first = views.next()??;
            (nodes.contains(&first) && Some(first) != not && views.all(|v| v == Some(first)))
                .then_some(first)
        },
    )
}

/// Where the last whole entry of store file `path` starts and ends (the
/// file may end in pre-written zeros); `None` if it holds no entry.
pub fn last_entry(path: &Path) -> Option<(u64, u64)> {
    const HEADER: usize = 16;
    const ENTRY_HEADER: usize = 16;
    let bytes = std::fs::read(path).ok()?;
    let mut at = HEADER;
    let mut last = None;
    while at + ENTRY_HEADER <= bytes.len() {
        let head = &bytes[at..at + ENTRY_HEADER];
        if head.iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
        let end = at + ENTRY_HEADER + len;
        if end > bytes.len() {
            break;
        }
        last = Some((at as u64, end as u64));
        at = end;
    }
    last
}

/// Cuts store file `path` in the middle of its last entry (dropping any
/// pre-written zeros after it too), as a crash mid-write would leave it;
/// returns the new length, or `None` if the file holds no entry.
pub fn tear_last_entry(path: &Path) -> Option<u64> {
    let (start, end) = last_entry(path)?;
    let cut = start + (end - start) / 2;
    let file = std::fs::OpenOptions::new().write(true).open(path).ok()?;
    file.set_len(cut).ok()?;
    file.sync_all().ok()?;
    Some(cut)
}

/// The newest store file (highest base; names are `{base:020}.store`) in
/// WAL directory `dir`.
pub fn newest_store(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "store"))
        .max()
}
