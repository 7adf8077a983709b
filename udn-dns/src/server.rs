//! The tokio DNS server (feature `server`): UDP on several `SO_REUSEPORT` sockets per
//! address, TCP with length-prefixed pipelined queries, idle timeouts, a connection
//! limit and cut-off of oversized or slow clients; IPv4 and IPv6; peer proxying to the
//! owner of a client prefix with a local answer on timeout.
//!
//! The state every socket answers from is one [`Served`] (engine + authority) behind an
//! `RwLock`: queries take the read lock for the length of one answer; a reload or a
//! metric update takes the write lock and swaps or updates it at once, so no query ever
//! sees half a snapshot and none is dropped.
//!
//! What happens to each answer (query log, counters, refresh requests) is up to the
//! embedder's [`Observer`].

use crate::cookie::{Pre, Seen};
use crate::responder::{Decider, GtmAnswer, Outcome, Request, Responder, Transport};
use crate::rrl::Verdict;
use crate::{Authority, Error};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use tokio::sync::{Semaphore, watch};
use udn_core::{ClientPrefix, Decision, Engine, Network, Query, Timestamp};

/// The engine and the authority of one configuration snapshot, always swapped together.
#[derive(Debug)]
pub struct Served {
    /// The decision engine (network snapshot + dynamic state).
    pub engine: Engine,
    /// The zones and hostnames answered.
    pub authority: Arc<Authority>,
    /// The peers queries are proxied among, if proxying is on: part of the snapshot, so
    /// a reload changes them together with the zones.
    pub peers: Option<Arc<Peers>>,
}

impl Served {
    /// Replaces the snapshot with `authority`'s network, carrying the engine's state
    /// over by name. The peers stay as they are.
    pub fn replace(&mut self, authority: Arc<Authority>) {
        self.engine.replace_network(authority.network().clone());
        self.authority = authority;
    }

    /// Replaces the peers (`None`: proxying off). A peer kept by name and address keeps
    /// its down state, so a reload does not retry a peer that just timed out.
    pub fn set_peers(&mut self, peers: Option<Peers>) {
        let peers = peers.map(|new| {
            if let Some(old) = &self.peers {
                new.carry_down_state(old);
            }
            Arc::new(new)
        });
        self.peers = peers;
    }
}

struct EngineRef<'a>(&'a Engine);

impl Decider for EngineRef<'_> {
    fn decide(&self, q: &Query, now: Timestamp) -> Decision {
        self.0.decide(q, now)
    }
}

/// What the server tells its embedder about each answer.
#[derive(Debug)]
pub struct Answered<'a> {
    /// UDP or TCP.
    pub transport: Transport,
    /// The query's source.
    pub client: SocketAddr,
    /// The response code sent.
    pub rcode: hickory_proto::op::ResponseCode,
    /// Whether the answer was truncated.
    pub truncated: bool,
    /// The decision, for GTM and CDN hostnames answered here.
    pub gtm: Option<&'a GtmAnswer>,
    /// The network the decision was made on.
    pub network: &'a Arc<Network>,
    /// How the query was answered.
    pub path: AnswerPath,
    /// Time from receiving the query to having the answer.
    pub elapsed: Duration,
    /// When it was answered.
    pub now: Timestamp,
}

/// How a query was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerPath {
    /// From our own data.
    Local,
    /// Relayed from the owning peer.
    Relayed,
    /// The owning peer did not answer in time: answered locally.
    PeerTimeout,
}

impl AnswerPath {
    /// A short name for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerPath::Local => "local",
            AnswerPath::Relayed => "relayed",
            AnswerPath::PeerTimeout => "peer-timeout",
        }
    }
}

/// Receives every answer (query log, metrics, refresh requests). Called on the answering
/// task: keep it cheap.
pub trait Observer: Send + Sync + 'static {
    /// One query answered.
    fn answered(&self, a: &Answered<'_>);
    /// A query dropped (not a query, too short, or a TCP client cut off).
    fn dropped(&self, _transport: Transport, _reason: &'static str) {}
}

/// An observer that does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn answered(&self, _a: &Answered<'_>) {}
}

