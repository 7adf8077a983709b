//! The control plane's stores side by side: the same checks on `SqliteBackend` (a real
//! SQLite file) and `PgBackend` (a real PostgreSQL database from `UDN_TEST_POSTGRES`),
//! each through two independent handles on the same database, as two control planes
//! sharing it would be: config commits are serialized with exactly one winner per base
//! version, purge sequence numbers never repeat, sessions expire, names stay unique, and
//! per-edge delivery status moves from pending to applied.

use crate::pg_support;

use std::sync::{Arc, Barrier};
use udn_bins::api::backend::{BackendError, DeliveryKind, DeliveryState, PurgeScope, SessionKind};
use udn_bins::api::{Backend, PgBackend, Role, SqliteBackend};
use udn_core::{Config, Timestamp, config::SAMPLE};

/// Opens two handles on one store.
type Open = Box<dyn Fn() -> Arc<dyn Backend>>;

fn sqlite(tag: &str) -> (Open, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("udn-cpstore-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("control.db");
    (
        Box::new(move || Arc::new(SqliteBackend::open(&file).expect("open sqlite"))),
        dir,
    )
}

fn postgres(tag: &str) -> Option<Open> {
    let url = pg_support::fresh_database(&format!("cpstore_{tag}"))?;
    Some(Box::new(move || {
        Arc::new(PgBackend::connect(&url).expect("open postgres"))
    }))
}

fn on_both(tag: &str, check: fn(&Open)) {
    let (open, dir) = sqlite(tag);
    check(&open);
    let _ = std::fs::remove_dir_all(dir);
    if let Some(open) = postgres(tag) {
        check(&open);
    }
}

fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(1_800_000_000 + secs)
}

fn sample() -> Config {
    Config::from_toml(SAMPLE).unwrap()
}

#[test]
fn concurrent_commits_have_one_winner_per_base_version() {
    on_both("commits", |open| {
        let first = open();
        assert_eq!(first.current_config().unwrap().version, 0);
        assert_eq!(first.commit_config(0, &sample(), "seed", t(0)).unwrap(), 1);
        // Eight writers on their own handles, all based on version 1, released at once.
        let handles: Vec<_> = (0..8).map(|_| open()).collect();
        let barrier = Arc::new(Barrier::new(handles.len()));
        let threads: Vec<_> = handles
            .into_iter()
            .enumerate()
            .map(|(i, db)| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut cfg = sample();
                    cfg.customers[0].display_name = Some(format!("writer {i}"));
                    barrier.wait();
                    db.commit_config(1, &cfg, &format!("writer-{i}"), t(1))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert_eq!(*won[0].as_ref().unwrap(), 2);
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(
                matches!(
                    r,
                    Err(BackendError::Conflict {
                        base: 1,
                        current: 2
                    })
                ),
                "{r:?}"
            );
        }
        // Every handle reads the winner's version; the history keeps version 1.
        let other = open();
        let now = other.current_config().unwrap();
        assert_eq!(now.version, 2);
        assert!(now.author.starts_with("writer-"), "{}", now.author);
        let v1 = other.config_at(1).unwrap().expect("version 1 kept");
        assert_eq!(v1.author, "seed");
        assert!(other.config_at(3).unwrap().is_none());
        // An invalid config is refused with the field named, and commits nothing.
        let mut bad = sample();
        bad.gtm[0].targets[0].server = "missing".into();
        match other.commit_config(2, &bad, "bad", t(2)) {
            Err(BackendError::Invalid(errs)) => {
                assert!(
                    errs.to_string().contains("gtm[0].targets[0].server"),
                    "{errs}"
                )
            }
            r => panic!("expected Invalid, got {r:?}"),
        }
        assert_eq!(first.current_config().unwrap().version, 2);
    });
}

