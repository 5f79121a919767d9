//! Connection scale: one `chainmesh` node holding many concurrent connections, each from
//! its own peer id, opened by a second process of lightweight swarms on loopback.
//!
//! The limit is a bare swarm (TCP + Noise + Yamux, no behaviour) holding the same number
//! of connections from the same process, measured in the same run: its memory per
//! connection and its handshakes per second. The light peers speak what a peer must for
//! the node to treat it as one: identify, ping, our status handshake (same network, at
//! genesis), the pool protocol (a permit is held for [`pool::HOLD`] and answered empty,
//! as an idle peer does) and gossipsub without subscribing. They do not subscribe because
//! a thousand subscribers in one process would each check every message's signature:
//! the benchmark would measure that process, not the node. With the connections held, a
//! real producer connects, the node syncs its chain, and transactions submitted at the
//! node travel by gossip to the producer and come back in blocks; the node's resident
//! memory is sampled through the load and its slope reported.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chainmesh_behaviours::codec::WireMeter;
use chainmesh_behaviours::status::{ChainStatus, PROTOCOL_VERSION};
use chainmesh_behaviours::{gossip, pool, status};
use chainmesh_chain_sync::Allocation;
use chainmesh_proto::{Hash, Keypair, pb_net};
use futures::{FutureExt, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::{Transport, upgrade};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, Message};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, dummy};
use libp2p::{Multiaddr, PeerId, Swarm, identify, noise, ping, tcp, yamux};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::{Workload, build_chain, home_with, net, number, start, status as api_status, value};

/// Connections being opened at once: the node's default `max_pending`.
const CONCURRENT_DIALS: usize = 32;
/// Dial attempts per light peer (a refused pending slot is retried).
const DIAL_ATTEMPTS: u32 = 20;
/// Funded accounts the load comes from.
const ACCOUNTS: usize = 32;

pub fn connections(quick: bool) -> usize {
    if quick { 300 } else { 1_000 }
}

#[derive(Serialize, Clone, Default)]
pub struct BareCalibration {
    pub connections: usize,
    pub kb_per_connection: f64,
    pub handshakes_per_s: f64,
}

#[derive(Serialize, Clone)]
pub struct ScaleResult {
    pub connections: usize,
    pub node_kb_per_connection: f64,
    pub bare_kb_per_connection: f64,
    pub memory_ratio: f64,
    pub handshakes_per_s: f64,
    pub bare_handshakes_per_s: f64,
    /// Peers the node listed after the load (the light peers and the producer).
    pub peers_after_load: usize,
    pub sync_blocks: u64,
    pub sync_blocks_per_s: f64,
    pub tx_rate: u32,
    pub load_seconds: u64,
    pub txs_accepted: u64,
    pub txs_included: u64,
    pub inclusion_p50_ms: Option<f64>,
    pub inclusion_p99_ms: Option<f64>,
    /// (seconds into the load, node RSS in MB).
    pub rss_mb: Vec<(f64, f64)>,
    /// Least-squares slope of the RSS after the first quarter of the load.
    pub rss_slope_mb_per_10_min: f64,
}

// ------------------------------------------------------------------ child processes

/// `chainmesh-bench bare-host`: a bare swarm listening on loopback; prints
/// `listening <addr>` and runs until its stdin closes.
pub fn bare_host_main() -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut swarm = bare_swarm(None)?;
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let id = *swarm.local_peer_id();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address.with(Protocol::P2p(id));
            }
        };
        say(&format!("listening {addr}"))?;
        let eof = tokio::task::spawn_blocking(wait_for_stdin_eof);
        tokio::select! {
            _ = async { loop { swarm.select_next_some().await; } } => {}
            _ = eof => {}
        }
        anyhow::Ok(())
    })
}

