//! The purge journal of an edge with a disk tier: the invalidation tree survives a
//! restart, so an object stored before a purge is not revived by it.
//!
//! Two files beside the disk tier's objects:
//!
//! - `purges.snapshot.json`: the tree's state ([`TreeState`]: generation, catch-up
//!   log, the nodes that still invalidate something), written to a temp file, fsynced
//!   and renamed into place;
//! - `purges.jsonl`: the purges applied since that snapshot, one JSON line each,
//!   fsynced before the purge is acknowledged.
//!
//! At start the snapshot is loaded and the journal replayed over it (replaying is
//! idempotent: generations are maxima), then both are compacted into a new snapshot
//! and the journal truncated. The journal is also compacted whenever it passes
//! [`MAX_ENTRIES`] lines, so neither file grows without bound. A crash between writing
//! the snapshot and truncating the journal only replays purges the snapshot has.

use crate::invalidate::{InvalidationTree, Purge, TreeState};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Journal lines after which the journal is compacted into the snapshot.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct JournalLine {
    scope: String,
    target: String,
    seq: u64,
    generation: u64,
}

/// The purge journal (see the [module docs](self)).
pub struct PurgeJournal {
    log: PathBuf,
    snapshot: PathBuf,
    entries: usize,
    max_entries: usize,
    compactions: u64,
}

impl PurgeJournal {
    /// Loads the snapshot and replays the journal in `dir` into `tree`, raises the
    /// tree's generation to the disk tier's newest object and drops nodes no stored
    /// object is old enough to be invalidated by (`generations`: the disk tier's
    /// lowest and highest object generation), then compacts.
    pub fn open(
        dir: &Path,
        tree: &mut InvalidationTree,
        generations: Option<(u64, u64)>,
    ) -> std::io::Result<PurgeJournal> {
        Self::open_with(dir, tree, generations, MAX_ENTRIES)
    }

