//! Property tests: the invalidation tree against a naive model, and freshness
//! decisions against the RFC's rules restated directly.

use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use std::time::Duration;
use udn_cache::invalidate::{InvalidationTree, Scope};
use udn_cache::policy::{self, Action, StoredMeta};
use udn_core::Timestamp;

#[derive(Debug, Clone)]
enum Op {
    Insert(usize),
    Purge(Scope, usize),
    Lookup(usize),
}

/// A small universe of URLs so purges and lookups collide often.
fn urls() -> Vec<String> {
    let mut v = Vec::new();
    for host in ["a.example", "b.example"] {
        for path in [
            "/",
            "/x",
            "/x/",
            "/x/y",
            "/x/y/z.gif",
            "/x/yz",
            "/q?v=1",
            "/q",
            "/x/y?k",
        ] {
            v.push(format!("http://{host}{path}"));
        }
    }
    v
}

fn segments(url: &str) -> (String, Vec<String>) {
    let (h, s) = udn_cache::route::key_parts(url).unwrap();
    (h.to_string(), s.map(str::to_string).collect())
}

/// The naive model: every cached URL is a live entry; a purge deletes every entry it
/// covers by comparing path segments directly.
fn covers(scope: Scope, purge: &str, url: &str) -> bool {
    let (ph, ps) = segments(purge);
    let (uh, us) = segments(url);
    if ph != uh {
        return false;
    }
    match scope {
        Scope::Domain => true,
        Scope::Prefix => us.len() >= ps.len() && us[..ps.len()] == ps[..],
        Scope::Url => us == ps,
    }
}

fn op() -> impl Strategy<Value = Op> {
    let n = urls().len();
    prop_oneof![
        (0..n).prop_map(Op::Insert),
        (
            prop_oneof![Just(Scope::Url), Just(Scope::Prefix), Just(Scope::Domain)],
            0..n
        )
            .prop_map(|(s, i)| Op::Purge(s, i)),
        (0..n).prop_map(Op::Lookup),
    ]
}

proptest! {
    #[test]
    fn tree_matches_naive_model(ops in proptest::collection::vec(op(), 1..200)) {
        let urls = urls();
        let mut tree = InvalidationTree::new();
        // What the cache holds: url -> generation stamped at insert.
        let mut stored: std::collections::HashMap<usize, u64> = Default::default();
        // The model: the set of live URLs.
        let mut live: std::collections::HashSet<usize> = Default::default();
        for op in ops {
            match op {
                Op::Insert(i) => {
                    stored.insert(i, tree.generation());
                    live.insert(i);
                }
                Op::Purge(scope, i) => {
                    tree.purge(scope, &urls[i]);
                    live.retain(|&u| !covers(scope, &urls[i], &urls[u]));
                }
                Op::Lookup(i) => {
                    let valid = stored.get(&i).is_some_and(|&g| tree.is_valid(&urls[i], g));
                    prop_assert_eq!(valid, live.contains(&i), "lookup {}", &urls[i]);
                }
            }
        }
        for (i, &g) in &stored {
            prop_assert_eq!(tree.is_valid(&urls[*i], g), live.contains(i));
        }
    }

    #[test]
    fn cache_control_parser_never_panics(s in "\\PC*") {
        if let Ok(v) = HeaderValue::from_str(&s) {
            let mut h = HeaderMap::new();
            h.insert("cache-control", v.clone());
            h.insert("vary", v.clone());
            h.insert("expires", v.clone());
            h.insert("age", v);
            let _ = policy::CacheControl::parse(&h);
            let _ = policy::vary_names(&h);
            let m = StoredMeta::new(StatusCode::OK, h.clone(), Timestamp::from_secs(1), Timestamp::from_secs(2));
            let _ = policy::evaluate(&m, &h, Timestamp::from_secs(3), None);
        }
    }

    /// RFC 9111 4.2 restated: with `max-age=L` stored at t0 (no Date, no Age), a plain
    /// request at t0+a is answered from the cache iff a < L; with `must-revalidate` a
    /// stale entry is never served even under `max-stale`; `max-stale=S` serves stale
    /// entries up to S seconds past their lifetime; a check interval C forces a
    /// revalidation once a >= C.
    #[test]
    fn freshness_follows_rfc(
        lifetime in 0u64..1000,
        age in 0u64..2000,
        max_stale in proptest::option::of(0u64..500),
        must_revalidate: bool,
        check in proptest::option::of(1u64..1500),
        min_fresh in proptest::option::of(0u64..300),
    ) {
        let t0 = 1_700_000_000u64;
        let mut resp = HeaderMap::new();
        let cc = if must_revalidate { format!("max-age={lifetime}, must-revalidate") } else { format!("max-age={lifetime}") };
        resp.insert("cache-control", HeaderValue::from_str(&cc).unwrap());
        let meta = StoredMeta::new(StatusCode::OK, resp, Timestamp::from_secs(t0), Timestamp::from_secs(t0));
        let mut req = HeaderMap::new();
        let mut rcc = Vec::new();
        if let Some(s) = max_stale { rcc.push(format!("max-stale={s}")); }
        if let Some(m) = min_fresh { rcc.push(format!("min-fresh={m}")); }
        if !rcc.is_empty() {
            req.insert("cache-control", HeaderValue::from_str(&rcc.join(", ")).unwrap());
        }
        let now = Timestamp::from_secs(t0 + age);
        let action = policy::evaluate(&meta, &req, now, check.map(Duration::from_secs));

        let expected = if check.is_some_and(|c| age >= c) {
            Action::Revalidate
        } else if lifetime > age + min_fresh.unwrap_or(0) {
            Action::Fresh
        } else if lifetime > age {
            Action::Revalidate
        } else if !must_revalidate && max_stale.is_some_and(|s| age - lifetime <= s) {
            Action::StaleAllowed
        } else {
            Action::Revalidate
        };
        prop_assert_eq!(action, expected);
        prop_assert_eq!(meta.current_age(now), Duration::from_secs(age));
    }

    /// Heuristic freshness is 10 % of Date - Last-Modified, capped at one day.
    #[test]
    fn heuristic_is_a_tenth_capped(lm_age in 0u64..(30 * 86_400)) {
        let date = Timestamp::from_secs(1_700_000_000);
        let lm = Timestamp::from_secs(1_700_000_000 - lm_age);
        let mut resp = HeaderMap::new();
        resp.insert("date", HeaderValue::from_str(&policy::format_date(date)).unwrap());
        resp.insert("last-modified", HeaderValue::from_str(&policy::format_date(lm)).unwrap());
        let meta = StoredMeta::new(StatusCode::OK, resp, date, date);
        let expected = Duration::from_millis(lm_age * 1000 / 10).min(policy::HEURISTIC_CAP);
        prop_assert_eq!(meta.freshness_lifetime(), expected);
    }
}
