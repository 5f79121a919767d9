//! Mesh-delivery scoring (gossipsub's P3 and P3b) on the block topic, and the gate that
//! turns it on only while it can tell a censoring mesh peer from an honest one.
//!
//! P3 counts, for each mesh peer, the blocks it delivered first or while we were still
//! validating (or within a window after); a mesh peer below the threshold is penalised,
//! goes below zero, is pruned at the next heartbeat and carries the deficit as P3b. That
//! is the answer of gossipsub v1.1 to a peer that joins meshes and never forwards.
//!
//! It is only fair when every honest mesh link carries some blocks first in each
//! direction. gossipsub never sends a message back to the peer it came from, so for a
//! block from one producer only the peers nearer the producer can deliver it: with one or
//! two producers, every honest peer downstream of us would look like a censor and every
//! link would be pruned by its upstream end. Hence:
//! - P3 is eligible only with at least [`MIN_PRODUCERS`] producers, which in a mesh of
//!   degree 6 puts producers on both sides of nearly every link;
//! - the thresholds are counted in producer rotations (every producer's turn once):
//!   half a delivery in the counter's memory of ten rotations (a producer in our mesh
//!   delivers at least its own block each rotation), activation after two;
//! - [`DeliveryGate`] turns it on after three rotations of blocks arriving by gossip, and
//!   off again when a half rotation passes without one (a halted chain, or this node
//!   behind and syncing): without blocks to deliver, honest peers would be punished.

use std::time::{Duration, Instant};

use libp2p::gossipsub::TopicScoreParams;

/// Fewest block producers for which mesh-delivery scoring is eligible (see the module
/// header).
pub const MIN_PRODUCERS: usize = 8;

/// Deliveries (decayed) below which a mesh peer is penalised.
const THRESHOLD: f64 = 0.5;
/// The P3 weight: a mesh peer that delivered nothing loses 4 × 0.5² = 1, more than two
/// rotations in the mesh earn (P1), and far from the gossip threshold (-10), so a peer
/// pruned by mistake is still gossiped with.
const DEFICIT_WEIGHT: f64 = -4.0;

/// Where blocks come from: the genesis's producers and its block time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSources {
    pub producers: usize,
    pub block_time: Duration,
}

impl BlockSources {
    /// Every producer's turn once.
    pub fn rotation(&self) -> Duration {
        self.block_time
            .saturating_mul(self.producers.max(1).min(u32::MAX as usize) as u32)
    }

    pub fn eligible(&self) -> bool {
        self.producers >= MIN_PRODUCERS && !self.block_time.is_zero()
    }
}

/// Per-interval decay that leaves 1% of a count after `memory` (decayed each second).
fn decay_over(memory: Duration) -> f64 {
    let secs = memory.as_secs_f64().max(1.0);
    0.01f64.powf(1.0 / secs)
}

/// `base` (the block topic's parameters without P3) with mesh-delivery scoring on.
pub fn with_mesh_deliveries(base: &TopicScoreParams, s: BlockSources) -> TopicScoreParams {
    let rotation = s.rotation();
    let memory = rotation.saturating_mul(10);
    TopicScoreParams {
        mesh_message_deliveries_weight: DEFICIT_WEIGHT,
        mesh_message_deliveries_threshold: THRESHOLD,
        mesh_message_deliveries_decay: decay_over(memory),
        // A peer that stops delivering falls from the cap to the threshold in about
        // four rotations.
        mesh_message_deliveries_cap: 5.0,
        // Copies that arrive while we validate count anyway; this adds the copies sent
        // just before our IDONTWANT reached the sender.
        mesh_message_deliveries_window: (s.block_time / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(2)),
        mesh_message_deliveries_activation: rotation.saturating_mul(2).max(Duration::from_secs(10)),
        mesh_failure_penalty_weight: DEFICIT_WEIGHT,
        // A pruned censor stays below zero (and out of the mesh) for several memories.
        mesh_failure_penalty_decay: decay_over(memory.saturating_mul(3)),
        ..base.clone()
    }
}