/// The peer set for proxying.
#[derive(Debug)]
pub struct Peers {
    /// Peer names (rendezvous hash inputs), ours included.
    pub names: Vec<String>,
    /// Their DNS addresses.
    pub addrs: Vec<SocketAddr>,
    /// Our index among them.
    pub me: usize,
    /// How long a forwarded query waits for the owner.
    pub timeout: Duration,
    /// How long a peer that timed out is skipped.
    pub down_for: Duration,
    down_until_ms: Vec<AtomicU64>,
    epoch: Instant,
}

impl Peers {
    /// Peers `names`/`addrs` with us at index `me`.
    pub fn new(names: Vec<String>, addrs: Vec<SocketAddr>, me: usize) -> Peers {
        let n = names.len();
        Peers {
            names,
            addrs,
            me,
            timeout: Duration::from_millis(300),
            down_for: Duration::from_secs(10),
            down_until_ms: (0..n).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether peer `i` is considered up.
    pub fn is_up(&self, i: usize) -> bool {
        i == self.me
            || self
                .down_until_ms
                .get(i)
                .is_some_and(|d| d.load(Ordering::Relaxed) <= self.now_ms())
    }

    /// Marks peer `i` down for [`Peers::down_for`].
    pub fn mark_down(&self, i: usize) {
        if let Some(d) = self.down_until_ms.get(i) {
            d.store(
                self.now_ms() + self.down_for.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
    }

    /// Copies the down state of the peers `old` also has (same name and address).
    fn carry_down_state(&self, old: &Peers) {
        for (i, (name, addr)) in self.names.iter().zip(&self.addrs).enumerate() {
            let kept = old
                .names
                .iter()
                .zip(&old.addrs)
                .position(|(n, a)| n == name && a == addr);
            if let Some(j) = kept
                && j != old.me
                && let (Some(from), Some(to)) =
                    (old.down_until_ms.get(j), self.down_until_ms.get(i))
            {
                let left = from.load(Ordering::Relaxed).saturating_sub(old.now_ms());
                if left > 0 {
                    to.store(self.now_ms() + left, Ordering::Relaxed);
                }
            }
        }
    }

    /// The peer that owns `prefix`, if it is not us.
    pub fn owner(&self, prefix: ClientPrefix) -> Option<usize> {
        udn_core::shard::owner(prefix, &self.names, |i| self.is_up(i)).filter(|&o| o != self.me)
    }
}

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// UDP sockets per listen address (`SO_REUSEPORT`); 0 = one per core.
    pub udp_sockets: usize,
    /// Open TCP connections at most; further ones wait for a slot.
    pub tcp_max_connections: usize,
    /// A TCP connection with no query for this long is closed.
    pub tcp_idle: Duration,
    /// A TCP query must arrive in full within this time once its length is read.
    pub tcp_read: Duration,
    /// A TCP length prefix above this closes the connection (queries are small).
    pub tcp_max_query: usize,
    /// Answer-cache bytes of all UDP sockets together (each socket's thread gets its
    /// share); see [`crate::responder::CACHE_ENTRY_OVERHEAD`] for what an entry costs.
    pub answer_cache_bytes: usize,
    /// Answer-cache bytes of each TCP connection.
    pub tcp_answer_cache_bytes: usize,
    /// Response rate limiting of UDP answers (see [`crate::rrl`]).
    pub rrl: crate::rrl::RrlConfig,
    /// DNS Cookies and NSID (see [`crate::cookie`]).
    pub extras: crate::cookie::Extras,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            udp_sockets: 0,
            tcp_max_connections: 512,
            tcp_idle: Duration::from_secs(10),
            tcp_read: Duration::from_secs(3),
            tcp_max_query: 4096,
            answer_cache_bytes: 16 << 20,
            tcp_answer_cache_bytes: 16 << 10,
            rrl: crate::rrl::RrlConfig::default(),
            extras: crate::cookie::Extras::default(),
        }
    }
}

/// The server's shared state.
pub struct Server {
    /// The snapshot answered from (with the peers).
    pub served: RwLock<Served>,
    /// Limits.
    pub limits: Limits,
    observer: Arc<dyn Observer>,
    clock: fn() -> Timestamp,
    tcp_open: AtomicUsize,
    rrl: Option<crate::rrl::Rrl>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Addresses a running server is bound to.
#[derive(Debug, Clone)]
pub struct Bound {
    /// One per listen address: UDP and TCP share the port.
    pub addrs: Vec<SocketAddr>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, Error> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(io("creating a UDP socket"))?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(io("setting IPV6_V6ONLY"))?;
    }
    s.set_reuse_port(true).map_err(io("setting SO_REUSEPORT"))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)
        .map_err(io("setting non-blocking"))?;
    s.bind(&addr.into())
        .map_err(io(format!("binding UDP {addr}")))?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(io("creating a TCP socket"))?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(io("setting IPV6_V6ONLY"))?;
    }
    s.set_reuse_address(true)
        .map_err(io("setting SO_REUSEADDR"))?;
    s.set_nonblocking(true)
        .map_err(io("setting non-blocking"))?;
    s.bind(&addr.into())
        .map_err(io(format!("binding TCP {addr}")))?;
    s.listen(1024).map_err(io(format!("listening on {addr}")))?;
    Ok(s.into())
}

