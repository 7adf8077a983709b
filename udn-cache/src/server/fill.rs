//! Fills, decoupled from their clients: one origin exchange per primary key at a time
//! (coalescing). The body goes into a [`Growing`] buffer (memory, or a temp file for a
//! large object) at the origin's pace; every client of the fill, the first and each
//! coalesced waiter, reads what has arrived so far at its own pace. A client that stops
//! reading holds only its own connection. A fill that fails mid-body (origin error,
//! or no body bytes within the body timeout) is not stored, and its clients' bodies
//! end with an error (an aborted response, never a short one that looks complete).

use super::*;
use hyper::body::Frame;
use std::sync::OnceLock;

/// Logs one fill's origin body as a record of its own when dropped (outcome `fill`, no
/// client bytes, the origin's body bytes as `fill_bytes`), so cache fill is counted once
/// per origin fetch, including fills no client reads to the end.
struct FillLog {
    edge: Arc<Edge>,
    route: Route,
    status: u16,
    started: Instant,
    bytes: u64,
}

impl Drop for FillLog {
    fn drop(&mut self) {
        self.edge
            .log
            .record(udn_core::log::LogRecord::Http(udn_core::log::HttpRecord {
                ts: (self.edge.clock)(),
                customer: self.route.origin.customer.clone(),
                host: self.route.host.clone(),
                path: self.route.path.clone(),
                method: "GET".into(),
                status: self.status,
                bytes: 0,
                fill_bytes: self.bytes,
                outcome: FILL_OUTCOME.into(),
                duration_us: self.started.elapsed().as_micros() as u64,
                client: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                pop: self.edge.pop.clone(),
            }));
    }
}

/// The outcome of the access-log record a fill writes (`FillLog`).
pub use udn_core::log::FILL_OUTCOME;

/// The outcome of one origin exchange, shared with every coalesced waiter.
#[derive(Clone)]
pub(super) enum FillResult {
    Stored(Arc<Object>),
    Revalidated(Arc<Object>),
    NotStored,
    Failed(FetchError),
}

#[derive(Clone, Copy, Debug)]
pub(super) enum FetchError {
    Unreachable,
    Timeout,
    Status(StatusCode),
    /// The origin's address lies in a range customer destinations may not reach.
    Refused(udn_core::netpolicy::Denied),
    /// An FTP origin refused a command with this reply code (530: bad login, ...).
    FtpReply(u16),
}

/// What a fill's clients see while it runs: its body arriving, then its result.
#[derive(Clone)]
pub(super) enum FillState {
    Streaming(Arc<Growing>),
    Done(FillResult),
}

/// A fill in flight, as its coalesced waiters find it.
pub(super) type Inflight = watch::Receiver<Option<FillState>>;

/// What a caller of [`Edge::fill`] may take besides the final result.
#[derive(Clone, Copy)]
pub(super) struct Want {
    /// The origin's response when it may not be stored (passed through).
    pub pass: bool,
    /// The body while it arrives, when its variant is the caller's.
    pub stream: bool,
}

impl Want {
    pub(super) const RESULT: Want = Want {
        pass: false,
        stream: false,
    };
}

/// What a caller gets before the fill's end.
pub(super) enum Lead {
    /// A storable response, read as it arrives (`true`: this caller started the fill).
    Growing(Arc<Growing>, bool),
    /// A response that may not be stored, passed through.
    Pass(Response<RespBody>, BypassReason),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Done,
    Failed,
}

/// A response body being filled: its bytes so far (memory chunks, or a file read by
/// offset) and a watch of the length written.
pub(super) struct Growing {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) full_key: String,
    /// The origin's `Set-Cookie` fields: for the client that started the fill only,
    /// never stored.
    set_cookie: Vec<HeaderValue>,
    /// The length announced by the origin (`Content-Length`), if any.
    pub(super) total: Option<u64>,
    /// Chunks and their start offsets while the body is in memory.
    mem: Mutex<Vec<(u64, Bytes)>>,
    /// The body file once the body is on disk (opened for reading before any rename
    /// or unlink, so it stays readable).
    file: OnceLock<Arc<std::fs::File>>,
    progress: watch::Sender<(u64, Phase)>,
}

const READ_CHUNK: u64 = 256 * 1024;

impl Growing {
    fn publish(&self, len: u64, phase: Phase) {
        self.progress.send_replace((len, phase));
    }

    /// The body bytes stored so far.
    pub(super) fn written(&self) -> u64 {
        self.progress.borrow().0
    }