/// `chainmesh-bench swarms --connect ADDR --count N --kind bare|peer [--network ID
/// --genesis HEX]`: N swarms, each with a new identity, each holding one connection to
/// ADDR. Prints `ready <ok> <failed> <seconds>` once every handshake is done (for a
/// peer: the status exchange), then `alive <n>` every 5 s; runs until stdin closes.
pub fn swarms_main(args: &[String]) -> anyhow::Result<()> {
    let addr: Multiaddr = value(args, "--connect")
        .context("--connect ADDR")?
        .parse()
        .context("--connect: not a multiaddr")?;
    let count: usize = number(args, "--count", 1_000)?;
    // One descriptor per connection.
    rlimit::increase_nofile_limit(count as u64 + 256)?;
    let kind = match value(args, "--kind").unwrap_or("peer") {
        "bare" => None,
        "peer" => Some(Arc::new(ours(
            value(args, "--network").context("--network ID")?,
            value(args, "--genesis")
                .context("--genesis HEX")?
                .parse()
                .context("--genesis: not a hash")?,
        ))),
        other => bail!("--kind: bare or peer, not {other:?}"),
    };
    runtime()?.block_on(async move {
        let gate = Arc::new(Semaphore::new(CONCURRENT_DIALS));
        let alive = Arc::new(AtomicUsize::new(0));
        let (done_tx, mut done_rx) = mpsc::channel::<Result<(), String>>(count.max(1));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let (addr, gate, done, alive) =
                (addr.clone(), gate.clone(), done_tx.clone(), alive.clone());
            let from = source(i);
            match &kind {
                None => tasks.spawn(async move {
                    if let Err(e) = bare_peer(from, addr, gate, &done, alive).await {
                        let _ = done.send(Err(format!("{e:#}"))).await;
                    }
                }),
                Some(s) => {
                    let s = s.clone();
                    tasks.spawn(async move {
                        if let Err(e) = light_peer(from, addr, s, gate, &done, alive).await {
                            let _ = done.send(Err(format!("{e:#}"))).await;
                        }
                    })
                }
            };
        }
        drop(done_tx);
        let (mut ok, mut failed, mut first_error) = (0usize, 0usize, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while ok + failed < count {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(Ok(()))) => ok += 1,
                Ok(Some(Err(e))) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if let Some(e) = first_error {
            eprintln!("swarms: {failed} connection(s) failed, the first: {e}");
        }
        say(&format!("ready {ok} {failed} {secs:.3}"))?;
        let mut eof = tokio::task::spawn_blocking(wait_for_stdin_eof);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = &mut eof => break,
                _ = tick.tick() => say(&format!("alive {}", alive.load(Ordering::Relaxed)))?,
            }
        }
        tasks.abort_all();
        anyhow::Ok(())
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn wait_for_stdin_eof() {
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        line.clear();
    }
}

/// The loopback address light peer `i` connects from: one address each, as peers on
/// the internet have, so that gossipsub's IP colocation penalty (which graylists many
/// peers behind one address) does not fall on them or on the real peer among them.
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        1 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250) as u8 + 1,
    )
}

/// TCP dials from a chosen local address (libp2p's TCP transport binds a dial to the
/// unspecified address at most); it listens on nothing.
///
/// The local port is chosen too, below the kernel's ephemeral range: the nodes listen on
/// ephemeral ports and dial from them (libp2p reuses its listening port for dials, bound
/// to the unspecified address), so a light peer holding the same port on any loopback
/// address made a node's dials fail (`EADDRINUSE`, seen in one run in about thirty). Each
/// dial takes the next port, so a retry never meets its predecessor in TIME_WAIT.
struct BoundTcp {
    from: Ipv4Addr,
    next_port: u16,
}

/// Light peers' local ports start here (below 32768, where Linux's ephemeral range
/// starts by default).
const FIRST_LOCAL_PORT: u16 = 20_000;