impl Server {
    /// A server answering from `served`, telling `observer` about each answer, reading
    /// the time from `clock`.
    pub fn new(
        served: Served,
        limits: Limits,
        observer: Arc<dyn Observer>,
        clock: fn() -> Timestamp,
    ) -> Arc<Server> {
        Arc::new(Server {
            served: RwLock::new(served),
            observer,
            clock,
            tcp_open: AtomicUsize::new(0),
            rrl: crate::rrl::Rrl::new(limits.rrl.clone()),
            limits,
        })
    }

    /// Open TCP connections now.
    pub fn tcp_connections(&self) -> usize {
        self.tcp_open.load(Ordering::Relaxed)
    }

    /// Binds UDP and TCP on each of `addrs` (port 0: a free port, the same for UDP and
    /// TCP) and spawns the serving tasks on the current tokio runtime. They stop when
    /// `shutdown` turns true.
    pub async fn spawn(
        self: &Arc<Self>,
        addrs: &[SocketAddr],
        shutdown: watch::Receiver<bool>,
    ) -> Result<Bound, Error> {
        let n_udp = if self.limits.udp_sockets == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            self.limits.udp_sockets
        };
        let mut bound = Vec::new();
        for &addr in addrs {
            // Port 0: let the kernel pick a port that is free for both UDP and TCP.
            let mut attempt = 0;
            let (udp, tcp, local) = loop {
                attempt += 1;
                let first = udp_socket(addr)?;
                let local = first
                    .local_addr()
                    .map_err(io("reading the bound address"))?;
                match tcp_listener(local) {
                    Ok(t) => break (first, t, local),
                    Err(e) if addr.port() == 0 && attempt < 20 => {
                        tracing::debug!(error = %e, "TCP port taken, retrying");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            let mut udps = vec![udp];
            for _ in 1..n_udp {
                udps.push(udp_socket(local)?);
            }
            for s in udps {
                // Each UDP socket is served by its own thread with blocking I/O: under
                // load a packet costs a receive and a send and nothing else, with no
                // readiness polling or task wake-ups (measured cheaper than a tokio task
                // per socket). Forwarded queries are handed to the tokio runtime.
                s.set_nonblocking(false)
                    .map_err(io("setting UDP blocking"))?;
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .map_err(io("setting UDP read timeout"))?;
                let stop = Arc::new(AtomicBool::new(false));
                let this = self.clone();
                let cache = self.limits.answer_cache_bytes / (n_udp * addrs.len()).max(1);
                let rt = tokio::runtime::Handle::current();
                let flag = stop.clone();
                std::thread::Builder::new()
                    .name("udn-dns-udp".into())
                    .spawn(move || this.udp_thread(s, rt, flag, cache))
                    .map_err(io("starting a UDP thread"))?;
                let mut sd = shutdown.clone();
                tokio::spawn(async move {
                    let _ = sd.wait_for(|v| *v).await;
                    stop.store(true, Ordering::Relaxed);
                });
            }
            let listener = TcpListener::from_std(tcp).map_err(io("registering TCP"))?;
            tokio::spawn(self.clone().tcp_accept(listener, shutdown.clone()));
            bound.push(local);
        }
        Ok(Bound { addrs: bound })
    }

    /// Answers one query locally (no proxying) into `responder`'s buffer and tells the
    /// observer. Returns the bytes to send.
    fn answer_local<'r>(
        &self,
        responder: &'r mut Responder,
        inc: &Incoming<'_>,
        path: AnswerPath,
        allow_forward: bool,
    ) -> Local<'r> {
        let Incoming {
            bytes,
            client,
            transport,
            started,
        } = *inc;
        let now = (self.clock)();
        let req = Request {
            bytes,
            client: client.ip(),
            transport,
            now,
        };
        let guard = self.served.read().unwrap_or_else(|e| e.into_inner());
        let served = &*guard;
        let shard_fn;
        let shard: Option<crate::Shard<'_>> = match (&served.peers, allow_forward) {
            (Some(p), true) if p.names.len() > 1 => {
                shard_fn = move |prefix: ClientPrefix| p.owner(prefix);
                Some(&shard_fn)
            }
            _ => None,
        };
        let outcome = responder.respond(&req, &served.authority, &EngineRef(&served.engine), shard);
        match outcome {
            Outcome::Reply(reply) => {
                let persist = reply.gtm.and_then(|g| g.decision.persist);
                self.observer.answered(&Answered {
                    transport,
                    client,
                    rcode: reply.rcode,
                    truncated: reply.truncated,
                    gtm: reply.gtm.as_ref(),
                    network: served.authority.network(),
                    path,
                    elapsed: started.elapsed(),
                    now,
                });
                let bytes = reply.bytes;
                let net = Arc::as_ptr(served.authority.network());
                drop(guard);
                if let Some(w) = persist {
                    let mut g = self.served.write().unwrap_or_else(|e| e.into_inner());
                    // The snapshot may have been swapped meanwhile: ids would not match.
                    if std::ptr::eq(Arc::as_ptr(g.authority.network()), net) {
                        g.engine.state_mut().apply_persist(w);
                    }
                }
                Local::Reply(bytes)
            }
            Outcome::Forward { peer, query } => match &served.peers {
                Some(p) => Local::Forward(p.clone(), peer, query.to_vec()),
                None => Local::Nothing,
            },
            Outcome::Drop => {
                self.observer.dropped(transport, "not a query");
                Local::Nothing
            }
        }
    }

    /// Forwards to the owner and relays its answer, or answers locally on timeout.
    async fn proxied(
        self: &Arc<Self>,
        responder: &mut Responder,
        inc: &Incoming<'_>,
        peers: Arc<Peers>,
        peer: usize,
        query: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let Incoming {
            bytes: original,
            client,
            transport,
            started,
        } = *inc;
        let addr = *peers.addrs.get(peer)?;
        let me = peers.addrs.get(peers.me).map(|a| a.ip());
        match forward_udp(addr, me, &query, peers.timeout).await {
            Some(answer) => {
                if let Some(bytes) = responder.relay(original, &answer, transport) {
                    let bytes = bytes.to_vec();
                    let served = self.served.read().unwrap_or_else(|e| e.into_inner());
                    let rcode = hickory_proto::op::ResponseCode::from_low(
                        bytes.get(3).map(|b| b & 0x0f).unwrap_or(0),
                    );
                    self.observer.answered(&Answered {
                        transport,
                        client,
                        rcode,
                        truncated: bytes.get(2).is_some_and(|b| b & 0x02 != 0),
                        gtm: None,
                        network: served.authority.network(),
                        path: AnswerPath::Relayed,
                        elapsed: started.elapsed(),
                        now: (self.clock)(),
                    });
                    return Some(bytes);
                }
            }
            None => {
                tracing::warn!(peer = %peers.names[peer], %addr, "peer did not answer in time; answering locally and skipping it for a while");
                peers.mark_down(peer);
            }
        }
        match self.answer_local(responder, inc, AnswerPath::PeerTimeout, false) {
            Local::Reply(b) => Some(b.to_vec()),
            _ => None,
        }
    }

    fn udp_thread(
        self: Arc<Self>,
        sock: std::net::UdpSocket,
        rt: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
        cache_bytes: usize,
    ) {
        use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
        use std::io::{IoSlice, IoSliceMut};
        use std::os::fd::AsRawFd;

        let fd = sock.as_raw_fd();
        let mut bufs: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| vec![0u8; 4096]).collect();
        let mut outs: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| Vec::with_capacity(1232)).collect();
        let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
        let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
        let mut got: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(UDP_BATCH);
        let mut dests: Vec<Option<SockaddrStorage>> = Vec::with_capacity(UDP_BATCH);
        let mut ready: Vec<usize> = Vec::with_capacity(UDP_BATCH);
        let mut responder = Responder::with_cache_bytes(cache_bytes);
        let mut scratch = Vec::with_capacity(512);
        while !stop.load(Ordering::Relaxed) {
            // Receive up to UDP_BATCH queries in one system call (waiting for the first).
            got.clear();
            {
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                    .iter_mut()
                    .map(|b| [IoSliceMut::new(&mut b[..])])
                    .collect();
                match recvmmsg(
                    fd,
                    &mut recv_headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_WAITFORONE,
                    None,
                ) {
                    Ok(res) => {
                        for m in res {
                            got.push((m.bytes, m.address.and_then(|a| std_addr(&a))));
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive error");
                        continue;
                    }
                }
            }
            ready.clear();
            dests.clear();
            let now_s = now_secs(self.clock);
            for (i, &(n, from)) in got.iter().enumerate() {
                let Some(from) = from else { continue };
                let started = Instant::now();
                let received = &bufs[i][..n.min(bufs[i].len())];
                let (seen, pre) =
                    self.limits
                        .extras
                        .pre(received, from.ip(), true, now_s, &mut scratch);
                let query: &[u8] = match pre {
                    Pre::AsIs => received,
                    Pre::Rewritten => &scratch,
                    Pre::Reply => {
                        outs[i].clear();
                        outs[i].extend_from_slice(&scratch);
                        if !outs[i].is_empty() && self.rate_limit(&seen, from, &mut outs[i], now_s)
                        {
                            ready.push(i);
                            dests.push(Some(SockaddrStorage::from(from)));
                        }
                        continue;
                    }
                };
                let inc = Incoming {
                    bytes: query,
                    client: from,
                    transport: Transport::Udp,
                    started,
                };
                match self.answer_local(&mut responder, &inc, AnswerPath::Local, true) {
                    Local::Reply(bytes) => {
                        outs[i].clear();
                        outs[i].extend_from_slice(bytes);
                        self.limits
                            .extras
                            .post(&seen, &mut outs[i], from.ip(), true, now_s);
                        if self.rate_limit(&seen, from, &mut outs[i], now_s) {
                            ready.push(i);
                            dests.push(Some(SockaddrStorage::from(from)));
                        }
                    }
                    Local::Nothing => {}
                    Local::Forward(peers, peer, forward) => {
                        let Ok(reply_sock) = sock.try_clone() else {
                            continue;
                        };
                        let this = self.clone();
                        let original = query.to_vec();
                        rt.spawn(async move {
                            let mut r = Responder::with_cache_bytes(0);
                            let inc = Incoming {
                                bytes: &original,
                                client: from,
                                transport: Transport::Udp,
                                started,
                            };
                            if let Some(mut bytes) =
                                this.proxied(&mut r, &inc, peers, peer, forward).await
                            {
                                let now = now_secs(this.clock);
                                this.limits
                                    .extras
                                    .post(&seen, &mut bytes, from.ip(), true, now);
                                // A UDP send does not block for long: the kernel queues
                                // or drops it.
                                if this.rate_limit(&seen, from, &mut bytes, now) {
                                    let _ = reply_sock.send_to(&bytes, from);
                                }
                            }
                        });
                    }
                }
            }
            // Send every answer of the batch in one system call.
            let mut sent = 0;
            while sent < ready.len() {
                let slices: Vec<[IoSlice<'_>; 1]> = ready[sent..]
                    .iter()
                    .map(|&i| [IoSlice::new(&outs[i])])
                    .collect();
                let n = match sendmmsg(
                    fd,
                    &mut send_headers,
                    slices.iter(),
                    &dests[sent..],
                    [],
                    MsgFlags::empty(),
                ) {
                    Ok(res) => res.count(),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP send error");
                        // Skip the answer that failed (e.g. an unreachable address).
                        1
                    }
                };
                sent += n.max(1);
            }
        }
    }

    async fn tcp_accept(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let slots = Arc::new(Semaphore::new(self.limits.tcp_max_connections.max(1)));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.changed() => return,
            };
            let (stream, from) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(error = %e, "TCP accept error");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let this = self.clone();
            let sd = shutdown.clone();
            tokio::spawn(async move {
                this.tcp_open.fetch_add(1, Ordering::Relaxed);
                let reason = this.tcp_conn(stream, from, sd).await;
                this.tcp_open.fetch_sub(1, Ordering::Relaxed);
                if let Some(r) = reason {
                    this.observer.dropped(Transport::Tcp, r);
                }
                drop(permit);
            });
        }
    }

    /// Serves one TCP connection; returns why it was cut off, if it was.
    async fn tcp_conn(
        self: &Arc<Self>,
        mut stream: TcpStream,
        from: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<&'static str> {
        let _ = stream.set_nodelay(true);
        let mut responder = Responder::with_cache_bytes(self.limits.tcp_answer_cache_bytes);
        let mut buf = vec![0u8; self.limits.tcp_max_query.max(512)];
        let mut out = Vec::with_capacity(4096);
        let mut body = Vec::with_capacity(4096);
        let mut scratch = Vec::with_capacity(512);
        loop {
            let mut len = [0u8; 2];
            tokio::select! {
                r = tokio::time::timeout(self.limits.tcp_idle, stream.read_exact(&mut len)) => match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return None, // closed
                    Err(_) => return Some("tcp idle"),
                },
                _ = shutdown.changed() => return None,
            }
            let n = u16::from_be_bytes(len) as usize;
            if n > self.limits.tcp_max_query || n < 12 {
                return Some("tcp oversized or undersized length");
            }
            match tokio::time::timeout(self.limits.tcp_read, stream.read_exact(&mut buf[..n])).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return None,
                Err(_) => return Some("tcp slow client"),
            }
            let started = Instant::now();
            let now = now_secs(self.clock);
            let (seen, pre) =
                self.limits
                    .extras
                    .pre(&buf[..n], from.ip(), false, now, &mut scratch);
            let query: &[u8] = match pre {
                Pre::AsIs => &buf[..n],
                Pre::Rewritten | Pre::Reply => &scratch,
            };
            let inc = Incoming {
                bytes: query,
                client: from,
                transport: Transport::Tcp,
                started,
            };
            let local = if pre == Pre::Reply {
                Local::Reply(&scratch)
            } else {
                self.answer_local(&mut responder, &inc, AnswerPath::Local, true)
            };
            let answer: Option<Vec<u8>> = match local {
                Local::Reply(bytes) => {
                    body.clear();
                    body.extend_from_slice(bytes);
                    self.limits
                        .extras
                        .post(&seen, &mut body, from.ip(), false, now);
                    out.clear();
                    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
                    out.extend_from_slice(&body);
                    None
                }
                Local::Nothing => continue,
                Local::Forward(peers, peer, forward) => {
                    let answer = self
                        .proxied(&mut responder, &inc, peers, peer, forward)
                        .await;
                    if answer.is_none() {
                        continue;
                    }
                    answer
                }
            };
            if let Some(mut a) = answer {
                self.limits
                    .extras
                    .post(&seen, &mut a, from.ip(), false, now);
                out.clear();
                out.extend_from_slice(&(a.len() as u16).to_be_bytes());
                out.extend_from_slice(&a);
            }
            match tokio::time::timeout(self.limits.tcp_read, stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) => return Some("tcp slow reader"),
            }
        }
    }
}

