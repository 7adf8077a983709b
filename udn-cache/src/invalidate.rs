//! The invalidation tree: purge one URL, a directory prefix or a whole domain in
//! O(path depth), effective for every later lookup at once.
//!
//! The tree is host -> path segments. Every node carries two generations: `tree` (the
//! last purge of the node's whole subtree) and `exact` (the last purge of exactly that
//! URL). A purge sets one of them to a new, strictly larger generation. A cached entry
//! remembers the tree's [`generation`](InvalidationTree::generation) when its fetch
//! started; it is valid only if no node on its path has a newer one. Entries are never
//! touched by a purge: a purge of a domain with a million objects costs the same as a
//! purge of one URL, and the objects are dropped lazily when looked up.
//!
//! Nodes exist only for purged paths: lookups walk at most the path's depth and stop
//! at the first missing child, without allocating.
//!
//! Purges carry the control plane's sequence numbers: [`InvalidationTree::apply`]
//! ignores one it has already seen, and [`InvalidationTree::since`] hands out the
//! purges after a sequence number so an edge that was down can catch up.
//!
//! # Examples
//!
//! ```
//! use udn_cache::invalidate::{InvalidationTree, Purge, Scope};
//! let mut tree = InvalidationTree::new();
//! let gen_a = tree.generation();
//! tree.apply(&Purge::parse("prefix", "http://www.shop.example/img/", 1).unwrap());
//! assert!(!tree.is_valid("http://www.shop.example/img/a.gif", gen_a));
//! assert!(tree.is_valid("http://www.shop.example/css/site.css", gen_a));
//! // An entry stored after the purge is valid.
//! assert!(tree.is_valid("http://www.shop.example/img/a.gif", tree.generation()));
//! assert_eq!(tree.since(0).unwrap().len(), 1);
//! ```

use crate::error::PurgeError;
use crate::route::key_parts;
use std::collections::{BTreeMap, HashMap};

/// What a purge covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Exactly one URL (every query string of its path).
    Url,
    /// A directory: every URL under the path.
    Prefix,
    /// Every URL of the host.
    Domain,
}

impl Scope {
    /// The wire name: `url`, `prefix`, `domain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Url => "url",
            Scope::Prefix => "prefix",
            Scope::Domain => "domain",
        }
    }
}

/// One purge, as received from the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// What it covers.
    pub scope: Scope,
    /// The URL (`http://host/path`), host canonical.
    pub target: String,
    /// The control plane's sequence number.
    pub seq: u64,
}

impl Purge {
    /// Parses the wire form (`{"scope":"url","target":"http://h/p","seq":N}`) with
    /// [`crate::target::parse_purge_target`], the parser the control plane runs too.
    pub fn parse(scope: &str, target: &str, seq: u64) -> Result<Purge, PurgeError> {
        let t = crate::target::parse_purge_target(scope, target)?;
        Ok(Purge {
            scope: t.scope,
            target: t.target,
            seq,
        })
    }
}

#[derive(Debug, Default)]
struct Node {
    tree: u64,
    exact: u64,
    children: HashMap<Box<str>, Node>,
}

/// One node of an exported tree: its host, path segments and generations.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeState {
    /// The host (lower case).
    pub host: String,
    /// The path segments below the host.
    pub path: Vec<String>,
    /// The generation of the last purge of the subtree (0: none kept).
    pub tree: u64,
    /// The generation of the last purge of exactly this URL (0: none kept).
    pub exact: u64,
}

/// One purge of the catch-up log, in its wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(serde::Serialize, serde::Deserialize))]
pub struct LogEntry {
    /// The control plane's sequence number.
    pub seq: u64,
    /// `url`, `prefix` or `domain`.
    pub scope: String,
    /// The URL.
    pub target: String,
}

/// An invalidation tree's state ([`InvalidationTree::export`]), what a purge-journal
/// snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "server", derive(serde::Serialize, serde::Deserialize))]
pub struct TreeState {
    /// The tree's generation.
    pub generation: u64,
    /// Sequence numbers at or below this were dropped from the catch-up log.
    pub forgotten_upto: u64,
    /// The nodes with a generation kept.
    pub nodes: Vec<NodeState>,
    /// The catch-up log.
    pub log: Vec<LogEntry>,
}

/// Whether [`InvalidationTree::apply`] took a purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied; the tree's generation is now this.
    New(u64),
    /// A purge with this sequence number was applied before.
    Duplicate,
}

/// The invalidation tree (see the [module docs](self)).
#[derive(Debug)]
pub struct InvalidationTree {
    hosts: HashMap<Box<str>, Node>,
    generation: u64,
    log: BTreeMap<u64, Purge>,
    max_log: usize,
    /// Sequence numbers at or below this were dropped from the log.
    forgotten_upto: u64,
}

