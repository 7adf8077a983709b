//! The two storage tiers: memory (moka, weighed by bytes) and disk (files that survive
//! a restart, bounded, least-recently-used eviction).

use crate::policy::StoredMeta;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// FNV-1a, 64 bit: stable across builds, for disk file names.
pub fn file_hash(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[derive(Serialize, Deserialize)]
struct DiskMeta {
    key: String,
    status: u16,
    headers: Vec<(String, String)>,
    request_time: u64,
    response_time: u64,
    validated_at: u64,
    generation: u64,
    len: u64,
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

struct DiskEntry {
    len: u64,
    last_use: u64,
}

/// The disk tier: `<hash>.meta` (JSON) + `<hash>.body` per object in one directory.
pub struct DiskTier {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<HashMap<String, DiskEntry>>,
    used: AtomicU64,
    tick: AtomicU64,
    tmp_seq: AtomicU64,
}

impl DiskTier {
    /// Opens (creating) the directory and indexes the objects a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<DiskTier> {
        std::fs::create_dir_all(dir)?;
        let mut index = HashMap::new();
        let mut used = 0;
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(hash) = name.strip_suffix(".meta") else {
                continue;
            };
            let body = dir.join(format!("{hash}.body"));
            let ok = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<DiskMeta>(&b).ok())
                .filter(|m| {
                    std::fs::metadata(&body)
                        .map(|md| md.len() == m.len)
                        .unwrap_or(false)
                })
                .filter(|m| file_hash(&m.key) == hash);
            match ok {
                Some(m) => {
                    used += m.len;
                    index.insert(
                        m.key,
                        DiskEntry {
                            len: m.len,
                            last_use: 0,
                        },
                    );
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(&body);
                }
            }
        }
        Ok(DiskTier {
            dir: dir.to_owned(),
            max_bytes,
            index: Mutex::new(index),
            used: AtomicU64::new(used),
            tick: AtomicU64::new(1),
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// Bytes of bodies stored.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The size limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Objects stored.
    pub fn len(&self) -> usize {
        self.index.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether `key` is stored.
    pub fn contains(&self, key: &str) -> bool {
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fresh temp file path for a body being filled.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("tmp-{}-{n}.body", std::process::id()))
    }

    fn body_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.body", file_hash(key)))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.meta", file_hash(key)))
    }

    /// Loads an object's metadata (its body stays on disk).
    pub fn get(&self, key: &str) -> Option<Object> {
        {
            let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
            let e = idx.get_mut(key)?;
            e.last_use = self.tick.fetch_add(1, Ordering::Relaxed);
        }
        let bytes = std::fs::read(self.meta_path(key)).ok()?;
        let m: DiskMeta = serde_json::from_slice(&bytes).ok()?;
        if m.key != key {
            return None;
        }
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
            body: BodyLoc::Disk(self.body_path(key)),
        })
    }

    fn write_meta(&self, obj: &Object) -> std::io::Result<()> {
        let m = DiskMeta {
            key: obj.key.clone(),
            status: obj.meta.status.as_u16(),
            headers: headers_to_vec(&obj.meta.headers),
            request_time: obj.meta.request_time.as_millis(),
            response_time: obj.meta.response_time.as_millis(),
            validated_at: obj.meta.validated_at.as_millis(),
            generation: obj.generation,
            len: obj.len,
        };
        let tmp = self.temp_path();
        std::fs::write(&tmp, serde_json::to_vec(&m).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, self.meta_path(&obj.key))
    }

    /// Stores an object whose body is in `body_file` (moved into place) or in memory.
    /// Evicts least-recently-used objects to stay within the limit. Returns the stored
    /// object (body on disk), or `None` if it is larger than the whole tier.
    pub fn put(&self, obj: &Object, body_file: Option<&Path>) -> std::io::Result<Option<Object>> {
        if obj.len > self.max_bytes {
            if let Some(f) = body_file {
                let _ = std::fs::remove_file(f);
            }
            return Ok(None);
        }
        self.make_room(obj.len, &obj.key);
        let dest = self.body_path(&obj.key);
        match (body_file, &obj.body) {
            (Some(f), _) => std::fs::rename(f, &dest)?,
            (None, BodyLoc::Memory(b)) => {
                let tmp = self.temp_path();
                std::fs::write(&tmp, b)?;
                std::fs::rename(&tmp, &dest)?;
            }
            (None, BodyLoc::Disk(p)) if *p == dest => {}
            (None, BodyLoc::Disk(p)) => {
                std::fs::copy(p, &dest)?;
            }
        }
        let stored = Object {
            body: BodyLoc::Disk(dest),
            ..obj.clone()
        };
        self.write_meta(&stored)?;
        let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let last_use = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = idx.insert(
            obj.key.clone(),
            DiskEntry {
                len: obj.len,
                last_use,
            },
        ) {
            self.used.fetch_sub(old.len, Ordering::Relaxed);
        }
        self.used.fetch_add(obj.len, Ordering::Relaxed);
        Ok(Some(stored))
    }

    /// Rewrites the metadata of a stored object (after a 304).
    pub fn update_meta(&self, obj: &Object) {
        let present = self
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&obj.key);
        if present {
            let _ = self.write_meta(obj);
        }
    }

    fn make_room(&self, need: u64, keep: &str) {
        loop {
            if self.used() + need <= self.max_bytes {
                return;
            }
            let victim = {
                let idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
                idx.iter()
                    .filter(|(k, _)| k.as_str() != keep)
                    .min_by_key(|(_, e)| e.last_use)
                    .map(|(k, _)| k.clone())
            };
            match victim {
                Some(k) => self.remove(&k),
                None => return,
            }
        }
    }

    /// Removes an object.
    pub fn remove(&self, key: &str) {
        let old = self
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(e) = old {
            self.used.fetch_sub(e.len, Ordering::Relaxed);
            let _ = std::fs::remove_file(self.meta_path(key));
            let _ = std::fs::remove_file(self.body_path(key));
        }
    }
}
