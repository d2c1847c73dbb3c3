//! Trusted hostname metadata: which names the guest resolved, through an
//! accepted DNS answer, to which addresses.
//!
//! The only source of hostnames for HTTP matching. Entries live for the
//! answer's TTL but at least [`MIN_WINDOW`] (package managers connect long
//! after a TTL-0 CDN answer) and at most [`MAX_WINDOW`]; the table holds at
//! most [`MAX_ENTRIES`] (address, name) pairs, oldest evicted first.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest time an accepted answer stays attributed, whatever its TTL.
pub const MIN_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Longest time an accepted answer stays attributed.
pub const MAX_WINDOW: Duration = Duration::from_secs(6 * 60 * 60);
/// Most (address, name) pairs kept per guest.
pub const MAX_ENTRIES: usize = 16 * 1024;

/// Lower-cases a DNS name and drops one trailing dot.
pub fn canonical_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// Guest-scoped hostname attribution.
#[derive(Default)]
pub struct DnsMetadata {
    inner: Mutex<HashMap<IpAddr, HashMap<String, Instant>>>,
}

impl DnsMetadata {
    /// Records that `name` resolved to `ip` with `ttl`.
    pub fn record(&self, ip: IpAddr, name: &str, ttl: Duration) {
        self.record_at(ip, name, ttl, Instant::now());
    }

    fn record_at(&self, ip: IpAddr, name: &str, ttl: Duration, now: Instant) {
        let until = now + ttl.clamp(MIN_WINDOW, MAX_WINDOW);
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let names = map.entry(ip).or_default();
        let e = names.entry(canonical_name(name)).or_insert(until);
        *e = (*e).max(until);
        if map.values().map(HashMap::len).sum::<usize>() > MAX_ENTRIES {
            evict(&mut map, now);
        }
    }

    /// The names currently attributed to `ip`, sorted.
    pub fn names(&self, ip: IpAddr) -> BTreeSet<String> {
        self.names_at(ip, Instant::now())
    }

    fn names_at(&self, ip: IpAddr, now: Instant) -> BTreeSet<String> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip)
            .map(|n| {
                n.iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Drops expired pairs, then the ones expiring soonest until a quarter of
/// the room is free.
fn evict(map: &mut HashMap<IpAddr, HashMap<String, Instant>>, now: Instant) {
    for names in map.values_mut() {
        names.retain(|_, until| *until > now);
    }
    map.retain(|_, names| !names.is_empty());
    let total: usize = map.values().map(HashMap::len).sum();
    let target = MAX_ENTRIES * 3 / 4;
    if total > target {
        let mut all: Vec<(Instant, IpAddr, String)> = map
            .iter()
            .flat_map(|(ip, n)| n.iter().map(move |(name, t)| (*t, *ip, name.clone())))
            .collect();
        all.sort();
        for (_, ip, name) in all.into_iter().take(total - target) {
            if let Some(n) = map.get_mut(&ip) {
                n.remove(&name);
            }
        }
        map.retain(|_, names| !names.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_canonical_and_kept_past_a_zero_ttl() {
        let m = DnsMetadata::default();
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        let t0 = Instant::now();
        m.record_at(ip, "Registry.NPMJS.org.", Duration::ZERO, t0);
        let names = m.names_at(ip, t0 + Duration::from_secs(60));
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["registry.npmjs.org"]
        );
        assert!(m
            .names_at(ip, t0 + MIN_WINDOW + Duration::from_secs(1))
            .is_empty());
        assert!(m.names_at("203.0.113.6".parse().unwrap(), t0).is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let m = DnsMetadata::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            m.record_at(
                IpAddr::from(i.to_be_bytes()),
                "x.test",
                Duration::from_secs(60),
                t0,
            );
        }
        let total: usize = m.inner.lock().unwrap().values().map(HashMap::len).sum();
        assert!(total <= MAX_ENTRIES, "{total}");
    }
}