impl Default for InvalidationTree {
    fn default() -> Self {
        Self::new()
    }
}

impl InvalidationTree {
    /// An empty tree remembering the last 100,000 purges for catch-up.
    pub fn new() -> InvalidationTree {
        Self::with_log_capacity(100_000)
    }

    /// An empty tree remembering the last `max_log` purges for catch-up.
    pub fn with_log_capacity(max_log: usize) -> InvalidationTree {
        InvalidationTree {
            hosts: HashMap::new(),
            generation: 1,
            log: BTreeMap::new(),
            max_log: max_log.max(1),
            forgotten_upto: 0,
        }
    }

    /// The current generation: stamp an entry with it when its fetch starts.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The highest sequence number applied (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.log
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.forgotten_upto)
    }

    /// Applies a purge in O(path depth).
    pub fn apply(&mut self, p: &Purge) -> Applied {
        if p.seq != 0 && (self.log.contains_key(&p.seq) || p.seq <= self.forgotten_upto) {
            return Applied::Duplicate;
        }
        let g = self.bump(p.scope, &p.target);
        if p.seq != 0 {
            self.log.insert(p.seq, p.clone());
            while self.log.len() > self.max_log {
                if let Some((s, _)) = self.log.pop_first() {
                    self.forgotten_upto = s;
                }
            }
        }
        Applied::New(g)
    }

    /// Purges without a sequence number (local use); returns the new generation.
    pub fn purge(&mut self, scope: Scope, url: &str) -> u64 {
        self.bump(scope, url)
    }

    /// Re-applies a purge recorded earlier with the generation it had then (an edge
    /// restoring its tree from its own purge journal at start, so entries of its disk
    /// tier keep their stamps). Returns the tree's generation afterwards.
    pub fn restore(&mut self, p: &Purge, generation: u64) -> u64 {
        self.generation = self.generation.max(generation);
        self.set(p.scope, &p.target, generation);
        if p.seq != 0 {
            self.log.insert(p.seq, p.clone());
        }
        self.generation
    }

    /// Raises the generation to at least `g` (an edge whose disk tier holds objects
    /// stamped up to `g`: a later purge must get a larger generation than theirs).
    pub fn raise_generation(&mut self, g: u64) {
        self.generation = self.generation.max(g);
    }

    /// The tree's state, for a snapshot: the generation, the catch-up log, and every
    /// node with a generation above `floor`. Nodes at or below `floor` are left out:
    /// when no entry older than `floor` exists (an edge at start, whose disk tier's
    /// oldest object has generation `floor`), they invalidate nothing. `floor` 0 keeps
    /// every node.
    pub fn export(&self, floor: u64) -> TreeState {
        fn walk(
            n: &Node,
            host: &str,
            path: &mut Vec<String>,
            floor: u64,
            out: &mut Vec<NodeState>,
        ) {
            let tree = if n.tree > floor { n.tree } else { 0 };
            let exact = if n.exact > floor { n.exact } else { 0 };
            if tree != 0 || exact != 0 {
                out.push(NodeState {
                    host: host.to_string(),
                    path: path.clone(),
                    tree,
                    exact,
                });
            }
            for (s, c) in &n.children {
                path.push(s.to_string());
                walk(c, host, path, floor, out);
                path.pop();
            }
        }
        let mut nodes = Vec::new();
        for (h, n) in &self.hosts {
            walk(n, h, &mut Vec::new(), floor, &mut nodes);
        }
        TreeState {
            generation: self.generation,
            forgotten_upto: self.forgotten_upto,
            nodes,
            log: self
                .log
                .values()
                .map(|p| LogEntry {
                    seq: p.seq,
                    scope: p.scope.as_str().to_string(),
                    target: p.target.clone(),
                })
                .collect(),
        }
    }

    /// Merges a snapshot made by [`export`](Self::export) into the tree (generations
    /// are maxima: importing twice, or over the same purges replayed, changes nothing).
    pub fn import(&mut self, s: &TreeState) {
        self.generation = self.generation.max(s.generation);
        self.forgotten_upto = self.forgotten_upto.max(s.forgotten_upto);
        for n in &s.nodes {
            let mut node = self
                .hosts
                .entry(n.host.to_ascii_lowercase().into())
                .or_default();
            for seg in &n.path {
                node = node.children.entry(seg.as_str().into()).or_default();
            }
            node.tree = node.tree.max(n.tree);
            node.exact = node.exact.max(n.exact);
        }
        for e in &s.log {
            if e.seq > self.forgotten_upto
                && let Ok(p) = Purge::parse(&e.scope, &e.target, e.seq)
            {
                self.log.insert(e.seq, p);
            }
        }
        while self.log.len() > self.max_log {
            if let Some((s, _)) = self.log.pop_first() {
                self.forgotten_upto = s;
            }
        }
    }

    /// Nodes in the tree (each purged path and the segments leading to it).
    pub fn node_count(&self) -> usize {
        fn count(n: &Node) -> usize {
            1 + n.children.values().map(count).sum::<usize>()
        }
        self.hosts.values().map(count).sum()
    }

    fn bump(&mut self, scope: Scope, url: &str) -> u64 {
        self.generation += 1;
        let g = self.generation;
        self.set(scope, url, g);
        g
    }

    fn set(&mut self, scope: Scope, url: &str, g: u64) {
        let Some((host, segs)) = key_parts(url) else {
            return;
        };
        let mut node = self
            .hosts
            .entry(host.to_ascii_lowercase().into())
            .or_default();
        if scope == Scope::Domain {
            node.tree = node.tree.max(g);
            return;
        }
        for s in segs {
            node = node.children.entry(s.into()).or_default();
        }
        match scope {
            Scope::Url => node.exact = node.exact.max(g),
            _ => node.tree = node.tree.max(g),
        }
    }

    /// Whether an entry for `key` stamped with generation `entry_gen` is still valid.
    /// O(path depth), no allocation.
    pub fn is_valid(&self, key: &str, entry_gen: u64) -> bool {
        let Some((host, segs)) = key_parts(key) else {
            return true;
        };
        let node = match self.hosts.get(host) {
            Some(n) => n,
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                match self.hosts.get(host.to_ascii_lowercase().as_str()) {
                    Some(n) => n,
                    None => return true,
                }
            }
            None => return true,
        };
        let mut node = node;
        if node.tree > entry_gen {
            return false;
        }
        let mut segs = segs.peekable();
        if segs.peek().is_none() {
            return node.exact <= entry_gen;
        }
        while let Some(s) = segs.next() {
            match node.children.get(s) {
                Some(n) => node = n,
                None => return true,
            }
            if node.tree > entry_gen {
                return false;
            }
            if segs.peek().is_none() {
                return node.exact <= entry_gen;
            }
        }
        true
    }

    /// The purges applied after sequence number `seq`, in order; `None` if some of
    /// them were already forgotten (the caller should then purge every domain).
    pub fn since(&self, seq: u64) -> Option<Vec<&Purge>> {
        if seq < self.forgotten_upto {
            return None;
        }
        Some(
            self.log
                .range(seq.saturating_add(1)..)
                .map(|(_, p)| p)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let mut t = InvalidationTree::new();
        let g = t.generation();
        t.purge(Scope::Url, "http://h.example/a/b.gif");
        assert!(!t.is_valid("http://h.example/a/b.gif", g));
        assert!(!t.is_valid("http://h.example/a/b.gif?v=2", g));
        assert!(t.is_valid("http://h.example/a/b.gif/c", g));
        assert!(t.is_valid("http://h.example/a/c.gif", g));
        assert!(t.is_valid("http://h.example/a", g));
        t.purge(Scope::Prefix, "http://h.example/x/");
        assert!(!t.is_valid("http://h.example/x/y/z", g));
        assert!(t.is_valid("http://h.example/xx", g));
        assert!(t.is_valid("http://other.example/x/y", g));
        t.purge(Scope::Domain, "http://other.example/");
        assert!(!t.is_valid("http://other.example/q", g));
        assert!(!t.is_valid("http://OTHER.example/", g));
        assert!(t.is_valid("http://other.example/q", t.generation()));
    }

    #[test]
    fn sequence_numbers() {
        let mut t = InvalidationTree::with_log_capacity(2);
        let p = |s| Purge::parse("url", "http://h.example/a", s).unwrap();
        assert!(matches!(t.apply(&p(1)), Applied::New(_)));
        assert_eq!(t.apply(&p(1)), Applied::Duplicate);
        t.apply(&p(2));
        t.apply(&p(3));
        assert_eq!(t.last_seq(), 3);
        assert_eq!(t.since(1).unwrap().len(), 2);
        assert!(t.since(0).is_none());
        assert_eq!(t.apply(&p(1)), Applied::Duplicate);
        assert!(Purge::parse("everything", "http://h/", 1).is_err());
        assert!(Purge::parse("url", "ftp://h/", 1).is_err());
        assert_eq!(
            Purge::parse("url", "https://H.example/A", 1)
                .unwrap()
                .target,
            "http://h.example/A"
        );
    }
}
