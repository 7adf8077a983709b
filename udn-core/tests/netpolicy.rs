//! Invariants of the customer-destination policy (`udn_core::netpolicy`) and of its
//! use when a configuration is accepted.

use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use udn_core::netpolicy::{TargetPolicy, classify, embedded_v4};
use udn_core::{Cidr, Config, ConfigErrorKind, Error};

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    // Bias towards the interesting ranges as well as the whole space.
    prop_oneof![
        any::<u32>().prop_map(Ipv4Addr::from),
        (
            prop::sample::select(vec![0u8, 10, 100, 127, 169, 172, 192, 224, 240, 255]),
            any::<[u8; 3]>()
        )
            .prop_map(|(a, r)| Ipv4Addr::new(a, r[0], r[1], r[2])),
    ]
}

fn v4_cidrs() -> impl Strategy<Value = Vec<Cidr>> {
    prop::collection::vec(
        (v4(), 0u8..=32).prop_map(|(a, l)| Cidr::new(IpAddr::V4(a), l)),
        0..4,
    )
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        v4().prop_map(IpAddr::V4),
        any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        v4().prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),
    ]
}

proptest! {
    /// `::ffff:a.b.c.d`, `64:ff9b::a.b.c.d` and `2002:abcd::` are judged exactly as
    /// `a.b.c.d`, whatever the allow list.
    #[test]
    fn embedded_forms_are_judged_like_their_v4(a in v4(), allow in v4_cidrs(), tail in any::<u64>()) {
        let p = TargetPolicy::new(allow);
        let plain = p.check(IpAddr::V4(a));
        let mapped = IpAddr::V6(a.to_ipv6_mapped());
        let nat64 = IpAddr::V6(Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(u32::from(a))));
        let six_to_four = IpAddr::V6(Ipv6Addr::from(
            (0x2002_u128 << 112) | (u128::from(u32::from(a)) << 80) | u128::from(tail),
        ));
        prop_assert_eq!(p.check(mapped), plain);
        prop_assert_eq!(p.check(nat64), plain);
        prop_assert_eq!(p.check(six_to_four), plain);
        if u32::from(a) > 1 {
            let compat = IpAddr::V6(Ipv6Addr::from(u128::from(u32::from(a))));
            prop_assert_eq!(p.check(compat), plain);
        }
    }

    /// Without an allow list, exactly the classified addresses are refused.
    #[test]
    fn the_default_refuses_exactly_the_classified(ip in any_ip()) {
        prop_assert_eq!(TargetPolicy::default().check(ip).err(), classify(ip));
    }

    /// An allow-listed range is always reachable; adding ranges never refuses more.
    #[test]
    fn the_allow_list_wins(ip in any_ip(), len in 0u8..=128, more in v4_cidrs()) {
        let own = Cidr::new(ip, len);
        let mut allow = more.clone();
        allow.push(own);
        prop_assert!(TargetPolicy::new(allow).allows(ip));
        if TargetPolicy::default().allows(ip) {
            prop_assert!(TargetPolicy::new(more).allows(ip));
        }
    }

    /// An allow list that does not contain the address (in either form) changes
    /// nothing.
    #[test]
    fn unrelated_ranges_change_nothing(ip in any_ip(), allow in v4_cidrs()) {
        let v4 = match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => embedded_v4(a),
        };
        let relevant = allow
            .iter()
            .any(|c| c.contains(ip) || v4.is_some_and(|a| c.contains(IpAddr::V4(a))));
        if !relevant {
            prop_assert_eq!(TargetPolicy::new(allow).check(ip), TargetPolicy::default().check(ip));
        }
    }

    /// Compiling a configuration refuses an origin server address exactly when the
    /// configuration's own policy refuses it, naming the field.
    #[test]
    fn compile_applies_the_configured_policy(a in any_ip(), allow in v4_cidrs()) {
        let mut cfg = Config::from_toml(udn_core::config::SAMPLE).unwrap();
        cfg.security.allow_target_ranges = allow.clone();
        cfg.origins[0].servers[0].addresses = vec![a];
        let policy = TargetPolicy::new(allow);
        // The sample's other (loopback) destinations may be refused too; only the
        // address under test is looked at.
        let ours: Vec<_> = match cfg.compile() {
            Ok(_) => Vec::new(),
            Err(Error::Invalid(errs)) => errs
                .0
                .into_iter()
                .filter(|e| e.path == "origins[0].servers[0].addresses[0]")
                .collect(),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        prop_assert_eq!(ours.is_empty(), policy.allows(a));
        let all_denied = ours
            .iter()
            .all(|e| matches!(e.kind, ConfigErrorKind::DeniedTarget { .. }));
        prop_assert!(all_denied);
    }
}

