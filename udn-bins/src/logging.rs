//! The shared logging API: a rotating JSON-Lines file writer implementing
//! [`udn_core::log::LogSink`].
//!
//! A file is written as `<role>-<instance>-<opened_ms>-<seq>.jsonl.open`; when the
//! [`RotationPolicy`] says it is complete (by size on a write, or by age on
//! [`FileLog::tick`] or the next write), it is flushed, `fsync`ed and renamed to
//! `….jsonl`. Only `.jsonl` files are complete; the distributor ships nothing else.

use anyhow::Context as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use udn_core::Timestamp;
use udn_core::log::{FORMAT_VERSION, FileHeader, LogRecord, LogSink, MAGIC, Role, RotationPolicy};

pub use udn_store::now;

/// Completes a file left open by a crash: cuts a half-written last line (so the file
/// validates and its complete records are kept), then syncs and renames it. A file with
/// no complete record line is removed.
fn recover_leftover(path: &Path) -> std::io::Result<()> {
    let data = std::fs::read(path)?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let header_end = data.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
    if keep <= header_end {
        // Nothing but (part of) a header: no record to save.
        return std::fs::remove_file(path);
    }
    if keep < data.len() {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(keep as u64)?;
        f.sync_all()?;
        tracing::warn!(
            file = %path.display(),
            cut = data.len() - keep,
            "cut a half-written line from a log file left open by a crash"
        );
    } else {
        File::open(path)?.sync_all()?;
    }
    let done = PathBuf::from(path.to_string_lossy().trim_end_matches(".open"));
    std::fs::rename(path, &done)
}

/// Makes renames in `dir` durable (best effort: not every file system supports it).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

struct Open {
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    opened_at: Timestamp,
}

struct Inner {
    seq: u64,
    open: Option<Open>,
    errors: u64,
}

/// A rotating log writer for one role instance.
pub struct FileLog {
    dir: PathBuf,
    role: Role,
    instance: String,
    policy: RotationPolicy,
    inner: Mutex<Inner>,
}

/// The suffix of a file still being written.
pub const OPEN_SUFFIX: &str = ".jsonl.open";
/// The suffix of a complete file.
pub const DONE_SUFFIX: &str = ".jsonl";

impl FileLog {
    /// A writer into `dir` (created if missing). Leftover `.open` files of an earlier
    /// run of the same instance are completed first, so nothing written before a crash
    /// is lost.
    pub fn new(
        dir: &Path,
        role: Role,
        instance: &str,
        policy: RotationPolicy,
    ) -> anyhow::Result<FileLog> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating log directory {}", dir.display()))?;
        let prefix = format!("{}-{}-", role.as_str(), instance);
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(&prefix) && name.ends_with(OPEN_SUFFIX) {
                recover_leftover(&path)
                    .with_context(|| format!("completing leftover {}", path.display()))?;
            }
        }
        sync_dir(dir);
        Ok(FileLog {
            dir: dir.to_owned(),
            role,
            instance: instance.to_owned(),
            policy,
            inner: Mutex::new(Inner {
                seq: 0,
                open: None,
                errors: 0,
            }),
        })
    }

    fn open_file(&self, inner: &mut Inner, now: Timestamp) -> std::io::Result<Open> {
        inner.seq += 1;
        let file_id = format!(
            "{}-{}-{}-{}",
            self.role.as_str(),
            self.instance,
            now.as_millis(),
            inner.seq
        );
        let path = self.dir.join(format!("{file_id}{OPEN_SUFFIX}"));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        let header = FileHeader {
            magic: MAGIC.into(),
            version: FORMAT_VERSION,
            file_id,
            role: self.role,
            instance: self.instance.clone(),
            opened_at: now,
        };
        let line = serde_json::to_string(&header)?;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        Ok(Open {
            path,
            out,
            bytes: line.len() as u64 + 1,
            opened_at: now,
        })
    }

    fn complete(open: Open) -> std::io::Result<PathBuf> {
        let file = open.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let done = PathBuf::from(open.path.to_string_lossy().trim_end_matches(".open"));
        std::fs::rename(&open.path, &done)?;
        if let Some(dir) = done.parent() {
            sync_dir(dir);
        }
        Ok(done)
    }

    /// Appends a record at `now`, rotating first if the open file is complete by age.
    pub fn write_at(&self, rec: &LogRecord, now: Timestamp) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = &inner.open
            && self.policy.is_complete(o.bytes, o.opened_at, now)
        {
            let o = inner.open.take().expect("checked above");
            Self::complete(o)?;
        }
        if inner.open.is_none() {
            let o = self.open_file(&mut inner, now)?;
            inner.open = Some(o);
        }
        let o = inner.open.as_mut().expect("opened above");
        let line = serde_json::to_string(rec)?;
        o.out.write_all(line.as_bytes())?;
        o.out.write_all(b"\n")?;
        o.bytes += line.len() as u64 + 1;
        if o.bytes >= self.policy.max_bytes {
            let o = inner.open.take().expect("present");
            Self::complete(o)?;
        }
        Ok(())
    }

    /// Completes the open file if it is complete by age at `now` (call periodically).
    /// Returns the completed file's path.
    pub fn tick(&self, now: Timestamp) -> std::io::Result<Option<PathBuf>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &inner.open {
            Some(o) if self.policy.is_complete(o.bytes, o.opened_at, now) => {
                let o = inner.open.take().expect("checked above");
                Self::complete(o).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Completes the open file now, whatever its size or age (at shutdown).
    pub fn flush_complete(&self) -> std::io::Result<Option<PathBuf>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.open.take() {
            Some(o) => Self::complete(o).map(Some),
            None => Ok(None),
        }
    }

    /// Write errors so far (records that could not be written).
    pub fn errors(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).errors
    }
}