    /// Bytes from `pos` (at most `max`), which must have been written.
    async fn read_at(self: &Arc<Self>, pos: u64, max: u64) -> std::io::Result<Bytes> {
        loop {
            if let Some(f) = self.file.get() {
                let f = f.clone();
                let n = max.min(READ_CHUNK) as usize;
                return tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt as _;
                    let mut buf = vec![0u8; n];
                    let mut got = 0;
                    while got < n {
                        match f.read_at(&mut buf[got..], pos + got as u64)? {
                            0 => break,
                            k => got += k,
                        }
                    }
                    buf.truncate(got);
                    if got == 0 {
                        return Err(std::io::Error::other("fill file shorter than written"));
                    }
                    Ok(Bytes::from(buf))
                })
                .await
                .map_err(std::io::Error::other)?;
            }
            {
                let mem = self.mem.lock().unwrap_or_else(|e| e.into_inner());
                let i = mem.partition_point(|(start, _)| *start <= pos);
                if i > 0 {
                    let (start, b) = &mem[i - 1];
                    let off = (pos - start) as usize;
                    if off < b.len() {
                        let end = b.len().min(off + max as usize);
                        return Ok(b.slice(off..end));
                    }
                }
            }
            // Moved to the file meanwhile.
            if self.file.get().is_none() {
                return Err(std::io::Error::other("fill bytes missing"));
            }
        }
    }

    /// The body from `start`, `len` bytes (`None`: to the end), read as it arrives;
    /// an error frame if the fill fails or no byte arrives within `idle`.
    pub(super) fn body(self: &Arc<Self>, start: u64, len: Option<u64>, idle: Duration) -> RespBody {
        let end = len.map(|l| start + l);
        let rx = self.progress.subscribe();
        let s = futures_util::stream::unfold(
            (self.clone(), rx, start, false),
            move |(g, mut rx, pos, over)| async move {
                if over || end.is_some_and(|e| pos >= e) {
                    return None;
                }
                loop {
                    let (written, phase) = *rx.borrow_and_update();
                    if phase == Phase::Failed {
                        let e = std::io::Error::other("origin fill failed mid-body");
                        return Some((Err(e), (g, rx, pos, true)));
                    }
                    let avail = end.map_or(written, |e| e.min(written));
                    if pos < avail {
                        return Some(match g.read_at(pos, avail - pos).await {
                            Ok(b) => {
                                let next = pos + b.len() as u64;
                                (Ok(Frame::data(b)), (g, rx, next, false))
                            }
                            Err(e) => (Err(e), (g, rx, pos, true)),
                        });
                    }
                    if phase == Phase::Done {
                        if end.is_some_and(|e| pos < e) {
                            let e = std::io::Error::other("fill ended short of the range");
                            return Some((Err(e), (g, rx, pos, true)));
                        }
                        return None;
                    }
                    match tokio::time::timeout(idle, rx.changed()).await {
                        Ok(Ok(())) => {}
                        _ => {
                            let e = std::io::Error::other("fill stalled");
                            return Some((Err(e), (g, rx, pos, true)));
                        }
                    }
                }
            },
        );
        http_body_util::StreamBody::new(s).boxed_unsync()
    }
}

/// A temp file for a fill without a disk tier: created, opened, and unlinked at once
/// (it lives while its handles do).
fn anonymous_file() -> std::io::Result<(std::fs::File, std::fs::File)> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("udn-fill-{}-{n}.body", std::process::id()));
    let w = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)?;
    let r = std::fs::File::open(&p);
    let _ = std::fs::remove_file(&p);
    Ok((w, r?))
}