impl Transport for BoundTcp {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = std::io::Error;
    type ListenerUpgrade = futures::future::Pending<Result<Self::Output, Self::Error>>;
    type Dial = futures::future::BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        _: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _: ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let mut parts = addr.iter();
        let (Some(Protocol::Ip4(ip)), Some(Protocol::Tcp(port))) = (parts.next(), parts.next())
        else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let (from, local_port) = (self.from, self.next_port);
        self.next_port = self.next_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        Ok(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((from, local_port).into())?;
            let stream = socket.connect((ip, port).into()).await?;
            stream.set_nodelay(true)?;
            Ok(libp2p::tcp::tokio::TcpStream(stream))
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Poll::Pending
    }
}

/// Noise and Yamux over [`BoundTcp`], as the node's own TCP stack.
fn bound_transport(
    key: &libp2p::identity::Keypair,
    from: Ipv4Addr,
) -> Result<
    libp2p::core::transport::Boxed<(PeerId, StreamMuxerBox)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    Ok(BoundTcp {
        from,
        next_port: FIRST_LOCAL_PORT,
    }
    .upgrade(upgrade::Version::V1)
    .authenticate(noise::Config::new(key)?)
    .multiplex(yamux::Config::default())
    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
    .boxed())
}

/// Held connections must not close for being idle during the run.
const HOLD_OPEN: Duration = Duration::from_secs(3_600);

/// A bare swarm: the listening host of the calibration (`from` None) or one of the
/// peers dialling it.
fn bare_swarm(from: Option<Ipv4Addr>) -> anyhow::Result<Swarm<dummy::Behaviour>> {
    let b = libp2p::SwarmBuilder::with_new_identity().with_tokio();
    Ok(match from {
        None => b
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| dummy::Behaviour)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(HOLD_OPEN))
            .build(),
        Some(from) => b
            .with_other_transport(|key| bound_transport(key, from))?
            .with_behaviour(|_| dummy::Behaviour)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(HOLD_OPEN))
            .build(),
    })
}

async fn bare_peer(
    from: Ipv4Addr,
    addr: Multiaddr,
    gate: Arc<Semaphore>,
    done: &mpsc::Sender<Result<(), String>>,
    alive: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let permit = gate.acquire_owned().await?;
    let mut swarm = bare_swarm(Some(from))?;
    let mut attempts = 1;
    swarm.dial(addr.clone())?;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { .. } => break,
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                retry(&mut swarm, &addr, &mut attempts, &error.to_string()).await?
            }
            _ => {}
        }
    }
    drop(permit);
    alive.fetch_add(1, Ordering::Relaxed);
    let _ = done.send(Ok(())).await;
    loop {
        if let SwarmEvent::ConnectionClosed { .. } = swarm.select_next_some().await {
            alive.fetch_sub(1, Ordering::Relaxed);
            return Ok(());
        }
    }
}

async fn retry<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addr: &Multiaddr,
    attempts: &mut u32,
    error: &str,
) -> anyhow::Result<()> {
    if *attempts >= DIAL_ATTEMPTS {
        bail!("{attempts} dials failed, the last: {error}");
    }
    *attempts += 1;
    tokio::time::sleep(Duration::from_millis(100)).await;
    swarm.dial(addr.clone())?;
    Ok(())
}

#[derive(NetworkBehaviour)]
struct Light {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    status: status::Behaviour,
    pool: pool::Behaviour,
    gossip: gossip::Behaviour,
}

/// A light peer's status: our network, at genesis.
fn ours(network: &str, genesis: Hash) -> pb_net::Status {
    ChainStatus {
        version: PROTOCOL_VERSION,
        genesis,
        network_id: network.to_string(),
        best_height: 0,
        best_hash: genesis,
        cumulative_weight: 0,
        agent: "chainmesh-bench/light".into(),
        limits: Vec::new(),
    }
    .to_pb()
}