/// Completes `log`'s open file by age even when no record arrives: calls
/// [`FileLog::tick`] every `every` until the task is aborted. Roles start one next to
/// their writer.
pub fn spawn_ticker(
    log: std::sync::Arc<FileLog>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            let l = log.clone();
            let r = tokio::task::spawn_blocking(move || l.tick(now())).await;
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "completing a log file failed");
            }
        }
    })
}

/// The default interval of the roles' operational records (`--ops-interval-secs`).
pub const OPS_INTERVAL_SECS: u64 = 60;

/// Writes the role's operational statistics into its own log every `every`: each tick
/// samples `metrics()` (the OpenMetrics text of the role's registry) and records what
/// changed as an [`udn_core::log::OpsRecord`] ([`udn_core::ops::Sampler`]). Runs until
/// aborted; the sampling runs off the async threads.
pub fn spawn_ops<F>(
    log: std::sync::Arc<dyn LogSink>,
    every: std::time::Duration,
    metrics: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let metrics = std::sync::Arc::new(metrics);
    tokio::spawn(async move {
        let sampler = std::sync::Arc::new(std::sync::Mutex::new(udn_core::ops::Sampler::default()));
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: the baseline (counts since the start).
        loop {
            t.tick().await;
            let (m, s, l) = (metrics.clone(), sampler.clone(), log.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let text = m();
                let rec = s
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sample(now(), &text);
                if !rec.metrics.is_empty() {
                    l.record(LogRecord::Ops(rec));
                }
            })
            .await;
        }
    })
}

impl LogSink for FileLog {
    fn record(&self, rec: LogRecord) {
        if let Err(e) = self.write_at(&rec, now()) {
            self.inner.lock().unwrap_or_else(|e| e.into_inner()).errors += 1;
            tracing::error!(error = %e, dir = %self.dir.display(), "log write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use udn_core::log::ProbeRecord;

    fn rec(ts: u64) -> LogRecord {
        LogRecord::Probe(ProbeRecord {
            ts: Timestamp::from_millis(ts),
            pop: "fra".into(),
            kind: "latency".into(),
            target: "192.0.2.0/24".into(),
            method: "tcp".into(),
            ok: true,
            value: 12.5,
            detail: String::new(),
        })
    }

    #[test]
    fn leftover_open_files_are_cut_to_their_last_complete_line() {
        let dir = std::env::temp_dir().join(format!("udn-logrecover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let policy = RotationPolicy {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        };
        let log = FileLog::new(&dir, Role::Probe, "t2", policy).unwrap();
        for i in 0..10 {
            log.write_at(&rec(i), Timestamp::from_millis(1_000 + i))
                .unwrap();
        }
        // A crash: the buffer reaches the disk with a half-written line, no rename.
        let open_path = {
            let mut inner = log.inner.lock().unwrap();
            let o = inner.open.take().unwrap();
            let path = o.path.clone();
            let mut f = o.out.into_inner().map_err(|e| e.into_error()).unwrap();
            f.write_all(b"{\"type\":\"probe\",\"ts\":12").unwrap();
            path
        };
        // A second leftover with only a partial header holds nothing worth keeping.
        let empty = dir.join(format!("probe-t2-5-9{OPEN_SUFFIX}"));
        std::fs::write(&empty, b"{\"magic\":\"udn-").unwrap();
        drop(log);

        FileLog::new(&dir, Role::Probe, "t2", policy).unwrap();
        assert!(!open_path.exists());
        assert!(!empty.exists());
        let done: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(done.len(), 1, "{done:?}");
        let text = std::fs::read_to_string(&done[0]).unwrap();
        assert!(text.ends_with('\n'));
        let mut records = 0;
        for l in text.lines().skip(1) {
            LogRecord::from_line(l).unwrap();
            records += 1;
        }
        assert_eq!(records, 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotates_by_size_and_age_and_keeps_every_record() {
        let dir = std::env::temp_dir().join(format!("udn-logtest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let policy = RotationPolicy {
            max_bytes: 2_000,
            max_age: Duration::from_secs(5),
        };
        let log = FileLog::new(&dir, Role::Probe, "t1", policy).unwrap();
        for i in 0..100 {
            log.write_at(&rec(i), Timestamp::from_millis(1_000 + i))
                .unwrap();
        }
        // Age: nothing open is older than 5 s yet.
        assert!(log.tick(Timestamp::from_millis(2_000)).unwrap().is_none());
        assert!(log.tick(Timestamp::from_millis(9_000)).unwrap().is_some());
        let mut total = 0;
        let mut files = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            assert!(p.to_string_lossy().ends_with(DONE_SUFFIX), "{p:?}");
            let text = std::fs::read_to_string(&p).unwrap();
            let mut lines = text.lines();
            let h: FileHeader = serde_json::from_str(lines.next().unwrap()).unwrap();
            assert_eq!(h.magic, MAGIC);
            for l in lines {
                LogRecord::from_line(l).unwrap();
                total += 1;
            }
            files += 1;
        }
        assert_eq!(total, 100);
        assert!(
            files > 1,
            "size rotation should have produced several files"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
