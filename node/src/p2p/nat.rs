//! NAT traversal in the network task: reachability from AutoNAT, auto-relay (find relays
//! in the DHT and among peers, get admitted by proof of work, keep reservations on
//! `p2p.nat.reservations` of them, replace one that goes away), hole punching results,
//! the relay server's events, and the admission gate that guards it.
//!
//! rust-libp2p gives the pieces (relay client and server, DCUtR, AutoNAT) but no
//! auto-relay; the choice of relays and the admission handshake are ours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chainmesh_behaviours::admission::{self, Challenge, Gate, GateConfig, Request, Response};
use chainmesh_behaviours::codec::Malformed;
use chainmesh_behaviours::nat;
use chainmesh_behaviours::peers::Fault;
use chainmesh_proto::pb_net;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, ResponseChannel};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, relay};

use super::{Internal, Net, is_relayed};
use crate::chain::now_ms;
use crate::config::{AdmissionConfig, NatConfig};

/// How long a relay that failed us is left alone.
const RELAY_BACKOFF: Duration = Duration::from_secs(60);
/// How often we look relays up in the DHT while we lack reservations.
const RELAY_LOOKUP_EVERY: Duration = Duration::from_secs(20);
/// Relay candidates remembered at most.
const MAX_CANDIDATES: usize = 64;
/// Circuits whose opening time the relay server remembers (for the longest-circuit figure).
const MAX_TRACKED_CIRCUITS: usize = 1024;
/// Hole punches retried after DCUtR gave up (its own three attempts on one relayed
/// connection), each after a longer pause: a punch fails at a bad moment (both sides'
/// SYNs must cross within the round trip it measured), not only behind a symmetric NAT.
const PUNCH_RETRIES: u32 = 3;
const PUNCH_RETRY_PAUSE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    Unknown,
    Public,
    Private,
}

#[derive(Debug)]
enum Phase {
    /// Known, not yet asked.
    Candidate,
    /// Waiting for a connection to it.
    Dialing(Instant),
    /// Admission: challenge asked, being solved, proof sent.
    Admitting(Instant),
    Reserving,
    Reserved,
    Failed(Instant),
}

struct Relay {
    addrs: Vec<Multiaddr>,
    phase: Phase,
}

pub(super) struct NatState {
    reach: Reach,
    relays: HashMap<PeerId, Relay>,
    listeners: HashMap<ListenerId, PeerId>,
    last_lookup: Option<Instant>,
    gate: Arc<Mutex<Gate<PeerId>>>,
    /// Relayed connections per peer, closed once hole punching gives a direct one.
    relayed: HashMap<PeerId, Vec<ConnectionId>>,
    /// The circuit address of peers we dialled through a relay: the dialler is the side
    /// that retries a failed hole punch (by coming back through the relay), so that the
    /// two sides do not both tear the connection down.
    relayed_out: HashMap<PeerId, Multiaddr>,
    /// Failed hole punches to retry: attempts so far, and when.
    punch_retries: HashMap<PeerId, (u32, Instant)>,
    circuits: HashMap<(PeerId, PeerId), Instant>,
    /// Gates (bootstrap nodes) we asked for admission, and until when they let us in.
    admitted_by: HashMap<PeerId, u64>,
    pub(super) stats: NatStats,
}

#[derive(Debug, Clone, Default)]
pub(super) struct NatStats {
    pub holepunch_ok: u64,
    pub holepunch_failed: u64,
    pub reservations_served: u64,
    pub reservations_refused: u64,
    pub circuits_accepted: u64,
    pub circuits_closed: u64,
    /// Circuits the relay ended at its byte cap and at its time cap.
    pub circuits_over_bytes: u64,
    pub circuits_over_time: u64,
    pub longest_circuit_ms: u64,
    pub admissions_granted: u64,
    pub admissions_refused: u64,
    pub last_solve_ms: u64,
    pub admission_disconnects: u64,
}

/// The gate shared with the relay server's reservation check.
pub(super) fn gate(cfg: &AdmissionConfig) -> Arc<Mutex<Gate<PeerId>>> {
    Arc::new(Mutex::new(Gate::new(
        GateConfig {
            bits: cfg.bits,
            challenge_ms: cfg.challenge_secs.saturating_mul(1000),
            admitted_ms: cfg.admitted_secs.saturating_mul(1000),
            ..GateConfig::default()
        },
        rand::random(),
    )))
}