fn light_swarm(network: &str, from: Ipv4Addr) -> anyhow::Result<Swarm<Light>> {
    let timeout = Duration::from_secs(10);
    let network = network.to_string();
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| bound_transport(key, from))?
        .with_behaviour(|key| {
            Ok(Light {
                identify: identify::Behaviour::new(
                    identify::Config::new(format!("/chainmesh/{network}/1"), key.public())
                        .with_agent_version("chainmesh-bench/light".into()),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(15)),
                ),
                status: status::new(&network, timeout, WireMeter::default()),
                pool: pool::new(&network, timeout, WireMeter::default()),
                gossip: gossip::new_for(key, &network, false)?,
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(HOLD_OPEN))
        .build())
}

async fn light_peer(
    from: Ipv4Addr,
    addr: Multiaddr,
    ours: Arc<pb_net::Status>,
    gate: Arc<Semaphore>,
    done: &mpsc::Sender<Result<(), String>>,
    alive: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let network = ours.network_id.clone();
    let mut permit = Some(gate.acquire_owned().await?);
    let mut swarm = light_swarm(&network, from)?;
    let mut attempts = 1;
    swarm.dial(addr.clone())?;
    // Permits the node granted us, answered empty when their hold ends.
    let mut held: Vec<(
        request_response::ResponseChannel<pb_net::PoolEntries>,
        u64,
        Instant,
    )> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let ev = tokio::select! {
            ev = swarm.select_next_some() => ev,
            _ = tick.tick() => {
                let now = Instant::now();
                let (due, keep): (Vec<_>, Vec<_>) = held.drain(..).partition(|h| h.2 <= now);
                held = keep;
                for (channel, cursor, _) in due {
                    let _ = swarm
                        .behaviour_mut()
                        .pool
                        .send_response(channel, pool::entries_to_pb(&[], cursor));
                }
                continue;
            }
        };
        match ev {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                swarm
                    .behaviour_mut()
                    .status
                    .send_request(&peer_id, Ok((*ours).clone()));
            }
            SwarmEvent::OutgoingConnectionError { error, .. } if permit.is_some() => {
                retry(&mut swarm, &addr, &mut attempts, &error.to_string()).await?
            }
            SwarmEvent::ConnectionClosed { cause, .. } => {
                if permit.is_some() {
                    bail!("closed before the handshake: {cause:?}");
                }
                alive.fetch_sub(1, Ordering::Relaxed);
                return Ok(());
            }
            SwarmEvent::Behaviour(LightEvent::Status(request_response::Event::Message {
                message,
                ..
            })) => match message {
                Message::Request { channel, .. } => {
                    let _ = swarm
                        .behaviour_mut()
                        .status
                        .send_response(channel, (*ours).clone());
                }
                Message::Response { .. } => {
                    if permit.take().is_some() {
                        alive.fetch_add(1, Ordering::Relaxed);
                        let _ = done.send(Ok(())).await;
                    }
                }
            },
            SwarmEvent::Behaviour(LightEvent::Status(
                request_response::Event::OutboundFailure { error, .. },
            )) if permit.is_some() => bail!("status exchange failed: {error}"),
            SwarmEvent::Behaviour(LightEvent::Pool(request_response::Event::Message {
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            })) => {
                let cursor = request.map_or(0, |p| p.cursor);
                held.push((channel, cursor, Instant::now() + pool::HOLD));
            }
            _ => {}
        }
    }
}

// ------------------------------------------------------------------ the benchmark

