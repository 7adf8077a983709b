//! The two storage tiers: memory (moka, weighed by bytes) and disk (files that survive
//! a restart, bounded, least-recently-used eviction in O(1) per victim).
//!
//! # Disk layout
//!
//! ```text
//! <dir>/objects/<sha256(key) hex>.meta        metadata (JSON): the full key, the body
//!                                             file's name, status, headers, times,
//!                                             generation, length, Vary names
//! <dir>/objects/<sha256(key) hex>-<n>.body    the body, raw
//! <dir>/objects/tmp-*                         files being written (removed at start)
//! <dir>/lru.log                               last-use order: 32-byte key hashes,
//!                                             least recent first (compacted at start
//!                                             and when it outgrows the index)
//! ```
//!
//! A body file's name is unique (a sequence number), and only the metadata file names
//! it: writing an object writes and fsyncs the body, writes and fsyncs the metadata to
//! a temp file, then renames the metadata into place. That rename is the commit; a
//! crash before it leaves a body no metadata names, an orphan removed at the next start.
//! Every read checks that the metadata's key is the key asked for (a different key is
//! a miss, never another key's body) and that the body has the recorded length.

use crate::policy::StoredMeta;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use udn_core::Timestamp;

/// Where a stored body lives.
#[derive(Debug, Clone)]
pub enum BodyLoc {
    /// In memory.
    Memory(Bytes),
    /// In a disk-tier file.
    Disk(PathBuf),
}

/// A stored response.
#[derive(Debug, Clone)]
pub struct Object {
    /// The full key (primary key, newline, Vary secondary key).
    pub key: String,
    /// Status, headers and exchange times.
    pub meta: StoredMeta,
    /// Invalidation-tree generation when its fetch started.
    pub generation: u64,
    /// Body length in bytes.
    pub len: u64,
    /// The body.
    pub body: BodyLoc,
}

/// A key's file-name hash: SHA-256 of the full key.
pub type KeyHash = [u8; 32];

/// SHA-256 of the key: the disk file names (collision-resistant; the key itself is
/// stored in the metadata and compared on every read all the same).
pub fn file_hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(h: &KeyHash) -> String {
    udn_core::hex::encode(h)
}

fn unhex(s: &str) -> Option<KeyHash> {
    udn_core::hex::decode_array(s)
}

/// The metadata format's version.
const FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct DiskMeta {
    v: u32,
    key: String,
    /// The body file's name in `objects/`.
    body: String,
    status: u16,
    headers: Vec<(String, String)>,
    request_time: u64,
    response_time: u64,
    validated_at: u64,
    generation: u64,
    len: u64,
    /// The response's Vary header names (lower case), for the primary key.
    vary: Vec<String>,
}

impl DiskMeta {
    fn of(obj: &Object, body: &str) -> DiskMeta {
        DiskMeta {
            v: FORMAT,
            key: obj.key.clone(),
            body: body.to_string(),
            status: obj.meta.status.as_u16(),
            headers: headers_to_vec(&obj.meta.headers),
            request_time: obj.meta.request_time.as_millis(),
            response_time: obj.meta.response_time.as_millis(),
            validated_at: obj.meta.validated_at.as_millis(),
            generation: obj.generation,
            len: obj.len,
            vary: crate::policy::vary_names(&obj.meta.headers)
                .unwrap_or_default()
                .iter()
                .map(|n| n.as_str().to_string())
                .collect(),
        }
    }
}