#[test]
fn the_sample_allows_loopback_and_nothing_else() {
    let cfg = Config::from_toml(udn_core::config::SAMPLE).unwrap();
    let net = cfg.compile().unwrap();
    assert!(net.target_policy.allows("127.0.0.21".parse().unwrap()));
    assert!(!net.target_policy.allows("10.0.0.1".parse().unwrap()));
    assert!(!net.target_policy.allows("169.254.169.254".parse().unwrap()));
}

#[test]
fn the_default_refuses_every_customer_destination_with_its_path() {
    let mut cfg = Config::from_toml(udn_core::config::SAMPLE).unwrap();
    cfg.security = Default::default();
    cfg.cdn[0].origin_urls = vec!["http://[::ffff:169.254.169.254]/".into()];
    cfg.cdn[0].origins.push("10.1.2.3".into());
    let errs = cfg.compile().unwrap_err().to_string();
    for path in [
        "origins[0].servers[0].addresses[0]",
        "origins[1].servers[0].addresses[0]",
        "gtm[0].standby[0]",
        "cdn[0].origin_urls[0]",
        "cdn[0].origins[1]",
    ] {
        assert!(errs.contains(path), "{path} not in {errs}");
    }
    assert!(errs.contains("cloud-metadata"), "{errs}");
    // POP servers are the operator's own.
    assert!(!errs.contains("pops["), "{errs}");
}

#[test]
fn an_ftp_monitor_cannot_smuggle_a_command_into_the_session() {
    let mut cfg = Config::from_toml(udn_core::config::SAMPLE).unwrap();
    let s = &mut cfg.services[0];
    s.kind = udn_core::config::ServiceKind::Ftp;
    s.path = "health.txt\r\nDELE index.html".into();
    s.ftp_user = Some("monitor\nSITE EXEC x".into());
    s.ftp_password = Some("pw\r".into());
    let errs = cfg.compile().unwrap_err().to_string();
    for path in [
        "services[0].path",
        "services[0].ftp_user",
        "services[0].ftp_password",
    ] {
        assert!(errs.contains(path), "{path} not in {errs}");
    }
    assert!(errs.contains("control characters"), "{errs}");
    // Without retrieval there is no content to check.
    let mut cfg = Config::from_toml(udn_core::config::SAMPLE).unwrap();
    cfg.services[0].kind = udn_core::config::ServiceKind::Ftp;
    cfg.services[0].path = "health.txt".into();
    cfg.services[0].ftp_retrieve = false;
    cfg.services[0].expect_content = Some("ok".into());
    let errs = cfg.compile().unwrap_err().to_string();
    assert!(errs.contains("services[0].ftp_retrieve"), "{errs}");
    cfg.services[0].expect_content = None;
    cfg.services[0].expect_regex = None;
    cfg.compile().expect("a SIZE-only FTP monitor");
}

#[test]
fn ftp_origin_urls_are_accepted_and_checked_like_http_ones() {
    let mut cfg = Config::from_toml(udn_core::config::SAMPLE).unwrap();
    cfg.cdn[0].origin_urls = vec!["ftp://127.0.0.21:2121/pub".into()];
    cfg.compile()
        .expect("an ftp:// origin on an allowed address");
    cfg.security = Default::default();
    cfg.cdn[0].origin_urls = vec!["ftp://anonymous:x@[::ffff:10.0.0.1]:21/".into()];
    let errs = cfg.compile().unwrap_err().to_string();
    assert!(errs.contains("cdn[0].origin_urls[0]"), "{errs}");
    assert!(errs.contains("private"), "{errs}");
    let mut cfg = Config::from_toml(udn_core::config::SAMPLE).unwrap();
    for bad in [
        "ftp://",
        "ftp://h:0/",
        "ftp://h:99999/",
        "ftp://h/a\r\nDELE x",
        "ftp://h/a?x=1",
        "gopher://h/",
        "http:///x",
    ] {
        cfg.cdn[0].origin_urls = vec![bad.into()];
        let errs = cfg.compile().unwrap_err().to_string();
        assert!(errs.contains("cdn[0].origin_urls[0]"), "{bad}: {errs}");
    }
}
