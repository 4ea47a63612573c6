//! Gossip discovery: which agents exist and whether they are alive, with
//! the `serf` crate (SWIM gossip over UDP and TCP on `--bind-addr`).
//!
//! Each agent runs one [`Membership`]: its gossip name is `--node-name`
//! and it carries three tags, [`TAG_RPC_ADDR`] (the advertised RPC
//! address), [`TAG_ID`] (the Raft node id) and [`TAG_CLUSTER`] (the
//! cluster id, once known). At start it joins the gossip addresses of
//! `--start-join-addrs`, retrying with backoff until one answers or the
//! agent stops. With `--gossip-key-file` every gossip message is
//! encrypted and authenticated (AES-256-GCM) and unencrypted ones are
//! refused.
//!
//! Gossip is only the view of who is there; Raft membership is what
//! counts for replication and quorum. The leader's [`reconcile`] loop
//! turns the first into the second: a new alive member is added to Raft,
//! one failed for longer than `--reap-timeout` or one that left is
//! removed.
//!
//! serf's API is generic over the transport, the address resolver and the
//! delegate; this module fixes them once (tokio, TCP, socket addresses,
//! string node ids) and the rest of the agent sees only [`Membership`]
//! and plain types. serf's events are drained by a task of their own, so
//! serf never blocks on a slow consumer.

pub mod reconcile;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serf::event::{Event, EventProducer, EventSubscriber, MemberEventType};
use serf::net::NetTransportOptions;
use serf::tokio::{TokioNetTransport, TokioSocketAddrResolver, TokioTcp};
use serf::types::{
    EncryptionAlgorithm, MaybeResolvedAddress, MemberStatus, SecretKey, SmolStr, Tags,
};
use serf::{DefaultDelegate, MemberlistOptions, Options, Serf};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Tag with the member's advertised RPC address (`host:port`).
pub const TAG_RPC_ADDR: &str = "rpc_addr";
/// Tag with the member's Raft node id.
pub const TAG_ID: &str = "id";
/// Tag with the id of the cluster the member belongs to (absent until it
/// has bootstrapped one or joined one).
pub const TAG_CLUSTER: &str = "cluster";

/// The first and the longest wait between attempts to join the seeds.
const JOIN_RETRY_FIRST: Duration = Duration::from_millis(200);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often serf tries to reach a failed member again, so that two
/// halves of a cluster find each other after one restarted without seeds
/// (the `--bootstrap` node). serf's default is 30 s.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

type Transport = TokioNetTransport<SmolStr, TokioSocketAddrResolver, TokioTcp>;
type Gossip = Serf<Transport>;
type Events = EventSubscriber<Transport, DefaultDelegate<Transport>>;

/// Why gossip could not start or a gossip key was refused.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The gossip key file could not be read or does not hold a key.
    #[error("gossip key file {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// serf failed to bind or start.
    #[error("gossip on {addr}: {reason}")]
    Start {
        /// The gossip bind address.
        addr: SocketAddr,
        /// serf's error.
        reason: String,
    },
    /// serf refused an operation (tags too large, already shut down).
    #[error("gossip: {0}")]
    Serf(String),
}

/// A 256-bit gossip encryption key (the content of `--gossip-key-file`).
#[derive(Clone)]
pub struct GossipKey(SecretKey);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

/// The most bytes a gossip key file may hold: a key is 45 bytes of base64
/// and a newline, so a larger file is a wrong path (a log, a data file),
/// refused before it is read whole.
pub const GOSSIP_KEY_FILE_LIMIT: u64 = 4096;