/// The relay server's reservation predicate: admitted peers only.
pub(super) fn admitted_check(gate: &Arc<Mutex<Gate<PeerId>>>) -> nat::Admitted {
    let gate = gate.clone();
    Box::new(move |peer| {
        gate.lock()
            .map(|g| g.is_admitted(&peer, now_ms()))
            .unwrap_or(false)
    })
}

impl NatState {
    pub(super) fn new(cfg: &NatConfig, gate: Arc<Mutex<Gate<PeerId>>>) -> Self {
        let mut relays = HashMap::new();
        for r in &cfg.relays {
            if let Ok(a) = r.parse::<Multiaddr>()
                && let Some(Protocol::P2p(p)) = a.iter().last()
            {
                relays.insert(
                    p,
                    Relay {
                        addrs: vec![super::without_p2p(&a)],
                        phase: Phase::Candidate,
                    },
                );
            }
        }
        NatState {
            reach: Reach::Unknown,
            relays,
            listeners: HashMap::new(),
            last_lookup: None,
            gate,
            relayed: HashMap::new(),
            relayed_out: HashMap::new(),
            punch_retries: HashMap::new(),
            circuits: HashMap::new(),
            admitted_by: HashMap::new(),
            stats: NatStats::default(),
        }
    }

    pub(super) fn is_public(&self) -> bool {
        self.reach == Reach::Public
    }

    pub(super) fn reach_name(&self) -> &'static str {
        match self.reach {
            Reach::Unknown => "unknown",
            Reach::Public => "public",
            Reach::Private => "private",
        }
    }

    pub(super) fn reservations(&self) -> usize {
        self.relays
            .values()
            .filter(|r| matches!(r.phase, Phase::Reserved))
            .count()
    }

    fn in_progress(&self) -> usize {
        self.relays
            .values()
            .filter(|r| {
                matches!(
                    r.phase,
                    Phase::Dialing(_) | Phase::Admitting(_) | Phase::Reserving | Phase::Reserved
                )
            })
            .count()
    }

    fn is_admitted(&self, peer: &PeerId) -> bool {
        self.gate
            .lock()
            .map(|g| g.is_admitted(peer, now_ms()))
            .unwrap_or(false)
    }
}

impl Net {
    /// A peer that can relay for us.
    pub(super) fn relay_candidate(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let full = self.nat.relays.len() >= MAX_CANDIDATES;
        match self.nat.relays.get_mut(&peer) {
            Some(r) => {
                for a in addrs {
                    if !r.addrs.contains(&a) && r.addrs.len() < 8 {
                        r.addrs.push(a);
                    }
                }
            }
            None if !full => {
                tracing::debug!(relay = %peer, "relay candidate");
                self.nat.relays.insert(
                    peer,
                    Relay {
                        addrs,
                        phase: Phase::Candidate,
                    },
                );
            }
            None => {}
        }
    }

    fn wants_relays(&self) -> bool {
        self.cfg.nat.reservations > 0 && self.nat.reach == Reach::Private
    }

