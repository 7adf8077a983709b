//! Rendezvous (highest-random-weight) assignment of client prefixes to DNS servers, so
//! each client's latency and persistence data lives on one owner.
//!
//! The hash is a fixed, documented function (FNV-1a of the peer name mixed with the
//! packed prefix through SplitMix64), so servers built from different versions agree.
//! Removing a peer moves only the prefixes it owned.

use crate::net::ClientPrefix;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The rendezvous weight of `peer` for `prefix`.
pub fn weight(peer: &str, prefix: ClientPrefix) -> u64 {
    mix(fnv1a(peer.as_bytes()) ^ mix(prefix.to_bits()))
}

/// The index of the owner of `prefix` among `peers` (names), considering only those for
/// which `alive` returns true; `None` when no peer is alive.
///
/// # Examples
///
/// ```
/// use udn_core::{ClientPrefix, shard::owner};
/// let peers = ["dns-a", "dns-b", "dns-c"];
/// let p = ClientPrefix::of("198.51.100.7".parse().unwrap());
/// let o = owner(p, &peers, |_| true).unwrap();
/// // With the owner gone, another peer takes over.
/// let o2 = owner(p, &peers, |i| i != o).unwrap();
/// assert_ne!(o, o2);
/// ```
pub fn owner<S: AsRef<str>>(
    prefix: ClientPrefix,
    peers: &[S],
    alive: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    for (i, p) in peers.iter().enumerate() {
        if !alive(i) {
            continue;
        }
        let w = weight(p.as_ref(), prefix);
        if best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, i));
        }
    }
    best.map(|(_, i)| i)
}