impl Server {
    /// Response rate limiting of one UDP answer in `out` to `from`: whether to send it
    /// (it may have been turned into a truncated answer). Clients with a valid server
    /// cookie and the configured DNS peers are not limited.
    fn rate_limit(&self, seen: &Seen, from: SocketAddr, out: &mut Vec<u8>, now: u64) -> bool {
        let Some(rrl) = &self.rrl else { return true };
        if seen.valid_cookie {
            return true;
        }
        let verdict = rrl.check(from.ip(), out, now);
        if verdict == Verdict::Send {
            return true;
        }
        let from_peer = {
            let g = self.served.read().unwrap_or_else(|e| e.into_inner());
            g.peers
                .as_ref()
                .is_some_and(|p| p.addrs.iter().any(|a| a.ip() == from.ip()))
        };
        if from_peer {
            return true;
        }
        match verdict {
            Verdict::Slip => {
                let mut t = Vec::with_capacity(out.len().min(512));
                if crate::wire::truncated(out, None, &mut t).is_none() {
                    return false;
                }
                *out = t;
                true
            }
            _ => {
                self.observer.dropped(Transport::Udp, "rate limited");
                false
            }
        }
    }

    /// UDP answers sent truncated and dropped by response rate limiting so far.
    pub fn rrl_counts(&self) -> (u64, u64) {
        self.rrl.as_ref().map(|r| r.counts()).unwrap_or((0, 0))
    }
}