    /// Once a second: keep `reservations` relays while we are private.
    pub(super) fn tend_relays(&mut self) {
        let now = Instant::now();
        // Expire stale phases.
        for r in self.nat.relays.values_mut() {
            match r.phase {
                Phase::Failed(t) if now >= t => r.phase = Phase::Candidate,
                Phase::Dialing(t) | Phase::Admitting(t)
                    if now.duration_since(t) > Duration::from_secs(60) =>
                {
                    r.phase = Phase::Failed(now + RELAY_BACKOFF)
                }
                _ => {}
            }
        }
        if let Ok(mut g) = self.nat.gate.lock() {
            g.expire(now_ms());
        }
        if !self.wants_relays() {
            return;
        }
        let want = self.cfg.nat.reservations;
        let mut busy = self.nat.in_progress();
        let candidates: Vec<PeerId> = self
            .nat
            .relays
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Candidate))
            .map(|(p, _)| *p)
            .collect();
        for peer in candidates {
            if busy >= want {
                break;
            }
            busy += 1;
            if self.swarm.is_connected(&peer) {
                self.ask_admission(peer);
            } else {
                let addrs = self
                    .nat
                    .relays
                    .get(&peer)
                    .map(|r| r.addrs.clone())
                    .unwrap_or_default();
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => self.set_phase(&peer, Phase::Dialing(now)),
                    Err(e) => {
                        tracing::debug!(relay = %peer, error = %e, "cannot dial relay");
                        self.set_phase(&peer, Phase::Failed(now + RELAY_BACKOFF));
                    }
                }
            }
        }
        if busy < want
            && self
                .nat
                .last_lookup
                .is_none_or(|t| now.duration_since(t) >= RELAY_LOOKUP_EVERY)
        {
            self.nat.last_lookup = Some(now);
            let key = chainmesh_behaviours::discovery::relays_key(&self.network_id);
            if let Some(k) = self.swarm.behaviour_mut().discovery.kad.as_mut() {
                k.get_providers(key);
            }
        }
    }

    fn set_phase(&mut self, peer: &PeerId, phase: Phase) {
        if let Some(r) = self.nat.relays.get_mut(peer) {
            r.phase = phase;
        }
    }

    /// A connection to a peer came up: a relay we were dialling can be asked now.
    pub(super) fn nat_on_connected(
        &mut self,
        peer: PeerId,
        conn: ConnectionId,
        address: &Multiaddr,
        inbound: bool,
    ) {
        if is_relayed(address) {
            let v = self.nat.relayed.entry(peer).or_default();
            if v.len() < 8 {
                v.push(conn);
            }
            if !inbound
                && (self.nat.relayed_out.len() < MAX_CANDIDATES
                    || self.nat.relayed_out.contains_key(&peer))
            {
                self.nat.relayed_out.insert(peer, address.clone());
            }
        } else if let Some(r) = self.nat.relays.get_mut(&peer) {
            if r.addrs.len() < 8 && !r.addrs.contains(address) {
                r.addrs.push(super::without_p2p(address));
            }
            if matches!(r.phase, Phase::Dialing(_)) {
                self.ask_admission(peer);
            }
        }
    }

    pub(super) fn nat_on_closed(&mut self, peer: PeerId, conn: ConnectionId) {
        if let Some(v) = self.nat.relayed.get_mut(&peer) {
            v.retain(|c| *c != conn);
            if v.is_empty() {
                self.nat.relayed.remove(&peer);
            }
        }
    }

    /// Gone from the peer table (its last connection closed): nothing to punch to.
    pub(super) fn nat_on_peer_gone(&mut self, peer: &PeerId) {
        if !self.nat.punch_retries.contains_key(peer) {
            self.nat.relayed_out.remove(peer);
        }
    }

    /// Retries the hole punches that are due: the relayed connections to the peer are
    /// closed and the peer is dialled again through the relay; the new relayed
    /// connection starts DCUtR afresh (the peer behind the relay initiates it).
    pub(super) fn tend_hole_punches(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .nat
            .punch_retries
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let still_relayed = self
                .peers
                .get(&peer)
                .is_some_and(|p| is_relayed(&p.address));
            let circuit = self.nat.relayed_out.get(&peer).cloned();
            let (Some(circuit), true) = (circuit, still_relayed) else {
                // Direct by now (the peer's own punch, or a dial), or gone.
                self.nat.punch_retries.remove(&peer);
                continue;
            };
            // Due again only if this attempt fails too (a new failure reschedules it).
            if let Some(r) = self.nat.punch_retries.get_mut(&peer) {
                r.1 = now + Duration::from_secs(3600);
            }
            tracing::info!(peer = %peer, via = %circuit, "retrying hole punching: reconnecting through the relay");
            for c in self.nat.relayed.remove(&peer).unwrap_or_default() {
                self.swarm.close_connection(c);
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(vec![circuit])
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::info!(peer = %peer, error = %e, "cannot dial through the relay again; staying without a direct connection");
                self.nat.punch_retries.remove(&peer);
            }
        }
    }

    fn ask_admission(&mut self, relay: PeerId) {
        self.set_phase(&relay, Phase::Admitting(Instant::now()));
        self.send_challenge_request(relay);
    }

    fn send_challenge_request(&mut self, gate: PeerId) {
        // Marked as asked at once, so that a second identify does not ask again.
        if self.nat.admitted_by.len() < MAX_CANDIDATES || self.nat.admitted_by.contains_key(&gate) {
            self.nat.admitted_by.insert(gate, 0);
        }
        self.swarm
            .behaviour_mut()
            .admission
            .send_request(&gate, Ok(Request::Challenge.to_pb()));
    }

    /// A bootstrap peer of ours that runs an admission gate: get admitted there, in case
    /// it asks it of every peer (`admission.bootstrap` on its side).
    pub(super) fn admit_at_bootstrap(&mut self, peer: PeerId) {
        let is_bootstrap = self.bootstrap_peers.values().any(|p| *p == peer);
        let relay_admitting = self
            .nat
            .relays
            .get(&peer)
            .is_some_and(|r| matches!(r.phase, Phase::Admitting(_)));
        if !is_bootstrap || relay_admitting || self.nat.admitted_by.contains_key(&peer) {
            return;
        }
        tracing::debug!(peer = %peer, "asking our bootstrap peer for admission");
        self.send_challenge_request(peer);
    }

    /// Once a second on a gate that asks admission of every inbound peer: peers that
    /// did not prove their work within the grace period go.
    pub(super) fn tend_admission(&mut self) {
        // Forget where we were admitted once it ran out, so that we ask again.
        let now = now_ms();
        self.nat
            .admitted_by
            .retain(|_, until| *until == 0 || *until > now);
        if !self.cfg.admission.bootstrap {
            return;
        }
        let grace = Duration::from_secs(self.cfg.admission.grace_secs);
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                p.inbound && p.connected_at.elapsed() >= grace && !self.nat.is_admitted(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for p in late {
            self.nat.stats.admission_disconnects += 1;
            tracing::info!(peer = %p, grace_secs = grace.as_secs(), "disconnecting a peer that was not admitted in time (no proof of work)");
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    /// Admitted (or the relay asks for no admission): reserve a slot.
    fn reserve(&mut self, relay: PeerId) {
        // The address we reached it at is known to work from here; otherwise one it
        // announced, loopback last (it only works for a relay on this host).
        let current = self
            .peers
            .get(&relay)
            .filter(|p| !p.inbound && !is_relayed(&p.address))
            .map(|p| super::without_p2p(&p.address));
        let announced = self.nat.relays.get(&relay).and_then(|r| {
            r.addrs
                .iter()
                .filter(|a| !is_relayed(a))
                .min_by_key(|a| super::is_loopback(a))
                .cloned()
        });
        let Some(addr) = current.or(announced) else {
            tracing::debug!(relay = %relay, "no direct address for the relay");
            self.set_phase(&relay, Phase::Failed(Instant::now() + RELAY_BACKOFF));
            return;
        };
        let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(id) => {
                self.nat.listeners.insert(id, relay);
                self.set_phase(&relay, Phase::Reserving);
            }
            Err(e) => {
                tracing::warn!(relay = %relay, address = %circuit, error = %e, "cannot reserve on relay");
                self.set_phase(&relay, Phase::Failed(Instant::now() + RELAY_BACKOFF));
            }
        }
    }

    /// A listener ended: if it was a relay reservation, that relay is gone and another
    /// will be picked on the next tick.
    pub(super) fn nat_on_listener_closed(&mut self, id: ListenerId, reason: &str) {
        if let Some(relay) = self.nat.listeners.remove(&id) {
            tracing::info!(relay = %relay, reason, "relay reservation ended; looking for another relay");
            self.set_phase(&relay, Phase::Failed(Instant::now() + RELAY_BACKOFF));
            self.external_addresses_changed();
        }
    }

    pub(super) fn on_nat_event(&mut self, ev: nat::BehaviourEvent) {
        match ev {
            nat::BehaviourEvent::Autonat(autonat::v1::Event::StatusChanged { old, new }) => {
                let reach = match &new {
                    autonat::v1::NatStatus::Public(_) => Reach::Public,
                    autonat::v1::NatStatus::Private => Reach::Private,
                    autonat::v1::NatStatus::Unknown => Reach::Unknown,
                };
                tracing::info!(old = ?old, new = ?new, "reachability (AutoNAT)");
                self.nat.reach = reach;
                self.update_kad_mode();
                if reach == Reach::Public {
                    self.external_addresses_changed();
                }
            }
            nat::BehaviourEvent::Autonat(_) => {}
            nat::BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if let Some(r) = self.nat.relays.get_mut(&relay_peer_id)
                    && matches!(r.phase, Phase::Reserving)
                {
                    r.phase = Phase::Reserved;
                }
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, reservations = self.nat.reservations(), "relay reservation accepted");
                }
            }
            nat::BehaviourEvent::RelayClient(e) => tracing::debug!(event = ?e, "relay client"),
            nat::BehaviourEvent::Relay(e) => self.on_relay_server_event(e),
            nat::BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(conn) => {
                    self.nat.stats.holepunch_ok += 1;
                    self.nat.punch_retries.remove(&remote_peer_id);
                    self.nat.relayed_out.remove(&remote_peer_id);
                    tracing::info!(peer = %remote_peer_id, "direct connection by hole punching (DCUtR); closing the relayed one");
                    for c in self.nat.relayed.remove(&remote_peer_id).unwrap_or_default() {
                        if c != conn {
                            self.swarm.close_connection(c);
                        }
                    }
                }
                Err(e) => {
                    self.nat.stats.holepunch_failed += 1;
                    let attempts = self
                        .nat
                        .punch_retries
                        .get(&remote_peer_id)
                        .map_or(0, |(n, _)| *n);
                    let ours = self.nat.relayed_out.contains_key(&remote_peer_id);
                    if ours
                        && attempts < PUNCH_RETRIES
                        && self.nat.punch_retries.len() < MAX_CANDIDATES
                    {
                        let pause = PUNCH_RETRY_PAUSE * (attempts + 1);
                        self.nat
                            .punch_retries
                            .insert(remote_peer_id, (attempts + 1, Instant::now() + pause));
                        tracing::info!(
                            peer = %remote_peer_id,
                            error = %e,
                            retry_in_secs = pause.as_secs(),
                            attempt = attempts + 1,
                            of = PUNCH_RETRIES,
                            "hole punching failed; staying relayed and trying again"
                        );
                    } else {
                        self.nat.punch_retries.remove(&remote_peer_id);
                        tracing::info!(peer = %remote_peer_id, error = %e, "hole punching failed; staying relayed");
                    }
                }
            },
        }
    }

    #[allow(deprecated)]
    fn on_relay_server_event(&mut self, ev: relay::Event) {
        let s = &mut self.nat.stats;
        match ev {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed,
            } => {
                s.reservations_served += 1;
                if !renewed {
                    tracing::info!(peer = %src_peer_id, "relay: reservation accepted");
                }
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                s.reservations_refused += 1;
                let admitted = self.nat.is_admitted(&src_peer_id);
                let reason = if admitted {
                    "relay limits"
                } else {
                    "no admission proof"
                };
                tracing::info!(peer = %src_peer_id, ?status, reason, "relay: reservation refused");
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                s.circuits_accepted += 1;
                if self.nat.circuits.len() < MAX_TRACKED_CIRCUITS {
                    self.nat
                        .circuits
                        .insert((src_peer_id, dst_peer_id), Instant::now());
                }
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit opened");
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                s.circuits_closed += 1;
                let lived = self
                    .nat
                    .circuits
                    .remove(&(src_peer_id, dst_peer_id))
                    .map(|t| t.elapsed().as_millis() as u64);
                if let Some(ms) = lived {
                    s.longest_circuit_ms = s.longest_circuit_ms.max(ms);
                }
                match &error {
                    Some(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        s.circuits_over_time += 1
                    }
                    // libp2p's relay reports its byte cap only in the message.
                    Some(e) if e.to_string().contains("bytes") => s.circuits_over_bytes += 1,
                    _ => {}
                }
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, lived_ms = ?lived, error = ?error.map(|e| e.to_string()), "relay: circuit closed");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay: circuit refused");
            }
            e => tracing::debug!(event = ?e, "relay"),
        }
    }

    pub(super) fn on_admission_event(&mut self, ev: admission::Event) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_admission_request(peer, request, channel),
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => match Response::from_pb(response) {
                Ok(Response::Challenge(c)) => self.solve_challenge(peer, c),
                Ok(Response::Granted { until_ms }) => {
                    if let Some(t) = self.nat.admitted_by.get_mut(&peer) {
                        *t = until_ms;
                    }
                    let valid_secs = until_ms.saturating_sub(now_ms()) / 1000;
                    let reserving = self
                        .nat
                        .relays
                        .get(&peer)
                        .is_some_and(|r| matches!(r.phase, Phase::Admitting(_)));
                    if reserving {
                        tracing::info!(relay = %peer, valid_secs, "admitted by relay; reserving");
                        self.reserve(peer);
                    } else {
                        tracing::info!(peer = %peer, valid_secs, "admitted by bootstrap peer");
                    }
                }
                Ok(Response::Refused(reason)) => {
                    self.nat.admitted_by.remove(&peer);
                    tracing::warn!(peer = %peer, %reason, "our admission proof was refused");
                    self.set_phase(&peer, Phase::Failed(Instant::now() + RELAY_BACKOFF));
                }
                Err(e) => {
                    self.set_phase(&peer, Phase::Failed(Instant::now() + RELAY_BACKOFF));
                    self.fault(peer, Fault::Malformed, format!("admission: {e}"));
                }
            },
            Event::OutboundFailure { peer, error, .. } => {
                self.nat.admitted_by.remove(&peer);
                let reserving = self
                    .nat
                    .relays
                    .get(&peer)
                    .is_some_and(|r| matches!(r.phase, Phase::Admitting(_)));
                if matches!(error, OutboundFailure::UnsupportedProtocols) {
                    // A relay that asks no proof (not one of ours): reserve directly.
                    if reserving {
                        self.reserve(peer);
                    }
                } else {
                    tracing::debug!(relay = %peer, error = %error, "admission request failed");
                    self.set_phase(&peer, Phase::Failed(Instant::now() + RELAY_BACKOFF));
                    self.on_outbound_failure(peer, "admission", &error);
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(peer, "admission", &error)
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_admission_request(
        &mut self,
        peer: PeerId,
        request: Result<pb_net::AdmissionRequest, Malformed>,
        channel: ResponseChannel<pb_net::AdmissionResponse>,
    ) {
        let req = match request.map_err(|m| m.0).and_then(Request::from_pb) {
            Ok(r) => r,
            Err(why) => {
                drop(channel);
                self.fault(peer, Fault::Malformed, format!("admission: {why}"));
                return;
            }
        };
        if self.limiter.check(&peer, 1, Instant::now()).is_err() {
            drop(channel);
            self.fault(
                peer,
                Fault::RateExceeded,
                "admission requests too often".into(),
            );
            return;
        }
        let now = now_ms();
        let mut refusal = None;
        let resp = match self.nat.gate.lock() {
            Err(_) => Response::Refused("gate unavailable".into()),
            Ok(mut g) => match req {
                Request::Challenge => Response::Challenge(g.issue(&peer.to_bytes(), now)),
                Request::Proof { nonce, counter } => {
                    match g.redeem(&peer, &peer.to_bytes(), nonce, counter, now) {
                        Ok(until_ms) => Response::Granted { until_ms },
                        Err(why) => {
                            let r = Response::Refused(why.to_string());
                            refusal = Some(why);
                            r
                        }
                    }
                }
            },
        };
        match &resp {
            Response::Granted { .. } => {
                self.nat.stats.admissions_granted += 1;
                tracing::info!(peer = %peer, "admission granted (proof of work checked)");
            }
            Response::Refused(reason) => {
                self.nat.stats.admissions_refused += 1;
                tracing::debug!(peer = %peer, %reason, "admission refused");
            }
            Response::Challenge(_) => {}
        }
        // An honest client only ever sends a solved proof of a challenge we issued it; it
        // may be late (a slow machine), which is no fault. Anything else is bad data.
        if let Some(why) = refusal
            && !matches!(why, admission::Refusal::Expired(_))
        {
            self.fault(peer, Fault::BadData, format!("admission: {why}"));
        }
        let _ = self
            .swarm
            .behaviour_mut()
            .admission
            .send_response(channel, resp.to_pb());
    }

    /// Solves a relay's challenge on a blocking thread; the proof goes out when done.
    fn solve_challenge(&mut self, relay: PeerId, c: Challenge) {
        let max = self.cfg.admission.max_bits;
        if c.bits > max {
            tracing::warn!(relay = %relay, bits = c.bits, max_bits = max, "relay asks for more work than p2p.admission.max_bits");
            self.set_phase(&relay, Phase::Failed(Instant::now() + RELAY_BACKOFF));
            return;
        }
        let me = self.swarm.local_peer_id().to_bytes();
        let tx = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            // 2^(bits+5) tries fail with probability e^-32.
            let counter = c.solve(&me, 1u64 << (c.bits + 5).min(40));
            let _ = tx.blocking_send(Internal::Solved {
                relay,
                challenge: c,
                counter,
                took: started.elapsed(),
            });
        });
    }

    pub(super) fn on_solved(
        &mut self,
        relay: PeerId,
        c: Challenge,
        counter: Option<u64>,
        took: Duration,
    ) {
        self.nat.stats.last_solve_ms = took.as_millis() as u64;
        let Some(counter) = counter else {
            tracing::warn!(relay = %relay, bits = c.bits, "no solution found for the relay's challenge");
            self.set_phase(&relay, Phase::Failed(Instant::now() + RELAY_BACKOFF));
            return;
        };
        tracing::debug!(relay = %relay, bits = c.bits, took_ms = took.as_millis() as u64, "admission challenge solved");
        let req = Request::Proof {
            nonce: c.nonce,
            counter,
        };
        self.swarm
            .behaviour_mut()
            .admission
            .send_request(&relay, Ok(req.to_pb()));
    }
}