/// A child process of this binary, talking by lines on stdout; stopped by closing its
/// stdin (killed if it does not stop).
struct Child2 {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Child2 {
    fn start(args: &[String]) -> anyhow::Result<Child2> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Child2 {
            stdin: child.stdin.take(),
            child,
            lines: rx,
        })
    }

    /// The next line starting with `prefix`, without it.
    fn line(&self, prefix: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(_) => bail!("no {prefix:?} line within {} s", within.as_secs()),
            }
        }
    }

    /// The last `alive` count reported so far.
    fn last_alive(&self) -> Option<usize> {
        self.lines
            .try_iter()
            .filter_map(|l| l.strip_prefix("alive ").and_then(|n| n.trim().parse().ok()))
            .last()
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in kB.
fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// `ok failed seconds` from a `ready` line; every connection must have been made.
fn parse_ready(rest: &str, count: usize) -> anyhow::Result<f64> {
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (ok, secs): (usize, f64) = match f.as_slice() {
        [ok, _, secs] => (ok.parse()?, secs.parse()?),
        _ => bail!("bad ready line: {rest:?}"),
    };
    if ok < count {
        bail!("only {ok} of {count} connections were made");
    }
    Ok(ok as f64 / secs)
}

/// The bare-swarm limit: memory per connection and handshakes per second of a bare swarm
/// holding `count` connections from the swarms process.
pub fn calibrate_bare(count: usize) -> anyhow::Result<BareCalibration> {
    let host = Child2::start(&["bare-host".to_string()])?;
    let addr = host.line("listening ", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kb(host.child.id())?;
    let swarms = Child2::start(&[
        "swarms".into(),
        "--connect".into(),
        addr,
        "--count".into(),
        count.to_string(),
        "--kind".into(),
        "bare".into(),
    ])?;
    let handshakes_per_s = parse_ready(&swarms.line("ready ", Duration::from_secs(330))?, count)?;
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kb(host.child.id())?;
    Ok(BareCalibration {
        connections: count,
        kb_per_connection: after.saturating_sub(before) as f64 / count as f64,
        handshakes_per_s,
    })
}

pub struct ScaleSettings {
    pub connections: usize,
    pub sync_blocks: u64,
    pub tx_rate: u32,
    pub load_seconds: u64,
}

impl ScaleSettings {
    pub fn new(quick: bool) -> ScaleSettings {
        if quick {
            ScaleSettings {
                connections: connections(true),
                // The sync benchmark's small-block workload, so the two compare.
                sync_blocks: 3_000,
                tx_rate: 50,
                load_seconds: 10,
            }
        } else {
            ScaleSettings {
                connections: connections(false),
                sync_blocks: 20_000,
                tx_rate: 100,
                load_seconds: 600,
            }
        }
    }
}

pub fn bench_scale(s: &ScaleSettings, bare: &BareCalibration) -> anyhow::Result<ScaleResult> {
    let root = tempfile::tempdir()?;
    let mut n = net(s.sync_blocks);
    let keys = root.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    for i in 0..ACCOUNTS {
        let k = Keypair::generate();
        k.save_new(&keys.join(format!("account-{i:02}.key")))?;
        n.genesis.allocations.push(Allocation {
            address: k.public(),
            balance: 1 << 40,
        });
    }
    let conns = s.connections as u32;
    let node = home_with(root.path(), "node", &n, |c| {
        c.p2p.max_connections = conns + 64;
        c.p2p.max_inbound = conns + 32;
        c.p2p.max_peers = conns + 32;
        // It dials no one: the light peers and the producer come to it.
        c.p2p.target_peers = 0;
        // A cache the store outgrows during the sync, so the memory slope under load
        // shows growth, not sled's cache filling towards its bound (256 MB by default,
        // far more than this chain: a heap profile of the node put most of the
        // slope there).
        c.chain.cache_mb = 16;
    })?;
    let producer = home_with(root.path(), "producer", &n, |c| {
        c.producer_key = Some("producer.key".into());
    })?;
    n.authority.save_new(&producer.join("producer.key"))?;
    let w = Workload {
        name: "scale",
        blocks: s.sync_blocks,
        txs_per_block: 2,
        peers: &[1],
    };
    build_chain(&n, &producer.join("data/db"), &w)?;

    let (node_proc, api) = start(&node, &[])?;
    let pid = node_proc.0.id();
    let addr = crate::p2p_addr(&node)?;
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kb(pid)?;
    eprintln!(
        "  node at {:.1} MB; opening {} connections...",
        before as f64 / 1024.0,
        s.connections
    );
    let swarms = Child2::start(&[
        "swarms".into(),
        "--connect".into(),
        addr.clone(),
        "--count".into(),
        s.connections.to_string(),
        "--kind".into(),
        "peer".into(),
        "--network".into(),
        n.genesis.network_id.clone(),
        "--genesis".into(),
        n.genesis.hash().to_hex(),
    ])?;
    let handshakes_per_s = parse_ready(
        &swarms.line("ready ", Duration::from_secs(330))?,
        s.connections,
    )?;
    // Identify, gossipsub's subscriptions and the first permits settle.
    std::thread::sleep(Duration::from_secs(6));
    let after = rss_kb(pid)?;
    let node_kb = after.saturating_sub(before) as f64 / s.connections as f64;
    eprintln!(
        "  {} connections at {handshakes_per_s:.0} handshakes/s; node at {:.1} MB, {node_kb:.1} kB per connection (bare swarm {:.1})",
        s.connections,
        after as f64 / 1024.0,
        bare.kb_per_connection
    );

    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let (producer_proc, _) = start(&producer, &["--peer".into(), addr])?;
    // From the moment the node counts the producer among its peers: the producer's own
    // start (opening a long chain) is not the node's sync.
    let joined = Instant::now();
    while api_status(&http, &api)?["sync"]["peers"]
        .as_u64()
        .unwrap_or(0)
        <= conns as u64
    {
        if joined.elapsed() > Duration::from_secs(60) {
            bail!("the producer did not connect to the node in 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    loop {
        let h = api_status(&http, &api)?["height"].as_u64().unwrap_or(0);
        if h >= s.sync_blocks {
            break;
        }
        if h == 0 && t0.elapsed() > Duration::from_secs(60) {
            bail!("the node has not started syncing in 60 s: is the producer connected?");
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!(
                "the node did not sync {} blocks in 10 minutes (at {h})",
                s.sync_blocks
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sync_blocks_per_s = s.sync_blocks as f64 / t0.elapsed().as_secs_f64();
    eprintln!(
        "  synced {} blocks at {sync_blocks_per_s:.0} blocks/s; load {} tx/s for {} s...",
        s.sync_blocks, s.tx_rate, s.load_seconds
    );

    let out_file = root.path().join("loadgen.out");
    let mut loadgen = Command::new(std::env::current_exe()?)
        .args(["node", "loadgen", "--api", &api, "--accounts"])
        .arg(ACCOUNTS.to_string())
        .arg("--keys")
        .arg(&keys)
        .args([
            "--rate",
            &s.tx_rate.to_string(),
            "--duration",
            &s.load_seconds.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file)?)
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let mut rss_mb = Vec::new();
    let every = Duration::from_secs(if s.load_seconds >= 120 { 10 } else { 2 });
    let mut next = started;
    let status = loop {
        if let Some(st) = loadgen.try_wait()? {
            break st;
        }
        if Instant::now() >= next {
            rss_mb.push((
                started.elapsed().as_secs_f64(),
                rss_kb(pid)? as f64 / 1024.0,
            ));
            next += every;
        }
        if started.elapsed() > Duration::from_secs(s.load_seconds + 120) {
            let _ = loadgen.kill();
            bail!("loadgen did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let report = std::fs::read_to_string(&out_file)?;
    if !status.success() {
        bail!("loadgen failed: {report}");
    }
    let peers: Vec<serde_json::Value> = http.get(format!("{api}/peers")).send()?.json()?;
    let alive = swarms.last_alive();
    drop(producer_proc);
    drop(swarms);
    drop(node_proc);
    let (accepted, included, p50, p99) = parse_loadgen(&report)?;
    let rss_slope_mb_per_10_min = slope_after_warmup(&rss_mb) * 600.0;
    if std::env::var_os("CHAINMESH_BENCH_KEEP").is_some() {
        eprintln!("  kept {}", root.keep().display());
    }
    eprintln!(
        "  {included} of {accepted} txs included (p50 {p50:?} ms, p99 {p99:?} ms); {} peers at the end (light peers alive: {alive:?}); RSS slope {rss_slope_mb_per_10_min:.2} MB per 10 min",
        peers.len()
    );
    Ok(ScaleResult {
        connections: s.connections,
        node_kb_per_connection: node_kb,
        bare_kb_per_connection: bare.kb_per_connection,
        memory_ratio: if bare.kb_per_connection > 0.0 {
            node_kb / bare.kb_per_connection
        } else {
            f64::NAN
        },
        handshakes_per_s,
        bare_handshakes_per_s: bare.handshakes_per_s,
        peers_after_load: peers.len(),
        sync_blocks: s.sync_blocks,
        sync_blocks_per_s,
        tx_rate: s.tx_rate,
        load_seconds: s.load_seconds,
        txs_accepted: accepted,
        txs_included: included,
        inclusion_p50_ms: p50,
        inclusion_p99_ms: p99,
        rss_mb,
        rss_slope_mb_per_10_min,
    })
}

/// The node's bounded time windows fill during the first minutes of a steady load: the
/// forwarded-transaction set keeps five minutes of (sender, nonce), gossipsub's
/// duplicate caches two; until they are full, their growth is not a leak.
const WARM_UP_SECS: f64 = 300.0;

/// (accepted, included, p50, p99) from loadgen's report.
fn parse_loadgen(r: &str) -> anyhow::Result<(u64, u64, Option<f64>, Option<f64>)> {
    let field = |name: &str| {
        r.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("no {name:?} in loadgen's report: {r}"))
    };
    let accepted = field("accepted")?.parse()?;
    let included = field("included")?
        .split_whitespace()
        .next()
        .unwrap_or("")
        .parse()?;
    let lat = field("to inclusion")?;
    let ms = |key: &str| {
        lat.split(key)
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.trim_end_matches(',').parse().ok())
    };
    Ok((accepted, included, ms("median "), ms("p99 ")))
}

/// Least-squares slope (MB/s) of the samples after the warm-up: the first half of the
/// load, at most [`WARM_UP_SECS`].
fn slope_after_warmup(samples: &[(f64, f64)]) -> f64 {
    let end = samples.last().map_or(0.0, |s| s.0);
    let warm = (end / 2.0).min(WARM_UP_SECS);
    let s: Vec<&(f64, f64)> = samples.iter().filter(|p| p.0 >= warm).collect();
    if s.len() < 2 {
        return 0.0;
    }
    let n = s.len() as f64;
    let (mx, my) = (
        s.iter().map(|p| p.0).sum::<f64>() / n,
        s.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (num, den) = s.iter().fold((0.0, 0.0), |(a, b), p| {
        (a + (p.0 - mx) * (p.1 - my), b + (p.0 - mx).powi(2))
    });
    if den > 0.0 { num / den } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_and_report_parsing() {
        let flat: Vec<(f64, f64)> = (0..40).map(|i| (i as f64 * 10.0, 100.0)).collect();
        assert_eq!(slope_after_warmup(&flat), 0.0);
        // 1 MB per 100 s after a warm-up jump that the first half absorbs.
        let mut rising: Vec<(f64, f64)> = (0..40)
            .map(|i| (i as f64 * 10.0, 100.0 + i as f64 / 10.0))
            .collect();
        rising[0].1 = 10.0;
        assert!((slope_after_warmup(&rising) * 600.0 - 6.0).abs() < 1e-9);
        let r = "submitted      100 in 2.0 s (50 tx/s)\naccepted       100\nrejected       0\nincluded       98 (not yet: 2)\nto inclusion   median 640 ms, p99 1200 ms\n";
        assert_eq!(
            parse_loadgen(r).unwrap(),
            (100, 98, Some(640.0), Some(1200.0))
        );
        let none = "accepted 0\nincluded 0 (not yet: 0)\nto inclusion   -\n";
        assert_eq!(parse_loadgen(none).unwrap(), (0, 0, None, None));
        assert!(parse_ready("3 0 1.5", 3).is_ok());
        assert!(parse_ready("2 1 1.5", 3).is_err());
    }
}