impl Edge {
    /// Coalesced fill: the first caller for `primary` starts the origin exchange; every
    /// caller gets what `want` allows (the body as it arrives, or the origin's
    /// response to pass through: only the first), else the final result.
    pub(super) async fn fill(
        self: &Arc<Self>,
        route: &Route,
        req: &HeaderMap,
        stale: Option<Arc<Object>>,
        want: Want,
    ) -> Result<Lead, FillResult> {
        let primary = route.store_key();
        let existing = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&primary) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(primary.clone(), rx);
                    Ok(tx)
                }
            }
        };
        let (rx, started) = match existing {
            Err(rx) => (rx, false),
            Ok(state) => {
                let (ltx, lrx) = oneshot::channel();
                let edge = self.clone();
                let route = route.clone();
                let req = req.clone();
                let rx = state.subscribe();
                tokio::spawn(async move {
                    let ltx = if want.pass { Some(ltx) } else { None };
                    let r = edge.run_fill(&route, &req, stale, ltx, &state).await;
                    edge.inflight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&route.store_key());
                    let _ = state.send(Some(FillState::Done(r)));
                });
                if want.pass
                    && let Ok(l) = lrx.await
                {
                    match l {
                        // A conditional request is answered from the stored result.
                        Lead::Growing(..) if !want.stream => {}
                        l => return Ok(l),
                    }
                }
                (rx, true)
            }
        };
        self.await_fill(rx, route, req, want, started).await
    }

    /// Waits (at most the waiter timeout) for the fill's body, when `want` takes it
    /// and its variant is the caller's, or for its result.
    async fn await_fill(
        &self,
        mut rx: Inflight,
        route: &Route,
        req: &HeaderMap,
        want: Want,
        started: bool,
    ) -> Result<Lead, FillResult> {
        let ranged = req.contains_key(header::RANGE);
        let mine = |g: &Growing| {
            want.stream && (!ranged || g.total.is_some()) && g.full_key == self.full_key(route, req)
        };
        let res = tokio::time::timeout(
            self.waiter_timeout,
            rx.wait_for(|s| match s {
                Some(FillState::Done(_)) => true,
                Some(FillState::Streaming(g)) => mine(g),
                None => false,
            }),
        )
        .await;
        match res {
            Ok(Ok(s)) => match &*s {
                Some(FillState::Streaming(g)) => Ok(Lead::Growing(g.clone(), started)),
                Some(FillState::Done(r)) => Err(r.clone()),
                None => Err(FillResult::Failed(FetchError::Unreachable)),
            },
            Ok(Err(_)) => Err(FillResult::Failed(FetchError::Unreachable)),
            Err(_) => Err(FillResult::Failed(FetchError::Timeout)),
        }
    }

    async fn run_fill(
        self: &Arc<Self>,
        route: &Route,
        req: &HeaderMap,
        stale: Option<Arc<Object>>,
        lead: Option<oneshot::Sender<Lead>>,
        state: &watch::Sender<Option<FillState>>,
    ) -> FillResult {
        let generation = self
            .tree
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation();
        let request_time = self.now();
        let cond = stale
            .as_ref()
            .map(|o| o.meta.conditional_headers())
            .unwrap_or_default();
        let oreq = upstream::origin_request(route, Method::GET, req, cond, false, &self.cdn_id);
        self.metrics.origin_fetches.inc();
        let resp = match self.origin_fetch(route, oreq).await {
            Err(e) => return FillResult::Failed(e),
            Ok(r) => r,
        };
        let response_time = self.now();
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED
            && let Some(old) = &stale
        {
            // Only a 304 whose validator matches may update the stored response, and
            // only if the result is still storable by a shared cache (RFC 9111 4.3.4).
            if policy::not_modified_matches(&old.meta.headers, resp.headers()) {
                let mut obj = (**old).clone();
                obj.meta
                    .update_from_304(resp.headers(), request_time, response_time);
                let mut check = obj.meta.headers.clone();
                for v in resp.headers().get_all(header::SET_COOKIE) {
                    check.append(header::SET_COOKIE, v.clone());
                }
                if self
                    .hooks
                    .cacheable(route, &Method::GET, req, obj.meta.status, &check)
                    .is_ok()
                {
                    let obj = Arc::new(obj);
                    self.memory.insert(obj.key.clone(), obj.clone());
                    if let Some(d) = &self.disk {
                        d.update_meta(&obj);
                    }
                    return FillResult::Revalidated(obj);
                }
            }
            tracing::debug!(key = %old.key, "304 not applicable to the stored response: dropped");
            self.memory.invalidate(&old.key);
            if let Some(d) = &self.disk {
                d.remove(&old.key);
            }
            return FillResult::NotStored;
        }
        if status.is_server_error() && stale.is_some() {
            return FillResult::Failed(FetchError::Status(status));
        }
        if let Err(reason) = self
            .hooks
            .cacheable(route, &Method::GET, req, status, resp.headers())
        {
            if let Some(l) = lead {
                let _ = l.send(Lead::Pass(resp, reason));
            }
            return FillResult::NotStored;
        }
        let Some(names) = policy::vary_names(resp.headers()) else {
            if let Some(l) = lead {
                let _ = l.send(Lead::Pass(
                    resp,
                    BypassReason::NotStorable(policy::NotStorable::VaryStar),
                ));
            }
            return FillResult::NotStored;
        };
        let primary = route.store_key();
        let full_key = if names.is_empty() {
            primary.clone()
        } else {
            format!("{primary}\n{}", policy::secondary_key(&names, req))
        };
        self.vary.insert(primary, Arc::new(names));
        let (parts, mut body) = resp.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // Only the client whose request fetched it gets the cookie: it is kept apart
        // from the stored headers.
        let set_cookie: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        let total = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let (progress, _) = watch::channel((0, Phase::Running));
        let g = Arc::new(Growing {
            status,
            headers: headers.clone(),
            full_key: full_key.clone(),
            set_cookie,
            total,
            mem: Mutex::new(Vec::new()),
            file: OnceLock::new(),
            progress,
        });
        // The first caller reads the body like every other one, but is handed it
        // directly: a small body may be complete (and the state `Done`) before it
        // looks, and only it may receive the origin's `Set-Cookie`.
        let _ = state.send(Some(FillState::Streaming(g.clone())));
        if let Some(l) = lead {
            let _ = l.send(Lead::Growing(g.clone(), true));
        }
        // The body goes into memory, or a file once it is larger than a memory object
        // (the disk tier's temp file, or an unlinked one without a disk tier), at the
        // origin's pace; clients read from `g`.
        let mut file: Option<(tokio::fs::File, Option<PathBuf>)> = None;
        let mut total_read: u64 = 0;
        // The cache fill is logged by the fill itself, whoever (if anyone) reads it:
        // a prefetch, a prefill, a background revalidation, a first client that leaves
        // early; on every way out of the loop below.
        let mut fill_log = FillLog {
            edge: self.clone(),
            route: route.clone(),
            status: status.as_u16(),
            started: Instant::now(),
            bytes: 0,
        };
        let fail = |g: &Growing, file: Option<(tokio::fs::File, Option<PathBuf>)>, n| {
            g.publish(n, Phase::Failed);
            if let Some((_, Some(p))) = file {
                let _ = std::fs::remove_file(p);
            }
        };
        loop {
            let frame = match tokio::time::timeout(self.body_timeout, body.frame()).await {
                Ok(None) => break,
                Ok(Some(Ok(f))) => f,
                Ok(Some(Err(e))) => {
                    tracing::warn!(url = %route.fetch_url, error = %e, "origin body failed mid-fill");
                    fail(&g, file, total_read);
                    return FillResult::Failed(FetchError::Unreachable);
                }
                Err(_) => {
                    tracing::warn!(url = %route.fetch_url, after = total_read,
                        "origin body stalled: fill cut off at the body timeout");
                    fail(&g, file, total_read);
                    return FillResult::Failed(FetchError::Timeout);
                }
            };
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            self.metrics.origin_bytes.inc_by(chunk.len() as u64);
            let start = total_read;
            total_read += chunk.len() as u64;
            fill_log.bytes = total_read;
            if file.is_none() && total_read > self.object_max {
                // To a file: what is in memory first, then the handle for readers.
                let opened = match &self.disk {
                    Some(d) => {
                        let p = d.temp_path();
                        std::fs::File::create(&p)
                            .and_then(|w| Ok((w, std::fs::File::open(&p)?)))
                            .map(|(w, r)| (w, r, Some(p)))
                    }
                    None => anonymous_file().map(|(w, r)| (w, r, None)),
                };
                let Ok((w, r, p)) = opened else {
                    fail(&g, None, start);
                    return FillResult::Failed(FetchError::Unreachable);
                };
                let mut w = tokio::fs::File::from_std(w);
                let chunks = g.mem.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut ok = true;
                for (_, b) in &chunks {
                    ok &= w.write_all(b).await.is_ok();
                }
                ok &= w.flush().await.is_ok();
                if !ok || g.file.set(Arc::new(r)).is_err() {
                    fail(&g, Some((w, p)), start);
                    return FillResult::Failed(FetchError::Unreachable);
                }
                // Readers find the file first now; the chunks can go.
                g.mem.lock().unwrap_or_else(|e| e.into_inner()).clear();
                file = Some((w, p));
            }
            match &mut file {
                Some((w, _)) => {
                    if w.write_all(&chunk).await.is_err() || w.flush().await.is_err() {
                        fail(&g, file, start);
                        return FillResult::Failed(FetchError::Unreachable);
                    }
                }
                None => g
                    .mem
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((start, chunk)),
            }
            g.publish(total_read, Phase::Running);
        }
        if total.is_some_and(|t| t != total_read) {
            fail(&g, file, total_read);
            return FillResult::Failed(FetchError::Unreachable);
        }
        // The whole body is here: every client can finish, stored or not.
        g.publish(total_read, Phase::Done);
        let meta = StoredMeta::new(status, headers, request_time, response_time);
        let obj = match file {
            Some((_, None)) => return FillResult::NotStored,
            Some((w, Some(p))) => {
                drop(w);
                let obj = Object {
                    key: full_key.clone(),
                    meta,
                    generation,
                    len: total_read,
                    body: BodyLoc::Disk(p.clone()),
                };
                let edge = self.clone();
                let stored = tokio::task::spawn_blocking(move || {
                    edge.disk.as_ref().map(|d| d.put(&obj, Some(&p)))
                })
                .await;
                match stored {
                    Ok(Some(Ok(Some(o)))) => o,
                    _ => return FillResult::NotStored,
                }
            }
            None => {
                let chunks = g.mem.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let body = if chunks.len() == 1 {
                    chunks[0].1.clone()
                } else {
                    let mut buf = bytes::BytesMut::with_capacity(total_read as usize);
                    for (_, b) in &chunks {
                        buf.extend_from_slice(b);
                    }
                    buf.freeze()
                };
                let obj = Object {
                    key: full_key.clone(),
                    meta,
                    generation,
                    len: total_read,
                    body: BodyLoc::Memory(body),
                };
                if self.disk.is_some() {
                    let edge = self.clone();
                    let o = obj.clone();
                    // Write-through so a restart keeps it; errors only cost the copy.
                    tokio::task::spawn_blocking(move || {
                        if let Some(d) = &edge.disk {
                            let _ = d.put(&o, None);
                        }
                    });
                }
                obj
            }
        };
        let obj = Arc::new(obj);
        self.memory.insert(full_key, obj.clone());
        self.prefetch_next_segments(route, &obj);
        FillResult::Stored(obj)
    }

    /// When `obj` (just filled) is a live HLS media playlist, queues the newest segments
    /// it names (on its origin) for [`start`]'s prefetch task; a full queue skips them.
    fn prefetch_next_segments(&self, route: &Route, obj: &Object) {
        let ct = obj
            .meta
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !obj.meta.status.is_success() || !crate::hls::is_playlist(&route.path, ct) {
            return;
        }
        let BodyLoc::Memory(body) = &obj.body else {
            return;
        };
        for path in crate::hls::next_segments(body, &route.path, PREFETCH_SEGMENTS) {
            if self.prefetch_tx.try_send(route.sibling(&path)).is_err() {
                break;
            }
        }
    }

    /// Answers a GET from a fill in flight (the caller sent no conditional): the
    /// origin's status and headers, `Range` when the length is known, and the body read
    /// as it arrives.
    pub(super) fn serve_growing(
        &self,
        g: &Arc<Growing>,
        method: &Method,
        req: &HeaderMap,
        own: bool,
    ) -> Response<RespBody> {
        let mut headers = g.headers.clone();
        // The origin's Age is kept (RFC 9111 4.2.3; the fill took no time yet).
        let now = self.now();
        let age = policy::StoredMeta::new(g.status, headers.clone(), now, now)
            .current_age(now)
            .as_secs();
        headers.insert(header::AGE, HeaderValue::from(age));
        upstream::strip_targeted(&mut headers);
        if own {
            for v in &g.set_cookie {
                headers.append(header::SET_COOKIE, v.clone());
            }
        }
        headers.insert(
            "x-cache",
            HeaderValue::from_static(CacheOutcome::Miss.as_str()),
        );
        let ok = g.status == StatusCode::OK;
        let range = match (ok, g.total) {
            (true, Some(total)) => {
                headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                parse_range(req.get(header::RANGE), total)
            }
            _ => Ok(None),
        };
        let (status, start, len) = match range {
            Err(()) => {
                let mut r = simple(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                if let Some(v) = g
                    .total
                    .and_then(|t| HeaderValue::from_str(&format!("bytes */{t}")).ok())
                {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
            Ok(None) => (g.status, 0, g.total),
            Ok(Some((s, l))) => {
                let t = g.total.unwrap_or(0);
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{t}", s, s + l - 1)) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(l));
                (StatusCode::PARTIAL_CONTENT, s, Some(l))
            }
        };
        let body = if method == Method::HEAD {
            empty()
        } else {
            g.body(start, len, self.waiter_timeout)
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        r
    }
}