    /// [`open`](Self::open) compacting after `max_entries` lines.
    pub fn open_with(
        dir: &Path,
        tree: &mut InvalidationTree,
        generations: Option<(u64, u64)>,
        max_entries: usize,
    ) -> std::io::Result<PurgeJournal> {
        let mut j = PurgeJournal {
            log: dir.join("purges.jsonl"),
            snapshot: dir.join("purges.snapshot.json"),
            entries: 0,
            max_entries: max_entries.max(1),
            compactions: 0,
        };
        let mut loaded = InvalidationTree::new();
        match std::fs::read(&j.snapshot) {
            Ok(b) => match serde_json::from_slice::<TreeState>(&b) {
                Ok(s) => loaded.import(&s),
                Err(e) => {
                    // Unreadable (a disk error: it is only ever replaced by rename):
                    // kept for inspection. The purges it held are lost; objects stored
                    // before them may be served until they expire.
                    tracing::error!(error = %e, "purge snapshot unreadable; renamed .bad");
                    let _ = std::fs::rename(&j.snapshot, dir.join("purges.snapshot.json.bad"));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Ok(text) = std::fs::read_to_string(&j.log) {
            for line in text.lines() {
                if let Ok(l) = serde_json::from_str::<JournalLine>(line)
                    && let Ok(p) = Purge::parse(&l.scope, &l.target, l.seq)
                {
                    loaded.restore(&p, l.generation);
                }
            }
        }
        let (floor, newest) = match generations {
            Some((lo, hi)) => (lo, hi),
            // No stored object: no node invalidates anything.
            None => (u64::MAX, 0),
        };
        loaded.raise_generation(newest);
        // Only nodes that can still invalidate a stored object.
        let state = loaded.export(floor);
        tree.import(&state);
        j.compact(&tree.export(0))?;
        Ok(j)
    }

    /// Appends a purge applied with `generation` (fsynced); compacts when the journal
    /// has passed its limit (`state` gives the tree's state then).
    pub fn append(
        &mut self,
        p: &Purge,
        generation: u64,
        state: impl FnOnce() -> TreeState,
    ) -> std::io::Result<()> {
        let line = JournalLine {
            scope: p.scope.as_str().into(),
            target: p.target.clone(),
            seq: p.seq,
            generation,
        };
        let text = serde_json::to_string(&line).map_err(std::io::Error::other)? + "\n";
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        self.entries += 1;
        if self.entries >= self.max_entries {
            self.compact(&state())?;
        }
        Ok(())
    }

    /// Writes `state` as the snapshot and empties the journal.
    fn compact(&mut self, state: &TreeState) -> std::io::Result<()> {
        let tmp = self.snapshot.with_extension("json.tmp");
        let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.snapshot)?;
        std::fs::File::create(&self.log)?.sync_all()?;
        self.entries = 0;
        self.compactions += 1;
        Ok(())
    }

    /// Lines in the journal since the last compaction.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Compactions since open (the one at open included).
    pub fn compactions(&self) -> u64 {
        self.compactions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("udn-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn purge(tree: &mut InvalidationTree, j: &mut PurgeJournal, scope: &str, url: &str, seq: u64) {
        let p = Purge::parse(scope, url, seq).unwrap();
        if let crate::invalidate::Applied::New(g) = tree.apply(&p) {
            let snapshot = tree.export(0);
            j.append(&p, g, || snapshot).unwrap();
        }
    }

    #[test]
    fn purges_survive_restarts_and_compactions() {
        let d = tmp("restart");
        let mut tree = InvalidationTree::new();
        let mut j = PurgeJournal::open_with(&d, &mut tree, None, 3).unwrap();
        let stored = tree.generation(); // an object stored before the purges
        purge(&mut tree, &mut j, "url", "http://h.example/a/x.gif", 1);
        purge(&mut tree, &mut j, "prefix", "http://h.example/b/", 2);
        assert_eq!(j.entries(), 2);
        purge(&mut tree, &mut j, "domain", "http://other.example/", 3);
        assert_eq!(j.entries(), 0, "compacted at 3 lines");
        assert_eq!(std::fs::metadata(d.join("purges.jsonl")).unwrap().len(), 0);
        purge(&mut tree, &mut j, "url", "http://h.example/c", 4);
        assert_eq!(j.entries(), 1);
        drop(j);
        // Restart with an object of generation `stored` on disk.
        let newest = tree.generation();
        let mut t2 = InvalidationTree::new();
        let j = PurgeJournal::open_with(&d, &mut t2, Some((stored, stored)), 3).unwrap();
        assert_eq!(j.entries(), 0, "compacted at start");
        assert_eq!(std::fs::metadata(d.join("purges.jsonl")).unwrap().len(), 0);
        for (url, valid) in [
            ("http://h.example/a/x.gif", false),
            ("http://h.example/b/deep/y", false),
            ("http://other.example/z", false),
            ("http://h.example/c", false),
            ("http://h.example/a/other", true),
        ] {
            assert_eq!(t2.is_valid(url, stored), valid, "{url}");
        }
        assert_eq!(t2.generation(), newest);
        assert_eq!(t2.since(2).unwrap().len(), 2, "the catch-up log is kept");
        assert_eq!(t2.last_seq(), 4);
        drop(j);
        // Once more, from the snapshot alone.
        let mut t3 = InvalidationTree::new();
        let _j = PurgeJournal::open_with(&d, &mut t3, Some((stored, stored)), 3).unwrap();
        assert!(!t3.is_valid("http://h.example/b/q", stored));
        assert!(t3.is_valid("http://h.example/b/q", t3.generation()));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn nodes_no_stored_object_needs_are_dropped_at_start() {
        let d = tmp("floor");
        let mut tree = InvalidationTree::new();
        let mut j = PurgeJournal::open(&d, &mut tree, None).unwrap();
        for i in 0..100 {
            purge(
                &mut tree,
                &mut j,
                "url",
                &format!("http://h.example/old/{i}"),
                i + 1,
            );
        }
        let floor = tree.generation(); // the oldest object on disk is newer than these
        purge(&mut tree, &mut j, "url", "http://h.example/new", 101);
        drop(j);
        let mut t2 = InvalidationTree::new();
        let _j = PurgeJournal::open(&d, &mut t2, Some((floor, floor))).unwrap();
        assert!(t2.node_count() < 5, "{}", t2.node_count());
        assert!(!t2.is_valid("http://h.example/new", floor));
        assert!(t2.is_valid("http://h.example/old/3", floor));
        assert_eq!(t2.last_seq(), 101);
        // The generation never goes back below the newest object's.
        let mut t3 = InvalidationTree::new();
        let _j = PurgeJournal::open(&tmp("gen"), &mut t3, Some((5, 50))).unwrap();
        assert_eq!(t3.generation(), 50);
        let _ = std::fs::remove_dir_all(&d);
    }
}
