//! Fills: one origin exchange per primary key at a time (coalescing), its body stored
//! into memory or a disk temp file while it is streamed to the request that started it.

use super::*;

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
}

/// What the request that started a fill gets.
pub(super) enum Lead {
    /// A storable response, streamed while it is being stored.
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    },
    /// A response that may not be stored, passed through.
    Pass(Response<Incoming>, BypassReason),
}

impl Edge {
    /// Coalesced fill: the first caller for `primary` starts the origin exchange and
    /// gets a [`Lead`]; later callers wait for its result.
    pub(super) async fn fill(
        self: &Arc<Self>,
        route: &Route,
        req: &HeaderMap,
        stale: Option<Arc<Object>>,
        lead: bool,
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
        match existing {
            Err(mut rx) => {
                let res = rx.wait_for(|r| r.is_some()).await.map(|r| r.clone());
                match res {
                    Ok(Some(r)) => Err(r),
                    _ => Err(FillResult::Failed(FetchError::Unreachable)),
                }
            }
            Ok(done) => {
                let (ltx, lrx) = oneshot::channel();
                let edge = self.clone();
                let route = route.clone();
                let req = req.clone();
                let mut done_rx = done.subscribe();
                tokio::spawn(async move {
                    let ltx = if lead { Some(ltx) } else { None };
                    let r = edge.run_fill(&route, &req, stale, ltx).await;
                    edge.inflight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&route.store_key());
                    let _ = done.send(Some(r));
                });
                if lead && let Ok(l) = lrx.await {
                    return Ok(l);
                }
                let res = done_rx.wait_for(|r| r.is_some()).await.map(|r| r.clone());
                match res {
                    Ok(Some(r)) => Err(r),
                    _ => Err(FillResult::Failed(FetchError::Unreachable)),
                }
            }
        }
    }

    async fn run_fill(
        self: &Arc<Self>,
        route: &Route,
        req: &HeaderMap,
        stale: Option<Arc<Object>>,
        lead: Option<oneshot::Sender<Lead>>,
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
        let oreq = self.origin_request(route, Method::GET, req, cond);
        self.metrics.origin_fetches.inc();
        let resp = match self.send(route, oreq).await {
            Err(e) => return FillResult::Failed(e),
            Ok(r) => r,
        };
        let response_time = self.now();
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED
            && let Some(old) = &stale
        {
            let mut obj = (**old).clone();
            obj.meta
                .update_from_304(resp.headers(), request_time, response_time);
            let obj = Arc::new(obj);
            self.memory.insert(obj.key.clone(), obj.clone());
            if let Some(d) = &self.disk {
                d.update_meta(&obj);
            }
            return FillResult::Revalidated(obj);
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
        let mut client_tx = None;
        if let Some(l) = lead {
            let (tx, rx) = mpsc::channel(8);
            let _ = l.send(Lead::Stream {
                status,
                headers: headers.clone(),
                rx,
            });
            client_tx = Some(tx);
        }
        // Stream the body to the client and into memory or a disk temp file.
        let mut mem: Vec<Bytes> = Vec::new();
        let mut mem_len: u64 = 0;
        let mut file: Option<(tokio::fs::File, PathBuf)> = None;
        let mut storing = true;
        let mut total: u64 = 0;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    if let Some(tx) = &client_tx {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                    }
                    if let Some((_, p)) = file {
                        let _ = tokio::fs::remove_file(p).await;
                    }
                    return FillResult::Failed(FetchError::Unreachable);
                }
            };
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            total += chunk.len() as u64;
            self.metrics.origin_bytes.inc_by(chunk.len() as u64);
            if storing {
                if file.is_none() && mem_len + chunk.len() as u64 > self.object_max {
                    match &self.disk {
                        Some(d) => {
                            let p = d.temp_path();
                            match tokio::fs::File::create(&p).await {
                                Ok(mut f) => {
                                    let mut ok = true;
                                    for b in mem.drain(..) {
                                        ok &= f.write_all(&b).await.is_ok();
                                    }
                                    file = Some((f, p));
                                    storing = ok;
                                }
                                Err(_) => storing = false,
                            }
                        }
                        None => storing = false,
                    }
                    mem.clear();
                }
                if let Some((f, _)) = &mut file {
                    if f.write_all(&chunk).await.is_err() {
                        storing = false;
                    }
                } else if storing {
                    mem_len += chunk.len() as u64;
                    mem.push(chunk.clone());
                }
            }
            if let Some(tx) = &client_tx
                && tx.send(Ok(chunk)).await.is_err()
            {
                client_tx = None; // the client left; keep filling the cache
            }
        }
        drop(client_tx);
        if !storing {
            if let Some((_, p)) = file {
                let _ = tokio::fs::remove_file(p).await;
            }
            return FillResult::NotStored;
        }
        let meta = StoredMeta::new(status, headers, request_time, response_time);
        let obj = match file {
            Some((mut f, p)) => {
                if f.flush().await.is_err() {
                    return FillResult::NotStored;
                }
                drop(f);
                let obj = Object {
                    key: full_key.clone(),
                    meta,
                    generation,
                    len: total,
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
                let mut buf = bytes::BytesMut::with_capacity(mem_len as usize);
                for b in mem {
                    buf.extend_from_slice(&b);
                }
                let obj = Object {
                    key: full_key.clone(),
                    meta,
                    generation,
                    len: total,
                    body: BodyLoc::Memory(buf.freeze()),
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
        FillResult::Stored(obj)
    }
}