fn now_secs(clock: fn() -> Timestamp) -> u64 {
    clock().as_millis() / 1000
}

/// Queries received (and answers sent) per system call on a UDP socket.
const UDP_BATCH: usize = 32;

fn std_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(std::net::SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}

/// A query as received.
#[derive(Clone, Copy)]
struct Incoming<'a> {
    bytes: &'a [u8],
    client: SocketAddr,
    transport: Transport,
    started: Instant,
}

/// What answering locally produced.
enum Local<'r> {
    /// Send these bytes.
    Reply(&'r [u8]),
    /// Forward this query to that peer (of the peer set the decision was made with).
    Forward(Arc<Peers>, usize, Vec<u8>),
    /// Send nothing.
    Nothing,
}

/// Sends `query` to `addr` over UDP from a fresh socket and waits up to `timeout` for an
/// answer with the same id.
/// Sends `query` to the peer at `addr` and waits for its answer. The query leaves from
/// `me` (this server's own peer address) when it is of the peer's family and can be
/// bound, so the owner sees it come from a configured peer (which it believes the
/// proxied marker from, and exempts from rate limiting).
async fn forward_udp(
    addr: SocketAddr,
    me: Option<IpAddr>,
    query: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let any: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let own = me
        .filter(|ip| ip.is_ipv4() == addr.is_ipv4() && !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, 0));
    let sock = match own {
        Some(a) => match UdpSocket::bind(a).await {
            Ok(s) => s,
            Err(_) => UdpSocket::bind(any).await.ok()?,
        },
        None => UdpSocket::bind(any).await.ok()?,
    };
    sock.connect(addr).await.ok()?;
    sock.send(query).await.ok()?;
    let id = query.get(..2)?;
    let mut buf = vec![0u8; 65_535];
    tokio::time::timeout(timeout, async {
        loop {
            let n = sock.recv(&mut buf).await.ok()?;
            if buf.get(..2) == Some(id) {
                return Some(buf[..n].to_vec());
            }
        }
    })
    .await
    .ok()
    .flatten()
}