/// Reads the text of `path`, at most `limit` bytes: a larger file (or an
/// endless one such as a device) is refused naming its size and the limit.
fn read_bounded(path: &Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        let size = std::fs::metadata(path)
            .ok()
            .map(|m| m.len())
            .filter(|&len| len > limit)
            .map_or_else(|| format!("more than {limit}"), |len| len.to_string());
        return Err(format!(
            "the file holds {size} bytes, over the {limit}-byte limit of a key file \
             (a key is 44 characters of base64): is the path right?"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "the file is not text".to_string())
}

impl GossipKey {
    /// Reads the key at `path`: base64 of 32 bytes (surrounding
    /// whitespace ignored), as `head -c32 /dev/urandom | base64` makes.
    /// Blocking file I/O: called while validating the config, before the
    /// runtime serves anything.
    pub fn from_file(path: &Path) -> Result<GossipKey, DiscoveryError> {
        let err = |reason: String| DiscoveryError::Key {
            path: path.display().to_string(),
            reason,
        };
        let text = read_bounded(path, GOSSIP_KEY_FILE_LIMIT).map_err(err)?;
        match text.trim().parse::<SecretKey>() {
            Ok(key @ SecretKey::Aes256(_)) => Ok(GossipKey(key)),
            Ok(_) => Err(err(
                "the key must be 32 bytes (AES-256); this one is shorter".into(),
            )),
            Err(_) => Err(err("expected the base64 encoding of 32 random bytes \
                 (e.g. `head -c32 /dev/urandom | base64`)"
                .into())),
        }
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> GossipKey {
        GossipKey(SecretKey::Aes256(bytes))
    }
}

/// What a [`Membership`] starts with.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// The gossip name (`--node-name`); unique in the cluster.
    pub node_name: String,
    /// UDP and TCP gossip address (`--bind-addr`); port 0 picks one.
    pub bind_addr: SocketAddr,
    /// Tags this node starts with ([`TAG_RPC_ADDR`], [`TAG_ID`], and
    /// [`TAG_CLUSTER`] when known).
    pub tags: BTreeMap<String, String>,
    /// Gossip addresses (`host:port`) of members to join through
    /// (`--start-join-addrs`); empty: wait to be found.
    pub start_join_addrs: Vec<String>,
    /// Encrypt and authenticate gossip with this key.
    pub key: Option<GossipKey>,
}

/// A member's state as gossip sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipStatus {
    /// Answering probes.
    Alive,
    /// Announced that it is leaving.
    Leaving,
    /// Left gracefully.
    Left,
    /// Stopped answering probes (crashed, killed or cut off).
    Failed,
    /// A state this version does not know.
    Unknown,
}

impl GossipStatus {
    fn from_serf(status: &MemberStatus) -> GossipStatus {
        match status {
            MemberStatus::Alive => GossipStatus::Alive,
            MemberStatus::Leaving => GossipStatus::Leaving,
            MemberStatus::Left => GossipStatus::Left,
            MemberStatus::Failed => GossipStatus::Failed,
            _ => GossipStatus::Unknown,
        }
    }

