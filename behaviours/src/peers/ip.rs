//! Bans by IP address: peer ids cost nothing to make, so a host whose peers keep getting
//! banned is banned itself once `after` of its peer ids are banned at the same time. The
//! IP ban lasts as long as the latest of those peer bans.
//!
//! Sans I/O (unix milliseconds as a parameter) and bounded: at most `max_ips` addresses
//! are tracked, with at most `after` peers each; when full, the entry expiring first
//! makes room. Exempt addresses (by default loopback's 127.0.0.1 and ::1, where a local
//! devnet's nodes all come from) are never banned by address.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;

#[derive(Debug, Clone)]
pub struct IpBanConfig {
    /// Banned peer ids from one address that ban the address; 0 never bans an address.
    pub after: usize,
    /// Never banned nor capped per address (a local devnet's nodes all share one).
    pub exempt: HashSet<IpAddr>,
    pub max_ips: usize,
    /// Inbound handshakes under way from one address at once; 0: no cap.
    pub max_pending_per_ip: usize,
}

impl Default for IpBanConfig {
    fn default() -> Self {
        IpBanConfig {
            after: 3,
            exempt: [
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
            ]
            .into(),
            max_ips: 4096,
            max_pending_per_ip: 8,
        }
    }
}

#[derive(Debug, Default)]
struct Host<P> {
    /// Banned peers seen from this address and when each ban ends.
    peers: HashMap<P, u64>,
    /// When the address's own ban ends, if it is banned.
    banned_until: Option<u64>,
}

impl<P> Host<P> {
    fn expiry(&self) -> u64 {
        self.peers
            .values()
            .copied()
            .chain(self.banned_until)
            .max()
            .unwrap_or(0)
    }
}

pub struct IpBans<P> {
    cfg: IpBanConfig,
    hosts: HashMap<IpAddr, Host<P>>,
}

impl<P: Hash + Eq + Clone> IpBans<P> {
    pub fn new(cfg: IpBanConfig) -> Self {
        IpBans {
            cfg,
            hosts: HashMap::new(),
        }
    }

    pub fn config(&self) -> &IpBanConfig {
        &self.cfg
    }

    pub fn is_exempt(&self, ip: &IpAddr) -> bool {
        self.cfg.exempt.contains(ip)
    }