/// Decides when mesh-delivery scoring is on: only while blocks have been arriving by
/// gossip for three rotations in a row. Sans-I/O: the node reports blocks and asks.
#[derive(Debug)]
pub struct DeliveryGate {
    sources: BlockSources,
    live_since: Option<Instant>,
    last_block: Option<Instant>,
    on: bool,
}

impl DeliveryGate {
    /// `None` when the network has too few producers for P3 to be fair.
    pub fn new(sources: BlockSources) -> Option<DeliveryGate> {
        sources.eligible().then_some(DeliveryGate {
            sources,
            live_since: None,
            last_block: None,
            on: false,
        })
    }

    fn stall(&self) -> Duration {
        self.sources.rotation() / 2
    }

    /// A block that arrived by gossip was accepted.
    pub fn block_accepted(&mut self, now: Instant) {
        if self
            .last_block
            .is_none_or(|t| now.saturating_duration_since(t) >= self.stall())
        {
            self.live_since = Some(now);
        }
        self.last_block = Some(now);
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    pub fn sources(&self) -> BlockSources {
        self.sources
    }

    /// `Some(on)` when scoring must be switched.
    pub fn poll(&mut self, now: Instant) -> Option<bool> {
        let live = self
            .last_block
            .is_some_and(|t| now.saturating_duration_since(t) < self.stall());
        if !live {
            self.live_since = None;
        }
        let warm = self.sources.rotation().saturating_mul(3);
        let want = live
            && self
                .live_since
                .is_some_and(|t| now.saturating_duration_since(t) >= warm);
        (want != self.on).then(|| {
            self.on = want;
            want
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(producers: usize) -> BlockSources {
        BlockSources {
            producers,
            block_time: Duration::from_secs(1),
        }
    }

    #[test]
    fn few_producers_never_turn_it_on() {
        assert!(DeliveryGate::new(sources(1)).is_none());
        assert!(DeliveryGate::new(sources(MIN_PRODUCERS - 1)).is_none());
        assert!(DeliveryGate::new(sources(MIN_PRODUCERS)).is_some());
    }

    #[test]
    fn on_after_three_live_rotations_off_after_half_a_quiet_one() {
        let mut g = DeliveryGate::new(sources(12)).unwrap();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Blocks every second: on after 36 s (three rotations of 12).
        for s in 0..36 {
            g.block_accepted(at(s));
            assert_eq!(g.poll(at(s)), None, "at {s} s");
        }
        g.block_accepted(at(36));
        assert_eq!(g.poll(at(36)), Some(true));
        assert!(g.is_on());
        // Missed slots under half a rotation keep it on.
        assert_eq!(g.poll(at(41)), None);
        g.block_accepted(at(41));
        // Six seconds without a block: off, and the warm-up starts again.
        assert_eq!(g.poll(at(47)), Some(false));
        g.block_accepted(at(48));
        assert_eq!(g.poll(at(48)), None);
        for s in 49..84 {
            g.block_accepted(at(s));
            assert_eq!(g.poll(at(s)), None, "at {s} s");
        }
        g.block_accepted(at(84));
        assert_eq!(g.poll(at(84)), Some(true));
    }

    #[test]
    fn parameters_follow_the_rotation_and_are_valid() {
        let base = TopicScoreParams {
            topic_weight: 1.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            ..TopicScoreParams::default()
        };
        let p = with_mesh_deliveries(&base, sources(12));
        p.validate().unwrap();
        assert_eq!(
            p.mesh_message_deliveries_activation,
            Duration::from_secs(24)
        );
        // One delivery per rotation keeps an honest peer above the threshold: the count
        // just before its next delivery, in the steady state, and a rotation after its
        // first delivery.
        let per_rotation = p.mesh_message_deliveries_decay.powi(12);
        let before_next = per_rotation / (1.0 - per_rotation);
        assert!(before_next >= THRESHOLD, "{before_next}");
        assert!(per_rotation >= THRESHOLD, "{per_rotation}");
        // A silent mesh peer is below zero at activation, after what its time in both of
        // our meshes earned (P1: 0.01 a second, topic weights 1 and 0.5).
        let deficit = THRESHOLD * THRESHOLD * p.mesh_message_deliveries_weight;
        assert!(deficit + 0.01 * 24.0 * 1.5 < 0.0);
    }
}