    /// Lower-case name, as `proglog members` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            GossipStatus::Alive => "alive",
            GossipStatus::Leaving => "leaving",
            GossipStatus::Left => "left",
            GossipStatus::Failed => "failed",
            GossipStatus::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for GossipStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member of the gossip cluster (this node included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipMember {
    /// Its node name.
    pub name: String,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// Alive, failed, left...
    pub status: GossipStatus,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Since when this node has seen it failed (`None` unless
    /// [`GossipStatus::Failed`]).
    pub failed_since: Option<Instant>,
}

impl GossipMember {
    /// Its Raft node id, from the [`TAG_ID`] tag.
    pub fn raft_id(&self) -> Option<u64> {
        self.tags.get(TAG_ID)?.parse().ok()
    }

    /// Its cluster id, from the [`TAG_CLUSTER`] tag.
    pub fn cluster_id(&self) -> Option<u64> {
        self.tags.get(TAG_CLUSTER)?.parse().ok()
    }
}

/// This node's gossip membership. Cheap to clone.
#[derive(Clone)]
pub struct Membership {
    serf: Gossip,
    addr: SocketAddr,
    name: String,
    tags: Arc<tokio::sync::Mutex<BTreeMap<String, String>>>,
    /// When each member was first seen failed (cleared once it is not).
    failed_since: Arc<Mutex<HashMap<String, Instant>>>,
    /// Members an operator removed from Raft while alive: not added back
    /// until gossip sees them go (fail or leave) and come back.
    held_out: Arc<Mutex<HashSet<String>>>,
    /// Bumped on every member event.
    changes: watch::Receiver<u64>,
    stop: CancellationToken,
}

impl Membership {
    /// Starts gossip: binds `config.bind_addr` (UDP and TCP), starts the
    /// event drain, and the join of `config.start_join_addrs` in the
    /// background (retried until one answers or [`Membership::shutdown`]).
    pub async fn start(config: MembershipConfig) -> Result<Membership, DiscoveryError> {
        let mut transport = NetTransportOptions::<SmolStr, TokioSocketAddrResolver, TokioTcp>::new(
            SmolStr::new(&config.node_name),
        );
        transport.add_bind_address(config.bind_addr);
        let mut memberlist = gossip_timing();
        if let Some(GossipKey(key)) = config.key.clone() {
            memberlist = memberlist
                .with_primary_key(key)
                .with_encryption_algo(EncryptionAlgorithm::NoPadding)
                .with_gossip_verify_incoming(true)
                .with_gossip_verify_outgoing(true);
        }
        let opts = Options::new()
            .with_memberlist_options(memberlist)
            .with_reconnect_interval(RECONNECT_INTERVAL)
            .with_tags(config.tags.clone().into_iter());
        let (producer, events) = EventProducer::unbounded();
        let serf = Gossip::with_event_producer(transport, opts, producer)
            .await
            .map_err(|e| DiscoveryError::Start {
                addr: config.bind_addr,
                reason: e.to_string(),
            })?;
        let addr = *serf.advertise_node().address();
        let (changed, changes) = watch::channel(0);
        let membership = Membership {
            serf,
            addr,
            name: config.node_name.clone(),
            tags: Arc::new(tokio::sync::Mutex::new(config.tags)),
            failed_since: Arc::default(),
            held_out: Arc::default(),
            changes,
            stop: CancellationToken::new(),
        };
        tokio::spawn(drain_events(
            events,
            Arc::clone(&membership.failed_since),
            Arc::clone(&membership.held_out),
            changed,
            membership.stop.clone(),
        ));
        let seeds: Vec<String> = config.start_join_addrs;
        if !seeds.is_empty() {
            tokio::spawn(join_loop(
                membership.serf.clone(),
                addr,
                seeds,
                membership.stop.clone(),
            ));
        }
        info!(%addr, node = %membership.name, encrypted = config.key.is_some(), "gossip started");
        Ok(membership)
    }

    /// The gossip address other members reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node's gossip name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every member gossip knows, this node included, sorted by name.
    pub async fn members(&self) -> Vec<GossipMember> {
        let members = self.serf.members().await;
        let now = Instant::now();
        let mut failed = lock(&self.failed_since);
        let mut out: Vec<GossipMember> = members
            .iter()
            .map(|m| {
                let name = m.node().id().to_string();
                let status = GossipStatus::from_serf(m.status());
                let failed_since = match status {
                    GossipStatus::Failed => Some(*failed.entry(name.clone()).or_insert(now)),
                    _ => {
                        failed.remove(&name);
                        None
                    }
                };
                if status != GossipStatus::Alive {
                    lock(&self.held_out).remove(&name);
                }
                GossipMember {
                    name,
                    addr: *m.node().address(),
                    status,
                    tags: m
                        .tags()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    failed_since,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Joins the gossip cluster through `seeds` (`host:port` gossip
    /// addresses) once, without retrying; returns how many answered.
    /// This node's own address is skipped.
    pub async fn join(&self, seeds: &[String]) -> Result<usize, DiscoveryError> {
        join_once(&self.serf, self.addr, seeds).await
    }

    /// Keeps member `name` out of Raft: the reconcile loop does not add it
    /// back while it stays alive (an operator removed it). Cleared once
    /// gossip sees it fail or leave, so a restart brings it back.
    pub fn hold_out(&self, name: &str) {
        lock(&self.held_out).insert(name.to_string());
    }

    /// Whether member `name` is held out of Raft (see [`Membership::hold_out`]).
    pub fn is_held_out(&self, name: &str) -> bool {
        lock(&self.held_out).contains(name)
    }

    /// Sets tag `key` to `value` on this node and gossips the change.
    pub async fn set_tag(&self, key: &str, value: &str) -> Result<(), DiscoveryError> {
        let mut tags = self.tags.lock().await;
        if tags.get(key).map(String::as_str) == Some(value) {
            return Ok(());
        }
        tags.insert(key.to_string(), value.to_string());
        let all: Tags = tags.clone().into_iter().collect();
        self.serf
            .set_tags(all)
            .await
            .map_err(|e| DiscoveryError::Serf(e.to_string()))
    }

    /// A receiver that changes on every member event (join, leave,
    /// failure, tag update, reap), to wake loops that act on membership.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Leaves the gossip cluster gracefully: the others see this node
    /// `left`, not `failed` (the leader then removes it from Raft).
    pub async fn leave(&self) -> Result<(), DiscoveryError> {
        self.serf
            .leave()
            .await
            .map_err(|e| DiscoveryError::Serf(e.to_string()))
    }

    /// Stops gossip (without a leave: the others will see this node
    /// fail) and the background tasks.
    pub async fn shutdown(&self) -> Result<(), DiscoveryError> {
        self.stop.cancel();
        self.serf
            .shutdown()
            .await
            .map_err(|e| DiscoveryError::Serf(e.to_string()))
    }
}

/// Locks `m`, also after a panic elsewhere (the data stays consistent:
/// every update is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The failure detector: memberlist's LAN profile with faster probes, so
/// a killed node is marked failed in about a second (measured 1.0 s on
/// loopback; the plain LAN profile takes 6.8 s). Suspicion lasts
/// `suspicion_mult * log(n+1) * probe_interval`, so a node is not marked
/// failed on one lost packet.
fn gossip_timing() -> MemberlistOptions {
    MemberlistOptions::lan()
        .with_probe_interval(Duration::from_millis(200))
        .with_probe_timeout(Duration::from_millis(100))
        .with_suspicion_mult(2)
        .with_gossip_interval(Duration::from_millis(50))
}

/// Reads serf's events until stopped: notes failures, and wakes whoever
/// watches `changed`. Never blocks serf (the channel is unbounded and
/// this loop does nothing slow).
async fn drain_events(
    events: Events,
    failed_since: Arc<Mutex<HashMap<String, Instant>>>,
    held_out: Arc<Mutex<HashSet<String>>>,
    changed: watch::Sender<u64>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => event,
        };
        let Ok(event) = event else { return };
        let Event::Member(event) = event else {
            continue;
        };
        let ty = event.ty();
        {
            let mut failed = lock(&failed_since);
            let mut held = lock(&held_out);
            for member in event.members() {
                let name = member.node().id().to_string();
                debug!(member = %name, event = ty.as_str(), "gossip member event");
                match ty {
                    MemberEventType::Failed => {
                        failed.entry(name.clone()).or_insert_with(Instant::now);
                        held.remove(&name);
                        warn!(member = %name, "gossip: member failed");
                    }
                    MemberEventType::Join => {
                        failed.remove(&name);
                        info!(member = %name, addr = %member.node().address(), "gossip: member joined");
                    }
                    MemberEventType::Leave => {
                        failed.remove(&name);
                        held.remove(&name);
                        info!(member = %name, "gossip: member left");
                    }
                    _ => {
                        failed.remove(&name);
                    }
                }
            }
        }
        changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Joins through `seeds` once: resolves them (skipping `own`) and asks
/// them all; how many answered, or why none did.
async fn join_once(
    serf: &Gossip,
    own: SocketAddr,
    seeds: &[String],
) -> Result<usize, DiscoveryError> {
    let mut addrs = Vec::new();
    let mut errors = Vec::new();
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(resolved) => addrs.extend(resolved.filter(|a| *a != own)),
            Err(e) => errors.push(format!("{seed}: {e}")),
        }
    }
    if addrs.is_empty() {
        errors.push("no join address other than this node's own".into());
        return Err(DiscoveryError::Serf(errors.join("; ")));
    }
    // One address at a time: serf's `join_many` future is not `Send`.
    let mut answered = 0;
    for addr in addrs {
        match serf.join(MaybeResolvedAddress::resolved(addr), false).await {
            Ok(_) => answered += 1,
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    if answered > 0 {
        Ok(answered)
    } else {
        Err(DiscoveryError::Serf(errors.join("; ")))
    }
}

/// Joins through `seeds` (gossip `host:port` addresses), all at once,
/// retrying with backoff until one answers or `stop` fires. This node's
/// own address is skipped (a node may list every member, itself too).
async fn join_loop(serf: Gossip, own: SocketAddr, seeds: Vec<String>, stop: CancellationToken) {
    let mut wait = JOIN_RETRY_FIRST;
    loop {
        let joined = tokio::select! {
            _ = stop.cancelled() => return,
            joined = join_once(&serf, own, &seeds) => joined,
        };
        match joined {
            Ok(n) => {
                info!(seeds = ?seeds, answered = n, "joined the gossip cluster");
                return;
            }
            Err(e) => {
                warn!(seeds = ?seeds, error = %e, retry_in = ?wait, "gossip join failed; retrying")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(JOIN_RETRY_MAX);
    }
}