fn headers_to_vec(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn vec_to_headers(v: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in v {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    h
}

fn primary_of(key: &str) -> &str {
    key.split_once('\n').map_or(key, |(p, _)| p)
}

const NIL: u32 = u32::MAX;

/// One stored object in the index: a node of the doubly linked last-use list.
struct Slot {
    hash: KeyHash,
    key: Box<str>,
    /// Body file name in `objects/`.
    body: Box<str>,
    /// Bytes charged against the budget: body plus metadata file.
    size: u64,
    generation: u64,
    prev: u32,
    next: u32,
}

/// The Vary names of a primary key and how many stored objects share it.
struct VaryRec {
    names: Arc<Vec<HeaderName>>,
    objects: u32,
}

/// The index: a hash map to slab slots linked in last-use order (`head` most recent,
/// `tail` least): lookup, touch, insert and evict are O(1).
struct Index {
    map: HashMap<KeyHash, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    used: u64,
    vary: HashMap<Box<str>, VaryRec>,
    /// Touches not yet appended to `lru.log`.
    touched: Vec<KeyHash>,
    /// Records in `lru.log`.
    log_records: u64,
}

/// At most this many touches wait for the flusher; more are dropped (the order on disk
/// then lags behind, nothing grows).
const MAX_PENDING_TOUCHES: usize = 1 << 16;

impl Index {
    fn new() -> Index {
        Index {
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            used: 0,
            vary: HashMap::new(),
            touched: Vec::new(),
            log_records: 0,
        }
    }

    fn find(&self, hash: &KeyHash, key: &str) -> Option<u32> {
        let i = *self.map.get(hash)?;
        (&*self.slots[i as usize].key == key).then_some(i)
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.slots[o as usize].prev = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        if self.touched.len() < MAX_PENDING_TOUCHES {
            self.touched.push(self.slots[i as usize].hash);
        }
    }

    fn insert(&mut self, mut slot: Slot, names: Arc<Vec<HeaderName>>) -> u32 {
        let primary: Box<str> = primary_of(&slot.key).into();
        match self.vary.get_mut(&primary) {
            Some(v) => {
                v.names = names;
                v.objects += 1;
            }
            None => {
                self.vary.insert(primary, VaryRec { names, objects: 1 });
            }
        }
        self.used += slot.size;
        let hash = slot.hash;
        slot.prev = NIL;
        slot.next = NIL;
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.map.insert(hash, i);
        self.push_front(i);
        i
    }

    /// Takes a slot out of the index; returns its body file name.
    fn take(&mut self, i: u32) -> Box<str> {
        self.unlink(i);
        let s = &mut self.slots[i as usize];
        let body = std::mem::take(&mut s.body);
        let key = std::mem::take(&mut s.key);
        self.used -= s.size;
        let hash = s.hash;
        self.map.remove(&hash);
        self.free.push(i);
        let primary = primary_of(&key);
        if let Some(v) = self.vary.get_mut(primary) {
            v.objects -= 1;
            if v.objects == 0 {
                self.vary.remove(primary);
            }
        }
        body
    }
}

struct Inner {
    dir: PathBuf,
    objects: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    tmp_seq: AtomicU64,
    /// Objects evicted to make room.
    evictions: AtomicU64,
    /// Index entries examined to choose eviction victims (one per victim: no scan).
    evict_steps: AtomicU64,
    hash: fn(&str) -> KeyHash,
}

/// The disk tier (see the [module docs](self) for the layout).
pub struct DiskTier {
    inner: Arc<Inner>,
}

fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

impl DiskTier {
    /// Opens (creating) the directory, indexes the objects a previous run left in their
    /// last-use order, and removes orphans (temp files, bodies no metadata names,
    /// metadata that does not parse, names another key or whose body is missing or of
    /// another length) and files of the older format.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<DiskTier> {
        Self::open_with_hash(dir, max_bytes, file_hash)
    }

    /// [`open`](Self::open) with another file-name hash (tests force collisions).
    #[doc(hidden)]
    pub fn open_with_hash(
        dir: &Path,
        max_bytes: u64,
        hash: fn(&str) -> KeyHash,
    ) -> std::io::Result<DiskTier> {
        let objects = dir.join("objects");
        std::fs::create_dir_all(&objects)?;
        // Files of the older format (FNV-named, beside the journal) and its temp files.
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let old = name.starts_with("tmp-")
                || name
                    .strip_suffix(".meta")
                    .or_else(|| name.strip_suffix(".body"))
                    .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if old && path.is_file() {
                let _ = std::fs::remove_file(&path);
            }
        }
        let mut metas: Vec<(KeyHash, DiskMeta, u64)> = Vec::new();
        let mut bodies: HashSet<String> = HashSet::new();
        let mut max_seq = 0u64;
        for e in std::fs::read_dir(&objects)? {
            let path = e?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if let Some(h) = name.strip_suffix(".meta") {
                let parsed = std::fs::read(&path).ok().and_then(|b| {
                    let size = b.len() as u64;
                    serde_json::from_slice::<DiskMeta>(&b)
                        .ok()
                        .map(|m| (m, size))
                });
                let valid = parsed.filter(|(m, _)| {
                    m.v == FORMAT
                        && unhex(h).is_some_and(|h| h == hash(&m.key))
                        && m.body.starts_with(h)
                        && !m.body.contains('/')
                        && std::fs::metadata(objects.join(&m.body))
                            .is_ok_and(|md| md.is_file() && md.len() == m.len)
                });
                match (valid, unhex(h)) {
                    (Some((m, size)), Some(h)) => metas.push((h, m, size)),
                    _ => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            } else if let Some(b) = name.strip_suffix(".body") {
                if let Some(n) = b.rsplit_once('-').and_then(|(_, n)| n.parse::<u64>().ok()) {
                    max_seq = max_seq.max(n);
                }
                bodies.insert(name.to_string());
            } else {
                // Temp files and anything else that is not ours.
                let _ = std::fs::remove_file(&path);
            }
        }
        let referenced: HashSet<&str> = metas.iter().map(|(_, m, _)| m.body.as_str()).collect();
        for b in &bodies {
            if !referenced.contains(b.as_str()) {
                let _ = std::fs::remove_file(objects.join(b));
            }
        }
        // Oldest first, so that each insert at the front leaves the most recent at the
        // head; then the recorded last-use order on top.
        metas.sort_by_key(|(_, m, _)| m.response_time);
        let mut idx = Index::new();
        for (h, m, meta_size) in metas {
            let names = Arc::new(
                m.vary
                    .iter()
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                    .collect::<Vec<_>>(),
            );
            idx.insert(
                Slot {
                    hash: h,
                    key: m.key.into(),
                    body: m.body.into(),
                    size: m.len + meta_size,
                    generation: m.generation,
                    prev: NIL,
                    next: NIL,
                },
                names,
            );
        }
        if let Ok(log) = std::fs::read(dir.join("lru.log")) {
            for rec in log.chunks_exact(32) {
                let mut h = [0u8; 32];
                h.copy_from_slice(rec);
                if let Some(&i) = idx.map.get(&h)
                    && idx.head != i
                {
                    idx.unlink(i);
                    idx.push_front(i);
                }
            }
        }
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            objects,
            max_bytes,
            index: Mutex::new(idx),
            tmp_seq: AtomicU64::new(max_seq + 1),
            evictions: AtomicU64::new(0),
            evict_steps: AtomicU64::new(0),
            hash,
        });
        {
            // A smaller budget than the last run's: evict down to it.
            let mut idx = inner.lock();
            inner.make_room(&mut idx, 0);
        }
        inner.compact_lru()?;
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("udn-disk-lru".into())
            .spawn(move || flusher(weak))?;
        Ok(DiskTier { inner })
    }

    /// Bytes stored (bodies and their metadata files).
    pub fn used(&self) -> u64 {
        self.inner.lock().used
    }

    /// The size limit.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Objects stored.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is stored.
    pub fn contains(&self, key: &str) -> bool {
        let h = (self.inner.hash)(key);
        self.inner.lock().find(&h, key).is_some()
    }

    /// Whether `key` is stored, marking it used (a memory-tier hit whose body is in
    /// this tier).
    pub fn touch(&self, key: &str) -> bool {
        let h = (self.inner.hash)(key);
        let mut idx = self.inner.lock();
        match idx.find(&h, key) {
            Some(i) => {
                idx.touch(i);
                true
            }
            None => false,
        }
    }

    /// The Vary names last stored for a primary key (empty: the response had none).
    pub fn vary(&self, primary: &str) -> Option<Arc<Vec<HeaderName>>> {
        self.inner.lock().vary.get(primary).map(|v| v.names.clone())
    }

    /// The Vary names of every primary key stored (to seed the memory map at start).
    pub fn vary_names(&self) -> Vec<(String, Arc<Vec<HeaderName>>)> {
        self.inner
            .lock()
            .vary
            .iter()
            .map(|(p, v)| (p.to_string(), v.names.clone()))
            .collect()
    }

    /// The lowest and highest invalidation generations of the objects stored (`None`
    /// when empty). O(objects): for the start.
    pub fn generation_range(&self) -> Option<(u64, u64)> {
        let idx = self.inner.lock();
        let mut it = idx.map.values().map(|&i| idx.slots[i as usize].generation);
        let first = it.next()?;
        Some(it.fold((first, first), |(lo, hi), g| (lo.min(g), hi.max(g))))
    }

    /// Objects evicted to make room, and the index entries examined to choose them.
    pub fn eviction_counts(&self) -> (u64, u64) {
        (
            self.inner.evictions.load(Ordering::Relaxed),
            self.inner.evict_steps.load(Ordering::Relaxed),
        )
    }

    /// A fresh temp file path for a body being filled.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.inner.objects.join(format!("tmp-{n}.body"))
    }

    /// Loads an object's metadata (its body stays on disk) and marks it used. A
    /// metadata file that does not parse, names another key or another body, or whose
    /// body has another length is a miss, and the entry is dropped.
    pub fn get(&self, key: &str) -> Option<Object> {
        let h = (self.inner.hash)(key);
        let body = {
            let mut idx = self.inner.lock();
            let i = idx.find(&h, key)?;
            idx.touch(i);
            idx.slots[i as usize].body.clone()
        };
        let meta_path = self.inner.objects.join(format!("{}.meta", hex(&h)));
        let body_path = self.inner.objects.join(&*body);
        let m = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<DiskMeta>(&b).ok())
            .filter(|m| m.v == FORMAT && m.key == key && *m.body == *body)
            .filter(|m| std::fs::metadata(&body_path).is_ok_and(|md| md.len() == m.len));
        let Some(m) = m else {
            tracing::warn!(key, "disk tier: metadata does not match its key; dropped");
            self.remove_body(&h, key, &body);
            return None;
        };
        Some(Object {
            key: m.key,
            meta: StoredMeta {
                status: StatusCode::from_u16(m.status).ok()?,
                headers: vec_to_headers(&m.headers),
                request_time: Timestamp::from_millis(m.request_time),
                response_time: Timestamp::from_millis(m.response_time),
                validated_at: Timestamp::from_millis(m.validated_at),
            },
            generation: m.generation,
            len: m.len,
            body: BodyLoc::Disk(body_path),
        })
    }

    /// Stores an object whose body is in `body_file` (moved into place) or in memory.
    /// Evicts least-recently-used objects to stay within the limit. Returns the stored
    /// object (body on disk), or `None` if it is larger than the whole tier.
    pub fn put(&self, obj: &Object, body_file: Option<&Path>) -> std::io::Result<Option<Object>> {
        let inner = &*self.inner;
        let drop_temp = || {
            if let Some(f) = body_file {
                let _ = std::fs::remove_file(f);
            }
        };
        let h = (inner.hash)(&obj.key);
        let hx = hex(&h);
        let seq = inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let body_name = format!("{hx}-{seq}.body");
        let dest = inner.objects.join(&body_name);
        let meta = match serde_json::to_vec(&DiskMeta::of(obj, &body_name)) {
            Ok(m) => m,
            Err(e) => {
                drop_temp();
                return Err(std::io::Error::other(e));
            }
        };
        let size = obj.len + meta.len() as u64;
        if size > inner.max_bytes {
            drop_temp();
            return Ok(None);
        }
        // Everything durable before the commit (the metadata rename).
        let body_tmp = match (body_file, &obj.body) {
            (Some(f), _) => {
                if let Err(e) = sync_file(f) {
                    drop_temp();
                    return Err(e);
                }
                f.to_owned()
            }
            (None, BodyLoc::Memory(b)) => {
                let tmp = self.temp_path();
                if let Err(e) = write_synced(&tmp, b) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                tmp
            }
            (None, BodyLoc::Disk(p)) => {
                let tmp = self.temp_path();
                let res = std::fs::copy(p, &tmp).and_then(|_| sync_file(&tmp));
                if let Err(e) = res {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                tmp
            }
        };
        let meta_tmp = self.temp_path();
        if let Err(e) = write_synced(&meta_tmp, &meta) {
            let _ = std::fs::remove_file(&meta_tmp);
            let _ = std::fs::remove_file(&body_tmp);
            return Err(e);
        }
        let names = Arc::new(crate::policy::vary_names(&obj.meta.headers).unwrap_or_default());
        let mut idx = inner.lock();
        // The same file name: this key's older version, or another key's (a collision):
        // replaced either way; the other key becomes a miss.
        if let Some(&i) = idx.map.get(&h) {
            let old = idx.take(i);
            let _ = std::fs::remove_file(inner.objects.join(&*old));
        }
        inner.make_room(&mut idx, size);
        let res = std::fs::rename(&body_tmp, &dest)
            .and_then(|_| std::fs::rename(&meta_tmp, inner.objects.join(format!("{hx}.meta"))));
        if let Err(e) = res {
            drop(idx);
            let _ = std::fs::remove_file(&body_tmp);
            let _ = std::fs::remove_file(&dest);
            let _ = std::fs::remove_file(&meta_tmp);
            return Err(e);
        }
        let i = idx.insert(
            Slot {
                hash: h,
                key: obj.key.as_str().into(),
                body: body_name.into(),
                size,
                generation: obj.generation,
                prev: NIL,
                next: NIL,
            },
            names,
        );
        idx.touch(i);
        Ok(Some(Object {
            body: BodyLoc::Disk(dest),
            ..obj.clone()
        }))
    }

    /// Rewrites the metadata of a stored object (after a 304).
    pub fn update_meta(&self, obj: &Object) {
        let inner = &*self.inner;
        let h = (inner.hash)(&obj.key);
        let body = {
            let idx = inner.lock();
            let Some(i) = idx.find(&h, &obj.key) else {
                return;
            };
            idx.slots[i as usize].body.clone()
        };
        let Ok(meta) = serde_json::to_vec(&DiskMeta::of(obj, &body)) else {
            return;
        };
        let tmp = self.temp_path();
        if write_synced(&tmp, &meta).is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let mut idx = inner.lock();
        match idx.find(&h, &obj.key) {
            Some(i) if idx.slots[i as usize].body == body => {
                let size = obj.len + meta.len() as u64;
                let old = idx.slots[i as usize].size;
                if size > old {
                    // Charged before it is written: evict others for the difference.
                    idx.slots[i as usize].size = size;
                    idx.used += size - old;
                    idx.unlink(i);
                    inner.make_room(&mut idx, 0);
                    idx.push_front(i);
                } else {
                    idx.slots[i as usize].size = size;
                    idx.used -= old - size;
                }
                if std::fs::rename(&tmp, inner.objects.join(format!("{}.meta", hex(&h)))).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            _ => {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    /// Removes an object.
    pub fn remove(&self, key: &str) {
        let h = (self.inner.hash)(key);
        let mut idx = self.inner.lock();
        if let Some(i) = idx.find(&h, key) {
            let body = idx.take(i);
            self.inner.unlink_files(&h, &body);
        }
    }

    fn remove_body(&self, h: &KeyHash, key: &str, body: &str) {
        let mut idx = self.inner.lock();
        if let Some(i) = idx.find(h, key)
            && *idx.slots[i as usize].body == *body
        {
            let body = idx.take(i);
            self.inner.unlink_files(h, &body);
        }
    }

    /// Appends the touches since the last flush to `lru.log` (compacting it when it
    /// has grown past twice the index). The flusher thread does this every second.
    pub fn flush_lru(&self) -> std::io::Result<()> {
        self.inner.flush_lru()
    }

    /// Records in `lru.log`.
    pub fn lru_log_records(&self) -> u64 {
        self.inner.lock().log_records
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        let _ = self.inner.flush_lru();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unlink_files(&self, h: &KeyHash, body: &str) {
        let _ = std::fs::remove_file(self.objects.join(format!("{}.meta", hex(h))));
        let _ = std::fs::remove_file(self.objects.join(body));
    }

    /// Evicts from the tail until `need` more bytes fit: one index step per victim.
    fn make_room(&self, idx: &mut Index, need: u64) {
        while idx.used + need > self.max_bytes && idx.tail != NIL {
            self.evict_steps.fetch_add(1, Ordering::Relaxed);
            let victim = idx.tail;
            let h = idx.slots[victim as usize].hash;
            let body = idx.take(victim);
            self.unlink_files(&h, &body);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush_lru(&self) -> std::io::Result<()> {
        let (pending, records, len) = {
            let mut idx = self.lock();
            (
                std::mem::take(&mut idx.touched),
                idx.log_records,
                idx.map.len() as u64,
            )
        };
        if pending.is_empty() {
            return Ok(());
        }
        if records + pending.len() as u64 > 2 * len + 4096 {
            return self.compact_lru();
        }
        let mut buf = Vec::with_capacity(pending.len() * 32);
        for h in &pending {
            buf.extend_from_slice(h);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("lru.log"))?;
        f.write_all(&buf)?;
        self.lock().log_records += pending.len() as u64;
        Ok(())
    }

    /// Rewrites `lru.log` as the current order, least recent first.
    fn compact_lru(&self) -> std::io::Result<()> {
        let buf = {
            let mut idx = self.lock();
            idx.touched.clear();
            let mut buf = Vec::with_capacity(idx.map.len() * 32);
            let mut i = idx.tail;
            while i != NIL {
                let s = &idx.slots[i as usize];
                buf.extend_from_slice(&s.hash);
                i = s.prev;
            }
            idx.log_records = (buf.len() / 32) as u64;
            buf
        };
        let tmp = self.dir.join("lru.log.tmp");
        write_synced(&tmp, &buf)?;
        std::fs::rename(&tmp, self.dir.join("lru.log"))
    }
}

fn flusher(tier: Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(inner) = tier.upgrade() else {
            return;
        };
        if let Err(e) = inner.flush_lru() {
            tracing::warn!(error = %e, "disk tier: last-use log write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("udn-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn obj(key: &str, body: &[u8], headers: &[(&str, &str)]) -> Object {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Object {
            key: key.into(),
            meta: StoredMeta::new(
                StatusCode::OK,
                h,
                Timestamp::from_millis(1),
                Timestamp::from_millis(2),
            ),
            generation: 3,
            len: body.len() as u64,
            body: BodyLoc::Memory(Bytes::copy_from_slice(body)),
        }
    }

    fn body(o: &Object) -> Vec<u8> {
        match &o.body {
            BodyLoc::Disk(p) => std::fs::read(p).unwrap(),
            BodyLoc::Memory(b) => b.to_vec(),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("objects"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Every key hashes to the same file name.
    fn colliding(_: &str) -> KeyHash {
        [7; 32]
    }

    #[test]
    fn forced_collision_is_a_miss_never_the_other_body() {
        let d = tmp("collide");
        let t = DiskTier::open_with_hash(&d, 1 << 20, colliding).unwrap();
        t.put(&obj("http://h/a", b"body of a", &[]), None).unwrap();
        assert_eq!(body(&t.get("http://h/a").unwrap()), b"body of a");
        // b shares a's file name: asking for b is a miss, not a's body.
        assert!(t.get("http://h/b").is_none());
        assert!(!t.contains("http://h/b"));
        // Storing b replaces a (one file name); a is then a miss, not b's body.
        t.put(&obj("http://h/b", b"body of b", &[]), None).unwrap();
        assert!(t.get("http://h/a").is_none());
        assert_eq!(body(&t.get("http://h/b").unwrap()), b"body of b");
        assert_eq!(t.len(), 1);
        // After a restart, the same.
        drop(t);
        let t = DiskTier::open_with_hash(&d, 1 << 20, colliding).unwrap();
        assert!(t.get("http://h/a").is_none());
        assert_eq!(body(&t.get("http://h/b").unwrap()), b"body of b");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn mismatched_or_corrupt_metadata_is_a_miss() {
        let d = tmp("mismatch");
        let t = DiskTier::open(&d, 1 << 20).unwrap();
        t.put(&obj("http://h/a", b"body of a", &[]), None).unwrap();
        t.put(&obj("http://h/b", b"body of b", &[]), None).unwrap();
        let meta = |k: &str| {
            d.join("objects")
                .join(format!("{}.meta", hex(&file_hash(k))))
        };
        // b's metadata file now holds a's metadata (another key, another body).
        std::fs::copy(meta("http://h/a"), meta("http://h/b")).unwrap();
        assert!(t.get("http://h/b").is_none(), "a's body served for b");
        assert!(!t.contains("http://h/b"), "the mismatched entry stays");
        assert_eq!(body(&t.get("http://h/a").unwrap()), b"body of a");
        // Garbage metadata: a miss.
        std::fs::write(meta("http://h/a"), b"{not json").unwrap();
        assert!(t.get("http://h/a").is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn orphans_are_removed_at_start() {
        let d = tmp("orphans");
        let t = DiskTier::open(&d, 1 << 20).unwrap();
        t.put(&obj("http://h/a", b"body of a", &[]), None).unwrap();
        drop(t);
        let o = d.join("objects");
        let ha = hex(&file_hash("http://h/a"));
        let hz = hex(&file_hash("http://h/z"));
        std::fs::write(o.join("tmp-99.body"), b"half a fill").unwrap();
        std::fs::write(o.join(format!("{hz}-5.body")), b"a body no metadata names").unwrap();
        std::fs::write(o.join(format!("{ha}-77.body")), b"an older body of a").unwrap();
        std::fs::write(o.join(format!("{}.meta", hex(&[1; 32]))), b"{}").unwrap();
        // The older format, beside the journal.
        std::fs::write(d.join("0123456789abcdef.meta"), b"{}").unwrap();
        std::fs::write(d.join("0123456789abcdef.body"), b"x").unwrap();
        let t = DiskTier::open(&d, 1 << 20).unwrap();
        let left = files(&d);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&format!("{ha}.meta")), "{left:?}");
        assert!(!d.join("0123456789abcdef.meta").exists());
        assert_eq!(body(&t.get("http://h/a").unwrap()), b"body of a");
        // A body cut short (crash mid-write before the rename can't do this, a disk
        // error can): the object is dropped at start, both files removed.
        drop(t);
        let b = left.iter().find(|f| f.ends_with(".body")).unwrap();
        std::fs::write(o.join(b), b"body").unwrap();
        let t = DiskTier::open(&d, 1 << 20).unwrap();
        assert!(t.is_empty());
        assert!(files(&d).is_empty(), "{:?}", files(&d));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn eviction_is_lru_within_the_budget_and_kept_across_restarts() {
        let d = tmp("lru");
        let one = obj("http://h/0", &[b'x'; 1000], &[]);
        let meta_size =
            serde_json::to_vec(&DiskMeta::of(&one, &format!("{}-1000.body", hex(&[0; 32]))))
                .unwrap()
                .len() as u64;
        // Room for about five objects.
        let budget = 5 * (1000 + meta_size + 10);
        let t = DiskTier::open(&d, budget).unwrap();
        for i in 0..5 {
            t.put(&obj(&format!("http://h/{i}"), &[b'x'; 1000], &[]), None)
                .unwrap();
        }
        assert_eq!(t.len(), 5);
        // 0 is used, so 1 is the least recent.
        assert!(t.get("http://h/0").is_some());
        t.flush_lru().unwrap();
        drop(t);
        let t = DiskTier::open(&d, budget).unwrap();
        assert_eq!(t.len(), 5);
        t.put(&obj("http://h/5", &[b'x'; 1000], &[]), None).unwrap();
        assert!(t.used() <= budget, "{} > {budget}", t.used());
        assert!(
            t.contains("http://h/0"),
            "the recently used object was evicted"
        );
        assert!(
            !t.contains("http://h/1"),
            "the least recent object was kept"
        );
        assert_eq!(t.eviction_counts(), (1, 1));
        // Many more: the budget holds, and each victim cost one step.
        for i in 6..100 {
            t.put(&obj(&format!("http://h/{i}"), &[b'x'; 1000], &[]), None)
                .unwrap();
            assert!(t.used() <= budget);
        }
        let (evicted, steps) = t.eviction_counts();
        assert_eq!((evicted, steps), (95, 95));
        let on_disk: u64 = std::fs::read_dir(d.join("objects"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, t.used());
        assert!(on_disk <= budget);
        // Larger than the whole tier: not stored.
        assert!(
            t.put(&obj("http://h/huge", &vec![0; budget as usize], &[]), None)
                .unwrap()
                .is_none()
        );
        // A smaller budget at the next start: evicted down to it, least recent first.
        drop(t);
        let t = DiskTier::open(&d, budget / 2).unwrap();
        assert!(t.used() <= budget / 2);
        assert!(t.contains("http://h/99"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn vary_names_survive_a_restart() {
        let d = tmp("vary");
        let t = DiskTier::open(&d, 1 << 20).unwrap();
        let vary = [("vary", "Accept-Encoding")];
        t.put(
            &obj("http://h/v\naccept-encoding=gzip\n", b"gz", &vary),
            None,
        )
        .unwrap();
        t.put(&obj("http://h/v\naccept-encoding=br\n", b"br", &vary), None)
            .unwrap();
        t.put(&obj("http://h/plain", b"p", &[]), None).unwrap();
        drop(t);
        let t = DiskTier::open(&d, 1 << 20).unwrap();
        assert_eq!(
            t.vary("http://h/v").unwrap().as_slice(),
            &[http::header::ACCEPT_ENCODING]
        );
        assert!(t.vary("http://h/plain").unwrap().is_empty());
        assert_eq!(t.vary_names().len(), 2);
        // The names go with the last of their objects.
        t.remove("http://h/v\naccept-encoding=gzip\n");
        assert!(t.vary("http://h/v").is_some());
        t.remove("http://h/v\naccept-encoding=br\n");
        assert!(t.vary("http://h/v").is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn lru_log_is_compacted() {
        let d = tmp("lrulog");
        let t = DiskTier::open(&d, 1 << 20).unwrap();
        t.put(&obj("http://h/a", b"a", &[]), None).unwrap();
        for _ in 0..10_000 {
            t.touch("http://h/a");
            if t.inner.lock().touched.len() >= 1000 {
                t.flush_lru().unwrap();
            }
        }
        t.flush_lru().unwrap();
        // One object: the log is rewritten once it passes 2 * 1 + 4096 records.
        assert!(t.lru_log_records() <= 4098, "{}", t.lru_log_records());
        let size = std::fs::metadata(d.join("lru.log")).unwrap().len();
        assert!(size <= 4098 * 32, "{size}");
        drop(t);
        let t = DiskTier::open(&d, 1 << 20).unwrap();
        assert_eq!(t.lru_log_records(), 1, "compacted at start");
        assert_eq!(std::fs::metadata(d.join("lru.log")).unwrap().len(), 32);
        let _ = std::fs::remove_dir_all(&d);
    }
}