    /// Records that `peer`, connected from `ip`, is banned until `until_ms`. Returns the
    /// address's ban expiry when this ban bans the address (first time or extended).
    pub fn peer_banned(&mut self, ip: IpAddr, peer: P, until_ms: u64, now_ms: u64) -> Option<u64> {
        if self.cfg.after == 0 || self.cfg.exempt.contains(&ip) {
            return None;
        }
        if !self.hosts.contains_key(&ip) && self.hosts.len() >= self.cfg.max_ips.max(1) {
            self.expire(now_ms);
            if self.hosts.len() >= self.cfg.max_ips.max(1)
                && let Some(first) = self
                    .hosts
                    .iter()
                    .min_by_key(|(_, h)| h.expiry())
                    .map(|(ip, _)| *ip)
            {
                self.hosts.remove(&first);
            }
        }
        let after = self.cfg.after;
        let host = self.hosts.entry(ip).or_insert_with(|| Host {
            peers: HashMap::new(),
            banned_until: None,
        });
        host.peers.retain(|_, until| *until > now_ms);
        if !host.peers.contains_key(&peer) && host.peers.len() >= after {
            // Already at the threshold: the one expiring first leaves room.
            if let Some(p) = host
                .peers
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(p, _)| p.clone())
            {
                host.peers.remove(&p);
            }
        }
        host.peers.insert(peer, until_ms);
        if host.peers.len() < after {
            return None;
        }
        let until = host.peers.values().copied().max().unwrap_or(until_ms);
        if host.banned_until.is_some_and(|u| u >= until) {
            return None;
        }
        host.banned_until = Some(until);
        Some(until)
    }

    /// Bans an address until a time (a ban read back from the store).
    pub fn ban(&mut self, ip: IpAddr, until_ms: u64) {
        if self.cfg.after == 0 || self.cfg.exempt.contains(&ip) {
            return;
        }
        let host = self.hosts.entry(ip).or_insert_with(|| Host {
            peers: HashMap::new(),
            banned_until: None,
        });
        host.banned_until = Some(host.banned_until.unwrap_or(0).max(until_ms));
    }

    pub fn is_banned(&self, ip: &IpAddr, now_ms: u64) -> bool {
        self.hosts
            .get(ip)
            .and_then(|h| h.banned_until)
            .is_some_and(|u| u > now_ms)
    }

    /// Forgets what has expired; returns the addresses whose ban ended.
    pub fn expire(&mut self, now_ms: u64) -> Vec<IpAddr> {
        let mut lifted = Vec::new();
        self.hosts.retain(|ip, h| {
            h.peers.retain(|_, u| *u > now_ms);
            if h.banned_until.is_some_and(|u| u <= now_ms) {
                h.banned_until = None;
                lifted.push(*ip);
            }
            h.banned_until.is_some() || !h.peers.is_empty()
        });
        lifted
    }

    pub fn banned(&self, now_ms: u64) -> impl Iterator<Item = (IpAddr, u64)> + '_ {
        self.hosts
            .iter()
            .filter_map(move |(ip, h)| h.banned_until.filter(|u| *u > now_ms).map(|u| (*ip, u)))
    }

    pub fn tracked(&self) -> usize {
        self.hosts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_third_banned_peer_bans_its_address_until_the_last_ban_ends() {
        let mut b = IpBans::new(IpBanConfig::default());
        assert_eq!(b.peer_banned(ip(1), "a", 5_000, 0), None);
        assert_eq!(b.peer_banned(ip(1), "b", 9_000, 0), None);
        // Another address counts apart.
        assert_eq!(b.peer_banned(ip(2), "c", 9_000, 0), None);
        assert!(!b.is_banned(&ip(1), 1));
        assert_eq!(b.peer_banned(ip(1), "d", 7_000, 0), Some(9_000));
        assert!(b.is_banned(&ip(1), 8_999));
        assert!(!b.is_banned(&ip(2), 1));
        // The same peer banned again adds nothing.
        assert_eq!(b.peer_banned(ip(1), "d", 7_000, 1), None);
        assert!(b.expire(8_999).is_empty());
        assert_eq!(b.expire(9_000), vec![ip(1)]);
        assert!(!b.is_banned(&ip(1), 9_001));
    }

    #[test]
    fn expired_peer_bans_do_not_count() {
        let mut b = IpBans::new(IpBanConfig::default());
        b.peer_banned(ip(1), 1u32, 1_000, 0);
        b.peer_banned(ip(1), 2, 1_000, 0);
        // The first two have expired by the time the third is banned.
        assert_eq!(b.peer_banned(ip(1), 3, 10_000, 2_000), None);
        assert!(!b.is_banned(&ip(1), 2_001));
    }

    #[test]
    fn exempt_addresses_and_a_zero_threshold_never_ban() {
        let mut b = IpBans::new(IpBanConfig::default());
        let lo = IpAddr::from([127, 0, 0, 1]);
        for p in 0..10u32 {
            assert_eq!(b.peer_banned(lo, p, 1_000, 0), None);
        }
        assert!(!b.is_banned(&lo, 1));
        // Other loopback addresses are not exempt (the tests ban from 127.0.0.x).
        for p in 0..3u32 {
            b.peer_banned(IpAddr::from([127, 0, 0, 9]), p, 1_000, 0);
        }
        assert!(b.is_banned(&IpAddr::from([127, 0, 0, 9]), 1));
        let mut off = IpBans::new(IpBanConfig {
            after: 0,
            ..IpBanConfig::default()
        });
        for p in 0..10u32 {
            assert_eq!(off.peer_banned(ip(1), p, 1_000, 0), None);
        }
    }

    #[test]
    fn memory_is_bounded_by_addresses_and_peers() {
        let mut b = IpBans::new(IpBanConfig {
            max_ips: 100,
            ..IpBanConfig::default()
        });
        for i in 0..10_000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            b.peer_banned(a, i, 1_000 + u64::from(i), 0);
            b.peer_banned(ip(1), i, 1_000 + u64::from(i), 0);
        }
        assert!(b.tracked() <= 100);
        assert!(b.hosts.values().all(|h| h.peers.len() <= 3));
        // The host that kept offending is banned, with its latest expiry.
        assert!(b.is_banned(&ip(1), 10_000));
    }
}
