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
            h.insert("age", v.clone());
            for n in ["cdn-cache-control", "udn-cache-control", "if-match", "if-none-match", "if-range", "location", "etag"] {
                h.insert(n, v.clone());
            }
            let _ = policy::CacheControl::parse(&h);
            let _ = policy::CacheControl::parse_response(&h);
            let _ = udn_cache::conditional::evaluate(&http::Method::GET, &h, &h);
            let _ = policy::not_modified_matches(&h, &h);
            let _ = policy::invalidated_paths(&http::Method::POST, StatusCode::OK, "h", "/a", &h);
            let _ = policy::vary_names(&h);
            let m = StoredMeta::new(StatusCode::OK, h.clone(), Timestamp::from_secs(1), Timestamp::from_secs(2));
            let _ = policy::evaluate(&m, &h, Timestamp::from_secs(3), None);
        }
    }

    #[test]
    fn routing_and_purge_parsing_never_panic(host in "\\PC{0,40}", path in "\\PC{0,80}", scope in "[a-z]{0,8}") {
        let cfg = udn_core::Config::from_toml(udn_core::config::SAMPLE).unwrap();
        let router = udn_cache::Router::from_config(&cfg).unwrap();
        if let Ok(r) = router.route(&host, &path) {
            // Whatever the input, only configured origins are ever fetched.
            prop_assert!(r.fetch_url.starts_with("http://127.0.0.21:8080/"));
            prop_assert!(r.key.starts_with("http://www.shop.udn.example/"));
        }
        let _ = udn_cache::Purge::parse(&scope, &format!("{host}{path}"), 1);
        let _ = udn_cache::Purge::parse("url", &format!("http://{host}{path}"), 1);
        let _ = udn_cache::route::key_parts(&path);
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

    /// RFC 9111 4.2.3: current_age = max(apparent_age, age_value + response_delay)
    /// + resident_time, restated with plain integers.
    #[test]
    fn age_follows_rfc(
        date_before_response in 0u64..500,
        age_value in proptest::option::of(0u64..1000),
        delay in 0u64..60,
        resident in 0u64..5000,
    ) {
        let request_time = 1_700_000_000u64;
        let response_time = request_time + delay;
        let date = response_time - date_before_response;
        let mut h = HeaderMap::new();
        h.insert("date", HeaderValue::from_str(&policy::format_date(Timestamp::from_secs(date))).unwrap());
        if let Some(a) = age_value {
            h.insert("age", HeaderValue::from(a));
        }
        let meta = StoredMeta::new(StatusCode::OK, h, Timestamp::from_secs(request_time), Timestamp::from_secs(response_time));
        let expected = date_before_response.max(age_value.unwrap_or(0) + delay) + resident;
        prop_assert_eq!(
            meta.current_age(Timestamp::from_secs(response_time + resident)),
            Duration::from_secs(expected)
        );
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

fn hm(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn tag(weak: bool, v: u8) -> String {
    if weak {
        format!("W/\"v{v}\"")
    } else {
        format!("\"v{v}\"")
    }
}

const LM_T: u64 = 1_700_000_000;

fn date(s: u64) -> String {
    policy::format_date(Timestamp::from_secs(s))
}

proptest! {
    /// 1xx, 206 and 304 are never stored, whatever the headers say.
    #[test]
    fn never_stores_1xx_206_304(code in prop_oneof![100u16..200, Just(206u16), Just(304u16)], public: bool) {
        let st = StatusCode::from_u16(code).unwrap();
        let cc = if public { "public, max-age=600" } else { "max-age=600" };
        let resp = hm(&[("cache-control", cc.into()), ("etag", "\"a\"".into())]);
        prop_assert!(policy::storable(&http::Method::GET, &HeaderMap::new(), st, &resp).is_err());
    }

    /// RFC 9111 4.2.1 duplicates: equal max-age values keep their value, differing
    /// ones make the response stale (lifetime 0), in one field or across fields.
    #[test]
    fn duplicate_max_age_is_most_restrictive(a in 0u64..1000, b in 0u64..1000, split: bool, s_maxage: bool) {
        let name = if s_maxage { "s-maxage" } else { "max-age" };
        let resp = if split {
            hm(&[("cache-control", format!("{name}={a}")), ("cache-control", format!("{name}={b}"))])
        } else {
            hm(&[("cache-control", format!("{name}={a}, public, {name}={b}"))])
        };
        let t = Timestamp::from_secs(LM_T);
        let meta = StoredMeta::new(StatusCode::OK, resp, t, t);
        let expected = if a == b { a } else { 0 };
        prop_assert_eq!(meta.freshness_lifetime(), Duration::from_secs(expected));
    }

    /// Two Expires lines that disagree mean stale; equal ones are one value.
    #[test]
    fn duplicate_expires(a in 1u64..1000, b in 1u64..1000) {
        let t = Timestamp::from_secs(LM_T);
        let resp = hm(&[("date", date(LM_T)), ("expires", date(LM_T + a)), ("expires", date(LM_T + b))]);
        let meta = StoredMeta::new(StatusCode::OK, resp, t, t);
        let expected = if a == b { a } else { 0 };
        prop_assert_eq!(meta.freshness_lifetime(), Duration::from_secs(expected));
    }

    /// Quoted-string escapes (RFC 9110 5.6.4): a quoted value holding `"`, `\` and `,`
    /// stays one directive; what follows it is still parsed; unquote undoes the escapes.
    #[test]
    fn quoted_pairs_in_directive_values(x in "[a-z\",\\\\ =]{0,20}", n in 0u64..10_000) {
        let escaped: String = x.chars().flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        }).collect();
        let quoted = format!("\"{escaped}\"");
        let unq = policy::unquote(&quoted).into_owned();
        prop_assert_eq!(unq, x.clone());
        let resp = hm(&[("cache-control", format!("no-cache={quoted}, max-age={n}"))]);
        let cc = policy::CacheControl::parse(&resp);
        prop_assert!(cc.no_cache);
        prop_assert_eq!(cc.max_age, Some(n));
        prop_assert!(!cc.no_store && !cc.private);
    }

    /// RFC 9213: the most specific valid targeted field (UDN-Cache-Control, then
    /// CDN-Cache-Control) decides the edge's lifetime instead of Cache-Control and
    /// Expires; an invalid one (not a structured dictionary) is skipped.
    #[test]
    fn targeted_fields_take_precedence(
        cc in 0u64..1000,
        cdn in proptest::option::of(0u64..1000),
        udn in proptest::option::of(0u64..1000),
        udn_invalid: bool,
    ) {
        let mut pairs = vec![("cache-control", format!("max-age={cc}")), ("date", date(LM_T)), ("expires", date(LM_T + 5))];
        if let Some(c) = cdn { pairs.push(("cdn-cache-control", format!("max-age={c}"))); }
        if let Some(u) = udn {
            // Upper-case keys are not RFC 8941 keys: the whole field is invalid.
            let v = if udn_invalid { format!("Max-Age={u}") } else { format!("max-age={u}") };
            pairs.push(("udn-cache-control", v));
        }
        let t = Timestamp::from_secs(LM_T);
        let meta = StoredMeta::new(StatusCode::OK, hm(&pairs), t, t);
        let expected = match (udn.filter(|_| !udn_invalid), cdn) {
            (Some(u), _) => u,
            (None, Some(c)) => c,
            (None, None) => cc,
        };
        prop_assert_eq!(meta.freshness_lifetime(), Duration::from_secs(expected));
        // A targeted no-store forbids storing although Cache-Control allows it.
        let mut p2 = pairs.clone();
        p2.push(("cdn-cache-control", "no-store".into()));
        let blocked = policy::storable(&http::Method::GET, &HeaderMap::new(), StatusCode::OK, &hm(&p2)).is_err();
        let udn_decides = udn.is_some() && !udn_invalid;
        // Two cdn-cache-control lines join into one list: no-store applies unless UDN-CC decides.
        prop_assert_eq!(blocked, !udn_decides);
    }

    /// A Set-Cookie response is stored only where the hostname allows it, and then is
    /// judged as the same response without the cookie.
    #[test]
    fn set_cookie_needs_the_hostname_setting(allowed: bool, private: bool) {
        let cc = if private { "private, max-age=60" } else { "max-age=60" };
        let with = hm(&[("cache-control", cc.into()), ("set-cookie", "sid=1".into())]);
        let without = hm(&[("cache-control", cc.into())]);
        let get = http::Method::GET;
        let none = HeaderMap::new();
        let r = policy::storable_with(&get, &none, StatusCode::OK, &with, allowed);
        if allowed {
            prop_assert_eq!(r, policy::storable(&get, &none, StatusCode::OK, &without));
        } else {
            prop_assert!(r.is_err());
        }
        prop_assert!(policy::storable(&get, &none, StatusCode::OK, &with).is_err());
    }

    /// RFC 9111 4.3.4: a 304 updates a stored response only when its validator
    /// matches: a strong ETag strongly, a weak one weakly, else Last-Modified exactly.
    #[test]
    fn not_modified_needs_a_matching_validator(
        stored_tag in proptest::option::of((any::<bool>(), 0u8..3)),
        new_tag in proptest::option::of((any::<bool>(), 0u8..3)),
        stored_lm in proptest::option::of(0u64..3),
        new_lm in proptest::option::of(0u64..3),
    ) {
        let mut s = Vec::new();
        if let Some((w, v)) = stored_tag { s.push(("etag", tag(w, v))); }
        if let Some(l) = stored_lm { s.push(("last-modified", date(LM_T + l))); }
        let mut n = Vec::new();
        if let Some((w, v)) = new_tag { n.push(("etag", tag(w, v))); }
        if let Some(l) = new_lm { n.push(("last-modified", date(LM_T + l))); }
        let expected = match (new_tag, stored_tag) {
            (Some((false, v)), Some((false, sv))) => v == sv,
            (Some((false, _)), _) => false,
            (Some((true, v)), Some((_, sv))) => v == sv,
            (Some(_), None) => false,
            (None, _) => match new_lm {
                Some(l) => stored_lm == Some(l),
                None => stored_tag.is_none() && stored_lm.is_none(),
            },
        };
        prop_assert_eq!(policy::not_modified_matches(&hm(&s), &hm(&n)), expected);
    }

    /// RFC 9110 13.2.2 restated: If-Match (strong) then If-Unmodified-Since, then
    /// If-None-Match (weak) then If-Modified-Since, then If-Range (strong only).
    #[test]
    fn preconditions_follow_rfc_9110(
        stored_weak: bool,
        im in proptest::option::of((any::<bool>(), 0u8..2, any::<bool>())),
        ius in proptest::option::of(0u64..3),
        inm in proptest::option::of((any::<bool>(), 0u8..2, any::<bool>())),
        ims in proptest::option::of(0u64..3),
        ir in proptest::option::of(prop_oneof![
            (any::<bool>(), 0u8..2).prop_map(|(w, v)| Err((w, v))),
            (0u64..3).prop_map(Ok),
        ]),
        head: bool,
    ) {
        use udn_cache::conditional::{evaluate, Precondition};
        let stored = hm(&[("etag", tag(stored_weak, 0)), ("last-modified", date(LM_T + 1))]);
        let mut r = Vec::new();
        // (weak, value, star)
        if let Some((w, v, star)) = im { r.push(("if-match", if star { "*".into() } else { tag(w, v) })); }
        if let Some(d) = ius { r.push(("if-unmodified-since", date(LM_T + d))); }
        if let Some((w, v, star)) = inm { r.push(("if-none-match", if star { "*".into() } else { tag(w, v) })); }
        if let Some(d) = ims { r.push(("if-modified-since", date(LM_T + d))); }
        r.push(("range", "bytes=0-1".into()));
        match ir {
            Some(Err((w, v))) => r.push(("if-range", tag(w, v))),
            Some(Ok(d)) => r.push(("if-range", date(LM_T + d))),
            None => {}
        }
        let method = if head { http::Method::HEAD } else { http::Method::GET };
        let got = evaluate(&method, &hm(&r), &stored);
        let strong = |w: bool, v: u8| !w && !stored_weak && v == 0;
        let expected = if let Some((w, v, star)) = im {
            if star || strong(w, v) { None } else { Some(Precondition::Failed) }
        } else if ius.is_some_and(|d| d < 1) {
            // Last-Modified (LM_T + 1) is after If-Unmodified-Since (LM_T + d).
            Some(Precondition::Failed)
        } else {
            None
        };
        let expected = expected.unwrap_or_else(|| {
            if let Some((_, v, star)) = inm {
                if star || v == 0 { return Precondition::NotModified; }
            } else if ims.is_some_and(|d| d >= 1) {
                // Last-Modified (LM_T + 1) is not after If-Modified-Since (LM_T + d).
                return Precondition::NotModified;
            }
            let range = !head && match ir {
                None => true,
                Some(Err((w, v))) => strong(w, v),
                Some(Ok(d)) => d == 1,
            };
            Precondition::Proceed { range }
        });
        prop_assert_eq!(got, expected);
    }

    /// RFC 9111 4.4: after an unsafe method with 2xx/3xx the target and the same-host
    /// Location / Content-Location are invalidated; never for safe methods or errors,
    /// never another host's URL.
    #[test]
    fn unsafe_methods_invalidate(
        m in prop_oneof![Just("POST"), Just("PUT"), Just("DELETE"), Just("PATCH"), Just("GET"), Just("HEAD"), Just("OPTIONS")],
        status in prop_oneof![200u16..208, 300u16..309, 400u16..405, 500u16..504],
        loc in proptest::option::of((0u8..4, "[a-z]{1,8}")),
    ) {
        let method: http::Method = m.parse().unwrap();
        let mut resp = Vec::new();
        let mut expect_loc = None;
        if let Some((form, p)) = &loc {
            let v = match form {
                0 => { expect_loc = Some(format!("/{p}")); format!("/{p}") }
                1 => { expect_loc = Some(format!("/{p}")); format!("http://Origin.example/{p}") }
                2 => format!("https://other.example/{p}"),
                _ => { expect_loc = Some(format!("/dir/{p}")); p.clone() }
            };
            resp.push(("location", v));
        }
        let got = policy::invalidated_paths(&method, StatusCode::from_u16(status).unwrap(), "origin.example", "/dir/item?x=1", &hm(&resp));
        let unsafe_ok = !matches!(m, "GET" | "HEAD" | "OPTIONS") && (200..400).contains(&status);
        if !unsafe_ok {
            prop_assert!(got.is_empty());
        } else {
            let mut expected = vec!["/dir/item?x=1".to_string()];
            if let Some(l) = expect_loc { expected.push(l); }
            prop_assert_eq!(got, expected);
        }
    }
}
