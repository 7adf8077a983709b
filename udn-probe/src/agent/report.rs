//! Reporting metrics to every DNS server: one bounded queue per server (the oldest
//! metric is dropped, and counted, when a server is down long enough to fill it), and
//! a sender task per server that posts batches with retries and exponential backoff.
//!
//! Contract: `POST /v1/metrics` with a JSON array of [`udn_core::Metric`]; the server
//! answers 200 `{"applied":N,"rejected":[{"index":i,"error":"..."}]}`.

use super::fetch::{FetchRequest, Resolver, fetch};
use crate::url::HttpUrl;
use bytes::Bytes;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use udn_core::Metric;

/// Counters of one DNS server's queue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// The server's base URL.
    pub server: String,
    /// Metrics waiting.
    pub queued: usize,
    /// Metrics delivered (answered 200).
    pub sent: u64,
    /// Metrics dropped because the queue was full (oldest first).
    pub dropped: u64,
    /// Metrics the server rejected (listed in `rejected`, or a 4xx batch).
    pub rejected: u64,
    /// Failed posts (retried).
    pub failures: u64,
}

struct Queue {
    base: String,
    /// (sequence number, metric), oldest first, and the next sequence number.
    items: Mutex<(VecDeque<(u64, Metric)>, u64)>,
    notify: Notify,
    sent: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    failures: AtomicU64,
}

/// Reporting settings.
#[derive(Clone)]
pub struct ReporterOptions {
    /// Metrics held per server at most.
    pub capacity: usize,
    /// Metrics per POST at most.
    pub batch: usize,
    /// First retry delay; doubled after each failure up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Time limit of one POST.
    pub timeout: Duration,
    /// TLS for `https` DNS servers: the probe's instance credentials (its certificate
    /// presented, the instance CA the only root). `None`: any certificate (plain
    /// `http` servers need none).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ReporterOptions {
    fn default() -> Self {
        ReporterOptions {
            capacity: 10_000,
            batch: 500,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            tls: None,
        }
    }
}

/// Delivers metrics to every DNS server.
#[derive(Clone)]
pub struct Reporter {
    queues: Arc<Vec<Arc<Queue>>>,
    opts: ReporterOptions,
}

impl Reporter {
    /// A reporter for the DNS servers' HTTP base URLs (`http://ip:port`); call
    /// [`Reporter::spawn`] to start the senders.
    pub fn new(servers: &[String], opts: ReporterOptions) -> Reporter {
        let queues = servers
            .iter()
            .map(|s| {
                Arc::new(Queue {
                    base: s.trim_end_matches('/').to_string(),
                    items: Mutex::new((VecDeque::new(), 0)),
                    notify: Notify::new(),
                    sent: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                    rejected: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                })
            })
            .collect();
        Reporter {
            queues: Arc::new(queues),
            opts,
        }
    }

    /// Starts one sender task per server on the current runtime.
    pub fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.queues
            .iter()
            .map(|q| tokio::spawn(sender(q.clone(), self.opts.clone())))
            .collect()
    }

    /// Queues metrics for every server.
    pub fn push(&self, metrics: &[Metric]) {
        for q in self.queues.iter() {
            {
                let mut guard = q.items.lock().unwrap_or_else(|e| e.into_inner());
                let (items, next) = &mut *guard;
                for m in metrics {
                    if items.len() >= self.opts.capacity.max(1) {
                        items.pop_front();
                        q.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    items.push_back((*next, m.clone()));
                    *next += 1;
                }
            }
            q.notify.notify_one();
        }
    }

    /// Counters per server.
    pub fn stats(&self) -> Vec<QueueStats> {
        self.queues
            .iter()
            .map(|q| QueueStats {
                server: q.base.clone(),
                queued: q.items.lock().unwrap_or_else(|e| e.into_inner()).0.len(),
                sent: q.sent.load(Ordering::Relaxed),
                dropped: q.dropped.load(Ordering::Relaxed),
                rejected: q.rejected.load(Ordering::Relaxed),
                failures: q.failures.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[derive(serde::Deserialize)]
struct Applied {
    #[serde(default)]
    rejected: Vec<serde_json::Value>,
}

enum PostResult {
    Delivered { rejected: usize },
    BadBatch,
    Retry,
}

impl std::fmt::Debug for ReporterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReporterOptions")
            .field("capacity", &self.capacity)
            .field("batch", &self.batch)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

async fn post(q: &Queue, batch: &[Metric], opts: &ReporterOptions) -> PostResult {
    let timeout = opts.timeout;
    let Ok(url) = HttpUrl::parse(&format!("{}/v1/metrics", q.base)) else {
        return PostResult::BadBatch;
    };
    let Ok(body) = serde_json::to_vec(batch) else {
        return PostResult::BadBatch;
    };
    let mut req = FetchRequest::get(url);
    req.method = http::Method::POST;
    req.body = Bytes::from(body);
    req.headers
        .push(("content-type".into(), "application/json".into()));
    req.timeout = timeout;
    req.keep = 1 << 20;
    req.tls = opts.tls.clone();
    match fetch(&req, &Resolver::system()).await {
        Ok(f) if f.status == 200 => {
            let rejected =
                serde_json::from_slice::<Applied>(&f.body).map_or(0, |a| a.rejected.len());
            PostResult::Delivered { rejected }
        }
        // A batch the server cannot take (400, 413, 422): retrying would not help.
        Ok(f) if (400..500).contains(&f.status) && f.status != 429 && f.status != 404 => {
            PostResult::BadBatch
        }
        _ => PostResult::Retry,
    }
}

async fn sender(q: Arc<Queue>, opts: ReporterOptions) {
    let mut backoff = opts.min_backoff;
    loop {
        let (batch, last): (Vec<Metric>, u64) = {
            let items = q.items.lock().unwrap_or_else(|e| e.into_inner());
            let batch = items
                .0
                .iter()
                .take(opts.batch)
                .map(|(_, m)| m.clone())
                .collect();
            let last = items
                .0
                .iter()
                .take(opts.batch)
                .next_back()
                .map_or(0, |(s, _)| *s);
            (batch, last)
        };
        if batch.is_empty() {
            q.notify.notified().await;
            continue;
        }
        let remove = match post(&q, &batch, &opts).await {
            PostResult::Delivered { rejected } => {
                q.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                q.rejected.fetch_add(rejected as u64, Ordering::Relaxed);
                backoff = opts.min_backoff;
                true
            }
            PostResult::BadBatch => {
                q.rejected.fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::warn!(server = %q.base, n = batch.len(), "metrics batch refused");
                true
            }
            PostResult::Retry => {
                q.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(server = %q.base, ?backoff, "metrics post failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(opts.max_backoff);
                false
            }
        };
        if remove {
            // Remove what was sent, by sequence number: overflow may have dropped some
            // of the batch from the front meanwhile.
            let mut items = q.items.lock().unwrap_or_else(|e| e.into_inner());
            while items.0.front().is_some_and(|(s, _)| *s <= last) {
                items.0.pop_front();
            }
        }
    }
}