#[test]
fn purge_sequence_numbers_are_unique_across_handles() {
    on_both("purges", |open| {
        let edges = vec!["fra-edge-1".to_string(), "nyc-edge-1".to_string()];
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let db = open();
                let edges = edges.clone();
                std::thread::spawn(move || {
                    (0..10)
                        .map(|i| {
                            db.create_purge(
                                "shop",
                                PurgeScope::Url,
                                &format!("http://cdn.shop.udn.example/{w}/{i}"),
                                "test",
                                &edges,
                                t(i),
                            )
                            .unwrap()
                            .seq
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seqs.sort_unstable();
        let n = seqs.len();
        seqs.dedup();
        assert_eq!(seqs.len(), n, "no sequence number twice");
        let db = open();
        let listed = db.purges(Some("shop"), 100, None).unwrap();
        assert_eq!(listed.len(), 40);
        assert!(
            listed.windows(2).all(|w| w[0].seq > w[1].seq),
            "newest first"
        );
        assert!(db.purges(Some("acme"), 100, None).unwrap().is_empty());
        assert_eq!(db.purges(None, 5, None).unwrap().len(), 5);
        // The page before a sequence number: the next older ones.
        let older = db.purges(Some("shop"), 3, Some(listed[4].seq)).unwrap();
        assert_eq!(
            older.iter().map(|p| p.seq).collect::<Vec<_>>(),
            listed[5..8].iter().map(|p| p.seq).collect::<Vec<_>>()
        );

        // Delivery: pending per edge until applied; a failure counts and stays pending.
        let seq = seqs[0];
        assert_eq!(db.pending_purges("fra-edge-1").unwrap().len(), 40);
        db.record_purge_attempt(seq, "fra-edge-1", Err("timeout".into()), t(5))
            .unwrap();
        db.record_purge_attempt(seq, "fra-edge-1", Ok(()), t(6))
            .unwrap();
        let status = db.purge_status(seq).unwrap();
        assert_eq!(status.len(), 2);
        let fra = status.iter().find(|s| s.edge == "fra-edge-1").unwrap();
        assert!(fra.applied);
        assert_eq!(fra.attempts, 2);
        assert_eq!(fra.applied_at, Some(t(6)));
        assert_eq!(fra.last_error, None);
        let nyc = status.iter().find(|s| s.edge == "nyc-edge-1").unwrap();
        assert!(!nyc.applied);
        assert_eq!(db.pending_purges("fra-edge-1").unwrap().len(), 39);
        assert_eq!(db.pending_purges("nyc-edge-1").unwrap().len(), 40);
        assert!(db.purge(seq).unwrap().is_some());
        assert!(db.purge(999_999).unwrap().is_none());

        // Prefills have their own sequence and status.
        let p = db
            .create_prefill(
                "shop",
                &["http://cdn.shop.udn.example/big.iso".to_string()],
                "test",
                &edges,
                t(7),
            )
            .unwrap();
        assert_eq!(db.prefill(p.seq).unwrap().unwrap().urls, p.urls);
        db.record_prefill_attempt(p.seq, "nyc-edge-1", Err("refused".into()), t(8))
            .unwrap();
        let st = db.prefill_status(p.seq).unwrap();
        let nyc = st.iter().find(|s| s.edge == "nyc-edge-1").unwrap();
        assert_eq!(
            (nyc.applied, nyc.attempts, nyc.last_error.as_deref()),
            (false, 1, Some("refused"))
        );
        assert_eq!(db.pending_prefills("nyc-edge-1").unwrap().len(), 1);
    });
}

#[test]
fn refused_items_fail_cancelled_items_leave_the_queue() {
    on_both("failcancel", |open| {
        let db = open();
        let edges = vec!["fra-edge-1".to_string(), "nyc-edge-1".to_string()];
        let purge = |i: u64| {
            db.create_purge(
                "shop",
                PurgeScope::Url,
                &format!("http://cdn.shop.udn.example/{i}"),
                "test",
                &edges,
                t(i),
            )
            .unwrap()
            .seq
        };
        let (a, b) = (purge(1), purge(2));
        // fra refuses `a` for good: failed with the reason, out of fra's queue only.
        db.fail_delivery(DeliveryKind::Purge, a, "fra-edge-1", "HTTP 400: bad", t(3))
            .unwrap();
        let other = open();
        let st = other.purge_status(a).unwrap();
        let fra = st.iter().find(|s| s.edge == "fra-edge-1").unwrap();
        assert_eq!(fra.state, DeliveryState::Failed);
        assert_eq!(fra.last_error.as_deref(), Some("HTTP 400: bad"));
        assert!(!fra.applied);
        let seqs = |e: &str| -> Vec<u64> {
            other
                .pending_purges(e)
                .unwrap()
                .iter()
                .map(|p| p.seq)
                .collect()
        };
        assert_eq!(seqs("fra-edge-1"), vec![b]);
        assert_eq!(seqs("nyc-edge-1"), vec![a, b]);
        // A later retry error does not bring it back.
        other
            .record_purge_attempt(a, "fra-edge-1", Err("timeout".into()), t(4))
            .unwrap();
        assert_eq!(seqs("fra-edge-1"), vec![b]);

        // `b` applied on fra, then cancelled: only nyc's pending row changes.
        other
            .record_purge_attempt(b, "fra-edge-1", Ok(()), t(5))
            .unwrap();
        assert_eq!(
            other
                .cancel_delivery(DeliveryKind::Purge, b, "admin", t(6))
                .unwrap(),
            1
        );
        let st = db.purge_status(b).unwrap();
        let state = |e: &str| st.iter().find(|s| s.edge == e).unwrap().clone();
        assert_eq!(state("fra-edge-1").state, DeliveryState::Applied);
        assert_eq!(state("nyc-edge-1").state, DeliveryState::Cancelled);
        assert_eq!(
            state("nyc-edge-1").last_error.as_deref(),
            Some("cancelled by admin")
        );
        assert_eq!(seqs("nyc-edge-1"), vec![a]);

        // Prefills: the same states in their own table.
        let p = db
            .create_prefill(
                "shop",
                &["http://cdn.shop.udn.example/big.iso".to_string()],
                "test",
                &edges,
                t(7),
            )
            .unwrap();
        db.fail_delivery(DeliveryKind::Prefill, p.seq, "nyc-edge-1", "HTTP 413", t(8))
            .unwrap();
        assert_eq!(
            db.cancel_delivery(DeliveryKind::Prefill, p.seq, "admin", t(9))
                .unwrap(),
            1
        );
        let st = db.prefill_status(p.seq).unwrap();
        let states: Vec<_> = st.iter().map(|s| (s.edge.as_str(), s.state)).collect();
        assert_eq!(
            states,
            vec![
                ("fra-edge-1", DeliveryState::Cancelled),
                ("nyc-edge-1", DeliveryState::Failed)
            ]
        );
        assert!(db.pending_prefills("fra-edge-1").unwrap().is_empty());
        assert!(db.pending_prefills("nyc-edge-1").unwrap().is_empty());
        // Purge status is untouched by prefill changes.
        assert_eq!(seqs("nyc-edge-1"), vec![a]);
    });
}

#[test]
fn a_status_table_made_before_delivery_states_is_migrated() {
    let (open, dir) = sqlite("migrate");
    let file = dir.join("control.db");
    {
        let c = rusqlite::Connection::open(&file).unwrap();
        c.execute_batch(
            "CREATE TABLE cp_purges (seq INTEGER PRIMARY KEY AUTOINCREMENT, customer TEXT NOT NULL,
               scope TEXT NOT NULL, target TEXT NOT NULL, requested_by TEXT NOT NULL,
               requested_at INTEGER NOT NULL);
             CREATE TABLE cp_purge_status (seq INTEGER NOT NULL REFERENCES cp_purges(seq),
               edge TEXT NOT NULL, applied INTEGER NOT NULL DEFAULT 0,
               attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, applied_at INTEGER,
               PRIMARY KEY (seq, edge));
             INSERT INTO cp_purges VALUES (1, 'shop', 'url', 'http://cdn.shop.udn.example/a', 't', 1);
             INSERT INTO cp_purges VALUES (2, 'shop', 'url', 'http://cdn.shop.udn.example/b', 't', 2);
             INSERT INTO cp_purge_status VALUES (1, 'fra-edge-1', 1, 1, NULL, 5);
             INSERT INTO cp_purge_status VALUES (2, 'fra-edge-1', 0, 3, 'down', NULL);",
        )
        .unwrap();
    }
    let db = open();
    let st = db.purge_status(1).unwrap();
    assert_eq!(st[0].state, DeliveryState::Applied);
    assert_eq!(db.purge_status(2).unwrap()[0].state, DeliveryState::Pending);
    let pending: Vec<u64> = db
        .pending_purges("fra-edge-1")
        .unwrap()
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(pending, vec![2]);
    drop(db);
    // Opening again (the column now exists) changes nothing.
    assert_eq!(open().pending_purges("fra-edge-1").unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn users_are_unique_and_sessions_expire() {
    on_both("sessions", |open| {
        let a = open();
        let b = open();
        let shop = a
            .create_user("shopuser", "a long password", Role::Customer, Some("shop"))
            .unwrap();
        match b.create_user("shopuser", "another one", Role::Admin, None) {
            Err(BackendError::Duplicate(name)) => assert_eq!(name, "shopuser"),
            r => panic!("expected Duplicate, got {r:?}"),
        }
        assert_eq!(b.users().unwrap().len(), 1);
        assert!(b.verify_login("shopuser", "wrong").unwrap().is_none());
        assert!(
            b.verify_login("nobody", "a long password")
                .unwrap()
                .is_none()
        );
        let who = b
            .verify_login("shopuser", "a long password")
            .unwrap()
            .unwrap();
        assert_eq!((who.id, who.customer.as_deref()), (shop.id, Some("shop")));

        let s = a
            .create_session(shop.id, SessionKind::Cookie, t(0), 60)
            .unwrap();
        let live = b.session(&s.token, t(59)).unwrap().expect("live session");
        assert_eq!(live.user.username, "shopuser");
        assert_eq!(live.csrf, s.csrf);
        assert_eq!(live.kind, SessionKind::Cookie);
        assert!(b.session(&s.token, t(60)).unwrap().is_none(), "expired");
        assert!(b.session("not-a-token", t(1)).unwrap().is_none());
        let bearer = a
            .create_session(shop.id, SessionKind::Bearer, t(0), 3600)
            .unwrap();
        assert_eq!(
            b.session(&bearer.token, t(1)).unwrap().unwrap().kind,
            SessionKind::Bearer
        );
        b.delete_session(&bearer.token).unwrap();
        assert!(
            a.session(&bearer.token, t(1)).unwrap().is_none(),
            "logged out"
        );
    });
}
