//! FTP delivery: the edge's cache served over FTP (RFC 959) and FTPS (explicit
//! `AUTH TLS`, RFC 4217), anonymous and read-only.
//!
//! Two parts:
//! - **libunftp** speaks the protocol (passive data connections, `REST`, `SIZE`, `MDTM`,
//!   `LIST`, `MLSD`, `PROT P` data channels) with [`CacheStorage`] as its storage back
//!   end: a `RETR` is a `GET` through the edge's request path (`Edge::serve`: the same
//!   lookup, fill, coalescing, purge and access log as HTTP; `REST n` is
//!   `Range: bytes=n-`), `SIZE` and `MDTM` a `GET` of the first byte (which fills a
//!   cold object), and a listing names what the cache holds under a directory.
//! - **A control-connection relay** in front of it, on the public address: it caps
//!   sessions (in all and per client address), the command line (2048 bytes) and the
//!   time to log in; it answers `HOST` (RFC 7151) and `AUTH TLS` itself (TLS with the
//!   edge's per-hostname certificates, the name from `HOST` or SNI), refuses writes,
//!   `CCC`, and `PORT` / `EPRT` to any address but the client's own (FTP bounce), and
//!   turns the user name into the site: `USER anonymous@www.customer.com`,
//!   `USER www.customer.com`, or `USER anonymous` after `HOST`. libunftp listens on
//!   loopback and only takes connections the relay opened.

use super::{Edge, ReqBody, RespBody};
use async_trait::async_trait;
use bytes::{Buf as _, Bytes};
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use libunftp::options::Binder;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use unftp_core::auth::{
    AuthenticationError, Authenticator, Credentials, Principal, UserDetail, UserDetailError,
    UserDetailProvider,
};
use unftp_core::storage::{self, ErrorKind, Fileinfo, StorageBackend};

/// The longest command line accepted (bytes, with CRLF); a longer one closes the
/// connection.
pub const MAX_COMMAND_LINE: usize = 2048;
/// A reply line from libunftp longer than this is passed on as it is (not inspected).
const MAX_REPLY_LINE: usize = 64 << 10;

/// What the FTP listener offers and its limits.
#[derive(Debug, Clone)]
pub struct FtpOptions {
    /// The control connection's listen address.
    pub listen: SocketAddr,
    /// Ports for passive data connections (bound on the listen address's IP).
    pub passive_ports: RangeInclusive<u16>,
    /// The IPv4 address `PASV` names (default: the address the client connected to).
    pub passive_host: Option<Ipv4Addr>,
    /// Control connections at most.
    pub max_sessions: usize,
    /// Control connections from one client address at most.
    pub max_per_client: usize,
    /// A connection not logged in within this long is closed.
    pub login_timeout: Duration,
    /// A logged-in session with no command for this long is closed.
    pub idle_timeout: Duration,
    /// A download whose bytes stop arriving (from the cache or the fill) for this long
    /// is aborted.
    pub data_timeout: Duration,
    /// Entries in one `LIST` / `MLSD` at most.
    pub list_max: usize,
    /// `AUTH TLS` (and `PROT P` data channels) with this config; none: no FTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for FtpOptions {
    fn default() -> Self {
        FtpOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 2121)),
            passive_ports: 50000..=50100,
            passive_host: None,
            max_sessions: 256,
            max_per_client: 8,
            login_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(120),
            data_timeout: Duration::from_secs(30),
            list_max: 1000,
            tls: None,
        }
    }
}

/// A running FTP listener.
pub struct FtpHandle {
    /// The control connection's bound address.
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FtpHandle {
    /// Stops accepting connections.
    pub async fn shutdown(self) {
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// A logged-in FTP session's identity: the site (hostname) it reads and the client.
#[derive(Debug, Clone)]
pub struct FtpUser {
    host: String,
    client: SocketAddr,
}

impl fmt::Display for FtpUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "anonymous@{} from {}", self.host, self.client)
    }
}

impl UserDetail for FtpUser {}

/// Sessions the relay has opened towards libunftp: the relay's user name for each
/// (`udn-N`, never one a client chooses) maps to its site and client.
#[derive(Debug, Default)]
struct Sessions {
    next: AtomicU64,
    users: Mutex<HashMap<u64, FtpUser>>,
    /// The relay's local addresses of its connections to libunftp not yet accepted.
    expected: Mutex<HashSet<SocketAddr>>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    total: Mutex<usize>,
}

impl Sessions {
    fn user(&self, name: &str) -> Option<FtpUser> {
        let id: u64 = name.strip_prefix("udn-")?.parse().ok()?;
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}

/// A client's slot (in all and for its address), released on drop.
struct Slot {
    sessions: Arc<Sessions>,
    ip: IpAddr,
    id: Option<u64>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self
            .sessions
            .total
            .lock()
            .unwrap_or_else(|e| e.into_inner()) -= 1;
        let mut per = self
            .sessions
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
        if let Some(id) = self.id {
            self.sessions
                .users
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }
}

#[derive(Debug)]
struct RelayAuth(Arc<Sessions>);

#[async_trait]
impl Authenticator for RelayAuth {
    async fn authenticate(
        &self,
        username: &str,
        _creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        match self.0.user(username) {
            Some(_) => Ok(Principal {
                username: username.to_string(),
            }),
            None => Err(AuthenticationError::BadUser),
        }
    }
}

#[async_trait]
impl UserDetailProvider for RelayAuth {
    type User = FtpUser;
    async fn provide_user_detail(&self, p: &Principal) -> Result<FtpUser, UserDetailError> {
        self.0
            .user(&p.username)
            .ok_or_else(|| UserDetailError::UserNotFound {
                username: p.username.clone(),
            })
    }
}

/// Binds passive data sockets on the public listen address (libunftp would bind the
/// loopback address the relay reaches it on).
#[derive(Debug)]
struct PublicBinder {
    ip: IpAddr,
}

#[async_trait]
impl Binder for PublicBinder {
    async fn bind(&mut self, _local: IpAddr, ports: RangeInclusive<u16>) -> io::Result<TcpSocket> {
        let (lo, hi) = (*ports.start() as u32, *ports.end() as u32);
        let span = hi.saturating_sub(lo) + 1;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free passive port");
        // A random start, then each port of the range once at most (bounded).
        for i in 0..span.min(1024) {
            let port = lo + (seed.wrapping_add(i.wrapping_mul(7919)) % span);
            let s = match self.ip {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // A port whose last transfer is in TIME_WAIT can listen again.
            s.set_reuseaddr(true)?;
            match s.bind(SocketAddr::new(self.ip, port as u16)) {
                Ok(()) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The storage back end: the edge's cache, read-only.
#[derive(Clone)]
pub struct CacheStorage {
    edge: Arc<Edge>,
    list_max: usize,
    data_timeout: Duration,
}

impl fmt::Debug for CacheStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheStorage").finish_non_exhaustive()
    }
}

/// A file or directory as FTP shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    len: u64,
    dir: bool,
    modified: SystemTime,
}

impl storage::Metadata for Entry {
    fn len(&self) -> u64 {
        self.len
    }
    fn is_dir(&self) -> bool {
        self.dir
    }
    fn is_file(&self) -> bool {
        !self.dir
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> storage::Result<SystemTime> {
        Ok(self.modified)
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
    fn permissions(&self) -> storage::Permissions {
        storage::Permissions(if self.dir { 0o555 } else { 0o444 })
    }
}

fn denied() -> storage::Error {
    storage::Error::from(ErrorKind::PermissionDenied)
}

fn not_found() -> storage::Error {
    storage::Error::from(ErrorKind::PermanentFileNotAvailable)
}

/// The URL path of an FTP path: `.` and `..` resolved inside the site's root (never
/// above it), each segment percent-encoded. Control characters are refused.
pub fn url_path(p: &Path) -> Option<String> {
    let mut segs: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                segs.pop();
            }
            Component::Normal(s) => {
                let s = s.to_str()?;
                if s.chars().any(char::is_control) {
                    return None;
                }
                segs.push(s);
            }
        }
    }
    let mut out = String::new();
    for s in &segs {
        out.push('/');
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Decodes `%XX` escapes (a listing shows names, not URL segments).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn empty_req() -> ReqBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn modified_of(h: &http::HeaderMap) -> Option<SystemTime> {
    h.get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

impl CacheStorage {
    /// A request for `path` through the edge as `user`'s client; `start` is a `REST`
    /// offset (`u64::MAX`: the first byte only, for `SIZE`).
    async fn request(
        &self,
        user: &FtpUser,
        method: Method,
        path: &str,
        start: u64,
        label: &'static str,
    ) -> storage::Result<http::Response<RespBody>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &user.host)
            .header(header::USER_AGENT, "udn-ftp");
        if start == u64::MAX {
            b = b.header(header::RANGE, "bytes=0-0");
        } else if start > 0 {
            b = b.header(header::RANGE, format!("bytes={start}-"));
        }
        let req = b.body(empty_req()).map_err(|_| not_found())?;
        Ok(self.edge.serve(req, user.client, Some(label)).await)
    }

    /// The body of `path` from `start` (and how many bytes of it to drop, when the
    /// response is not the range asked for); `None`: nothing left after `start`.
    async fn open(
        &self,
        user: &FtpUser,
        path: &Path,
        start: u64,
    ) -> storage::Result<Option<(RespBody, u64)>> {
        let path = url_path(path).ok_or_else(not_found)?;
        let resp = self
            .request(user, Method::GET, &path, start, "RETR")
            .await?;
        let skip = match resp.status() {
            StatusCode::OK => start,
            StatusCode::PARTIAL_CONTENT => 0,
            // REST at (or past) the end: nothing left to send.
            StatusCode::RANGE_NOT_SATISFIABLE => return Ok(None),
            StatusCode::FORBIDDEN => return Err(denied()),
            s if s.is_server_error() => {
                return Err(storage::Error::from(ErrorKind::TransientFileNotAvailable));
            }
            _ => return Err(not_found()),
        };
        Ok(Some((resp.into_body(), skip)))
    }

    /// A directory the cache holds something under.
    async fn known_dir(&self, user: &FtpUser, path: &str) -> bool {
        if path == "/" {
            return true;
        }
        match self.edge.route_for(&user.host, &format!("{path}/")) {
            Ok(r) => !self.edge.known_under(&r, 1).await.is_empty(),
            Err(_) => false,
        }
    }
}

#[async_trait]
impl StorageBackend<FtpUser> for CacheStorage {
    type Metadata = Entry;

    fn supported_features(&self) -> u32 {
        storage::FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> storage::Result<Entry> {
        let path = url_path(path.as_ref()).ok_or_else(not_found)?;
        if self.known_dir(user, &path).await {
            return Ok(Entry {
                len: 0,
                dir: true,
                modified: SystemTime::UNIX_EPOCH,
            });
        }
        // A GET of the first byte, not a HEAD: a cold object is filled into the cache
        // (SIZE usually comes before RETR) rather than asked of the origin twice. The
        // body is never read, so the record shows no bytes sent.
        let resp = self
            .request(user, Method::GET, &path, u64::MAX, "SIZE")
            .await?;
        let h = resp.headers();
        let len = |name| {
            h.get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        match resp.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                let len = match resp.status() {
                    // `bytes 0-0/TOTAL`
                    StatusCode::PARTIAL_CONTENT => len(header::CONTENT_RANGE)
                        .and_then(|v| v.rsplit_once('/').and_then(|(_, t)| t.parse().ok())),
                    _ => len(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
                }
                .unwrap_or(0);
                Ok(Entry {
                    len,
                    dir: false,
                    modified: modified_of(resp.headers()).unwrap_or(SystemTime::UNIX_EPOCH),
                })
            }
            StatusCode::FORBIDDEN => Err(denied()),
            s if s.is_server_error() => {
                Err(storage::Error::from(ErrorKind::TransientFileNotAvailable))
            }
            _ => Err(not_found()),
        }
    }

    async fn list<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> storage::Result<Vec<Fileinfo<PathBuf, Entry>>> {
        let path = url_path(path.as_ref()).ok_or_else(not_found)?;
        let dir = if path == "/" {
            path
        } else {
            format!("{path}/")
        };
        let route = self
            .edge
            .route_for(&user.host, &dir)
            .map_err(|_| not_found())?;
        let mut out: Vec<Fileinfo<PathBuf, Entry>> = Vec::new();
        let mut dirs = HashSet::new();
        for (rest, len, meta) in self.edge.known_under(&route, self.list_max).await {
            if rest.is_empty() || rest.contains('?') {
                continue;
            }
            let modified = modified_of(&meta.headers).unwrap_or_else(|| {
                SystemTime::UNIX_EPOCH + Duration::from_millis(meta.response_time.0)
            });
            match rest.split_once('/') {
                None => out.push(Fileinfo {
                    path: PathBuf::from(percent_decode(&rest)),
                    metadata: Entry {
                        len,
                        dir: false,
                        modified,
                    },
                }),
                Some((d, _)) => {
                    if !d.is_empty() && dirs.insert(d.to_string()) {
                        out.push(Fileinfo {
                            path: PathBuf::from(percent_decode(d)),
                            metadata: Entry {
                                len: 0,
                                dir: true,
                                modified,
                            },
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn get<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        user: &FtpUser,
        path: P,
        start: u64,
    ) -> storage::Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        let Some((body, skip)) = self.open(user, path.as_ref(), start).await? else {
            return Ok(Box::new(tokio::io::empty()));
        };
        Ok(Box::new(BodyReader {
            inner: Mutex::new(ReaderState {
                body,
                chunk: Bytes::new(),
                skip,
                timer: Box::pin(tokio::time::sleep(self.data_timeout)),
                timeout: self.data_timeout,
                done: false,
            }),
        }))
    }

    /// `RETR`: the body's chunks written to the data connection as they come (no copy
    /// through a reader's buffer); a chunk that does not arrive, or is not taken by the
    /// client, within the data timeout aborts the transfer.
    async fn get_into<'a, P, W: ?Sized>(
        &self,
        user: &FtpUser,
        path: P,
        start: u64,
        output: &'a mut W,
    ) -> storage::Result<u64>
    where
        W: AsyncWrite + Unpin + Sync + Send,
        P: AsRef<Path> + Send + fmt::Debug,
    {
        let Some((mut body, mut skip)) = self.open(user, path.as_ref(), start).await? else {
            return Ok(0);
        };
        let stalled = || {
            storage::Error::new(
                ErrorKind::LocalError,
                io::Error::new(io::ErrorKind::TimedOut, "data timeout"),
            )
        };
        let mut sent = 0u64;
        loop {
            let frame = match tokio::time::timeout(self.data_timeout, body.frame()).await {
                Err(_) => return Err(stalled()),
                Ok(None) => return Ok(sent),
                Ok(Some(Err(e))) => return Err(storage::Error::new(ErrorKind::LocalError, e)),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(mut d) = frame.into_data() else {
                continue;
            };
            if skip > 0 {
                let k = skip.min(d.len() as u64) as usize;
                d.advance(k);
                skip -= k as u64;
            }
            match tokio::time::timeout(self.data_timeout, output.write_all(&d)).await {
                Err(_) => return Err(stalled()),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(())) => sent += d.len() as u64,
            }
        }
    }

    async fn put<
        P: AsRef<Path> + Send + fmt::Debug,
        R: AsyncRead + Send + Sync + Unpin + 'static,
    >(
        &self,
        _user: &FtpUser,
        _input: R,
        _path: P,
        _start: u64,
    ) -> storage::Result<u64> {
        Err(denied())
    }

    async fn del<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &FtpUser,
        _path: P,
    ) -> storage::Result<()> {
        Err(denied())
    }

    async fn mkd<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &FtpUser,
        _path: P,
    ) -> storage::Result<()> {
        Err(denied())
    }

    async fn rename<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &FtpUser,
        _from: P,
        _to: P,
    ) -> storage::Result<()> {
        Err(denied())
    }

    async fn rmd<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &FtpUser,
        _path: P,
    ) -> storage::Result<()> {
        Err(denied())
    }

    async fn cwd<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &FtpUser,
        path: P,
    ) -> storage::Result<()> {
        url_path(path.as_ref()).map(|_| ()).ok_or_else(not_found)
    }
}

struct ReaderState {
    body: RespBody,
    chunk: Bytes,
    /// Bytes still to drop (a `REST` the response did not honour with a range).
    skip: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
}

/// A response body as an `AsyncRead` (libunftp copies it to the data connection); the
/// body's access-log record is written when the reader is dropped. A `Mutex` makes it
/// `Sync` as libunftp asks (it is never contended).
struct BodyReader {
    inner: Mutex<ReaderState>,
}

impl AsyncRead for BodyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !st.chunk.is_empty() {
                let n = st.chunk.len().min(buf.remaining());
                buf.put_slice(&st.chunk[..n]);
                st.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            if st.done {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut st.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    let deadline = tokio::time::Instant::now() + st.timeout;
                    st.timer.as_mut().reset(deadline);
                    if let Ok(mut d) = f.into_data() {
                        if st.skip > 0 {
                            let k = (st.skip.min(d.len() as u64)) as usize;
                            d.advance(k);
                            st.skip -= k as u64;
                        }
                        st.chunk = d;
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => st.done = true,
                Poll::Pending => {
                    return match st.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no bytes arrived within the data timeout",
                        ))),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Binds `opts.listen` and serves `edge` over FTP until the handle is shut down.
pub async fn start_ftp(edge: Arc<Edge>, opts: FtpOptions) -> Result<FtpHandle, crate::Error> {
    let public = TcpListener::bind(opts.listen).await?;
    let addr = public.local_addr()?;
    let inner = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let inner_addr = inner.local_addr()?;
    let sessions = Arc::new(Sessions::default());
    // FTPS: no ALPN (FTP clients send none, or "ftp").
    let tls = opts.tls.as_ref().map(|c| {
        let mut c = (**c).clone();
        c.alpn_protocols.clear();
        Arc::new(c)
    });
    let storage = CacheStorage {
        edge: edge.clone(),
        list_max: opts.list_max,
        data_timeout: opts.data_timeout,
    };
    let auth = Arc::new(RelayAuth(sessions.clone()));
    let opts = Arc::new(FtpOptions { tls, ..opts });
    let inner_task = {
        let (sessions, opts) = (sessions.clone(), opts.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, peer)) = inner.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // Only the relay's own connections (not any local process).
                let expected = sessions
                    .expected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&peer);
                if !expected {
                    continue;
                }
                let storage = storage.clone();
                let mut b = libunftp::ServerBuilder::with_user_detail_provider(
                    Box::new(move || storage.clone()),
                    auth.clone() as Arc<dyn UserDetailProvider<User = FtpUser> + Send + Sync>,
                )
                .authenticator(auth.clone())
                .greeting("UDN edge FTP service ready")
                .logger(slog::Logger::root(slog::Discard, slog::o!()))
                .passive_ports(opts.passive_ports.clone())
                .passive_host(libunftp::options::PassiveHost::Ip(Ipv4Addr::LOCALHOST))
                .binder(PublicBinder {
                    ip: opts.listen.ip(),
                })
                .idle_session_timeout(opts.idle_timeout.as_secs().max(1));
                if let Some(cfg) = &opts.tls {
                    b = b.ftps_manual::<PathBuf>(cfg.clone());
                }
                match b.build() {
                    Ok(server) => {
                        tokio::spawn(async move {
                            let _ = server.service(s).await;
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "FTP session setup failed"),
                }
            }
        })
    };
    let ctx = Arc::new(Relay {
        opts,
        sessions,
        inner_addr,
        edge,
    });
    let relay_task = tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = public.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = ctx.session(s, peer).await {
                    tracing::debug!(%peer, error = %e, "FTP session ended");
                }
            });
        }
    });
    Ok(FtpHandle {
        addr,
        tasks: vec![relay_task, inner_task],
    })
}

/// The client's side of a control connection: plain, or TLS after `AUTH TLS`.
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Closes after a refusal so that the client reads it: shuts the sending side, then
/// reads and drops what the client still sends (at most 64 KiB, 1 s), so the close is
/// no reset that would discard the reply.
async fn linger_close(client: &mut ClientStream) {
    let _ = client.flush().await;
    let _ = client.shutdown().await;
    let mut buf = [0u8; 4096];
    let mut left = 64usize << 10;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while left > 0 {
        match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

struct Relay {
    opts: Arc<FtpOptions>,
    sessions: Arc<Sessions>,
    inner_addr: SocketAddr,
    edge: Arc<Edge>,
}

/// What the relay does with one command line.
enum Act {
    /// Send this line to libunftp.
    Forward(String),
    /// Answer the client with this reply.
    Reply(String),
    /// Answer `234` and start TLS.
    StartTls,
}

/// Per-connection state of the relay.
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    /// From `HOST` or the TLS SNI.
    host: Option<String>,
    user_sent: bool,
    logged_in: bool,
    feat: bool,
}

/// `a,b,c,d,p1,p2` (PORT) as an address.
fn parse_port(arg: &str) -> Option<SocketAddr> {
    let v: Vec<u8> = arg
        .split(',')
        .map(|x| x.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .ok()?;
    if v.len() != 6 {
        return None;
    }
    let ip = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
    Some(SocketAddr::from((
        ip,
        u16::from(v[4]) << 8 | u16::from(v[5]),
    )))
}

/// `|1|ip|port|` or `|2|ip|port|` (EPRT, RFC 2428) as an address.
fn parse_eprt(arg: &str) -> Option<SocketAddr> {
    let d = arg.chars().next()?;
    let parts: Vec<&str> = arg.split(d).collect();
    if parts.len() != 5 {
        return None;
    }
    let ip: IpAddr = parts[2].parse().ok()?;
    let port: u16 = parts[3].parse().ok()?;
    match (parts[1], ip) {
        ("1", IpAddr::V4(_)) | ("2", IpAddr::V6(_)) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A plausible hostname (what `HOST` or a user name may carry).
fn hostname_like(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

impl Relay {
    /// A hostname this edge serves (as HTTP would route it), lower-cased.
    fn known_host(&self, h: &str) -> Option<String> {
        let h = h.trim().to_ascii_lowercase();
        (hostname_like(&h) && self.edge.route_for(&h, "/").is_ok()).then_some(h)
    }

    fn command(&self, c: &mut Conn, line: &str, slot: &mut Slot) -> Act {
        let (cmd, arg) = match line.split_once(' ') {
            Some((c, a)) => (c.to_ascii_uppercase(), a.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        match cmd.as_str() {
            "HOST" => {
                if c.user_sent || c.logged_in {
                    return Act::Reply("503 HOST must come before USER.".into());
                }
                match self.known_host(arg) {
                    Some(h) => {
                        c.host = Some(h);
                        Act::Reply("220 Host accepted.".into())
                    }
                    None => Act::Reply("504 Unknown host.".into()),
                }
            }
            "AUTH" => {
                let m = arg.to_ascii_uppercase();
                if c.tls {
                    Act::Reply("503 TLS is on already.".into())
                } else if self.opts.tls.is_none() {
                    Act::Reply("502 TLS is not offered here.".into())
                } else if m == "TLS" || m == "TLS-C" || m == "SSL" {
                    Act::StartTls
                } else {
                    Act::Reply("504 AUTH TLS only.".into())
                }
            }
            "CCC" => Act::Reply("534 The control connection stays encrypted.".into()),
            "USER" => {
                if c.user_sent || c.logged_in {
                    return Act::Reply("503 Already logged in.".into());
                }
                let (user, named) = match arg.rsplit_once('@') {
                    Some((u, h)) => (u, Some(h)),
                    None if arg.contains('.') => ("", Some(arg)),
                    None => (arg, None),
                };
                let user = user.to_ascii_lowercase();
                if !(user.is_empty() || user == "anonymous" || user == "ftp") {
                    return Act::Reply(
                        "530 Only anonymous login (user anonymous@HOSTNAME, or HOST first).".into(),
                    );
                }
                let host = match named {
                    Some(h) => match self.known_host(h) {
                        Some(h) => h,
                        None => return Act::Reply("530 Unknown site.".into()),
                    },
                    None => match &c.host {
                        Some(h) => h.clone(),
                        // Single-origin mode serves any name: use the address.
                        None => match self.known_host(&c.local.to_string()) {
                            Some(h) => h,
                            None => {
                                return Act::Reply(
                                    "530 Name the site: USER anonymous@HOSTNAME, or HOST HOSTNAME first."
                                        .into(),
                                );
                            }
                        },
                    },
                };
                let id = self.sessions.next.fetch_add(1, Ordering::Relaxed);
                self.sessions
                    .users
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        id,
                        FtpUser {
                            host,
                            client: c.peer,
                        },
                    );
                slot.id = Some(id);
                c.user_sent = true;
                Act::Forward(format!("USER udn-{id}"))
            }
            "PORT" | "EPRT" => {
                let target = if cmd == "PORT" {
                    parse_port(arg)
                } else {
                    parse_eprt(arg)
                };
                let Some(t) = target else {
                    return Act::Reply("501 Bad address.".into());
                };
                if canonical_ip(t.ip()) != canonical_ip(c.peer.ip()) || t.port() < 1024 {
                    tracing::info!(peer = %c.peer, target = %t, "FTP bounce refused");
                    return Act::Reply(
                        "504 The data address must be your own (no third-party transfers).".into(),
                    );
                }
                match t {
                    // libunftp speaks PORT only.
                    SocketAddr::V4(v4) => {
                        let o = v4.ip().octets();
                        Act::Forward(format!(
                            "PORT {},{},{},{},{},{}",
                            o[0],
                            o[1],
                            o[2],
                            o[3],
                            v4.port() >> 8,
                            v4.port() & 0xff
                        ))
                    }
                    SocketAddr::V6(_) => Act::Reply("522 Use EPSV (IPv4 active mode only).".into()),
                }
            }
            "STOR" | "STOU" | "APPE" | "DELE" | "MKD" | "XMKD" | "RMD" | "XRMD" | "RNFR"
            | "RNTO" | "SITE" => Act::Reply("550 This server is read-only.".into()),
            "FEAT" => {
                c.feat = true;
                Act::Forward(line.to_string())
            }
            _ => Act::Forward(line.to_string()),
        }
    }

    /// A reply line from libunftp as the client sees it.
    fn reply(&self, c: &mut Conn, line: &str) -> String {
        if line.starts_with("230 ") {
            c.logged_in = true;
        }
        if c.feat && line.starts_with("211 ") {
            c.feat = false;
            return format!(" HOST\r\n{line}");
        }
        if let Some(rest) = line.strip_prefix("227 ")
            && let (Some(a), Some(b)) = (rest.find('('), rest.find(')'))
            && a < b
        {
            let nums: Vec<&str> = rest[a + 1..b].split(',').collect();
            let ip = self.opts.passive_host.or(match canonical_ip(c.local.ip()) {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            });
            if nums.len() == 6
                && let Some(ip) = ip
            {
                let o = ip.octets();
                return format!(
                    "227 Entering Passive Mode ({},{},{},{},{},{}).\r\n",
                    o[0],
                    o[1],
                    o[2],
                    o[3],
                    nums[4].trim(),
                    nums[5].trim()
                );
            }
        }
        line.to_string()
    }

    async fn session(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let local = tcp.local_addr()?;
        let mut client = ClientStream::Plain(tcp);
        let ip = canonical_ip(peer.ip());
        // The caps.
        let refusal: Option<&[u8]> = {
            let mut total = self
                .sessions
                .total
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut per = self
                .sessions
                .per_client
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mine = per.get(&ip).copied().unwrap_or(0);
            if *total >= self.opts.max_sessions {
                Some(b"421 Too many connections, try later.\r\n")
            } else if mine >= self.opts.max_per_client {
                Some(b"421 Too many connections from your address.\r\n")
            } else {
                *total += 1;
                per.insert(ip, mine + 1);
                None
            }
        };
        if let Some(r) = refusal {
            tracing::info!(%peer, "FTP connection refused: session cap");
            let _ = client.write_all(r).await;
            return Ok(());
        }
        let mut slot = Slot {
            sessions: self.sessions.clone(),
            ip,
            id: None,
        };
        let up_sock = TcpSocket::new_v4()?;
        up_sock.bind((Ipv4Addr::LOCALHOST, 0).into())?;
        let me = up_sock.local_addr()?;
        self.sessions
            .expected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(me);
        let up = up_sock.connect(self.inner_addr).await;
        let mut up = match up {
            Ok(u) => u,
            Err(e) => {
                self.sessions
                    .expected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&me);
                let _ = client.write_all(b"421 Service not available.\r\n").await;
                return Err(e);
            }
        };
        let mut c = Conn {
            peer,
            local,
            tls: false,
            host: None,
            user_sent: false,
            logged_in: false,
            feat: false,
        };
        let login_deadline = tokio::time::Instant::now() + self.opts.login_timeout;
        let (mut cline, mut uline) = (Vec::<u8>::new(), Vec::<u8>::new());
        let (mut cbuf, mut ubuf) = (vec![0u8; 4096], vec![0u8; 16384]);
        loop {
            let logged_in = c.logged_in;
            let login_wait = async move {
                if logged_in {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep_until(login_deadline).await
                }
            };
            tokio::select! {
                _ = login_wait => {
                    let _ = client.write_all(b"421 Login timeout: closing the connection.\r\n").await;
                    linger_close(&mut client).await;
                    return Ok(());
                }
                r = client.read(&mut cbuf) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    cline.extend_from_slice(&cbuf[..n]);
                    while let Some(pos) = cline.iter().position(|&b| b == b'\n') {
                        let raw: Vec<u8> = cline.drain(..=pos).collect();
                        if raw.len() > MAX_COMMAND_LINE {
                            let _ = client.write_all(b"500 Command line too long.\r\n").await;
                            linger_close(&mut client).await;
                            return Ok(());
                        }
                        let Ok(text) = std::str::from_utf8(&raw) else {
                            client.write_all(b"501 Commands are UTF-8.\r\n").await?;
                            continue;
                        };
                        let text = text.trim_end_matches(['\r', '\n']);
                        match self.command(&mut c, text, &mut slot) {
                            Act::Forward(l) => {
                                up.write_all(l.as_bytes()).await?;
                                up.write_all(b"\r\n").await?;
                            }
                            Act::Reply(r) => {
                                client.write_all(r.as_bytes()).await?;
                                client.write_all(b"\r\n").await?;
                            }
                                            Act::StartTls => {
                                client.write_all(b"234 AUTH TLS OK.\r\n").await?;
                                client.flush().await?;
                                // Anything pipelined after AUTH was sent in clear: dropped.
                                cline.clear();
                                let ClientStream::Plain(tcp) = client else {
                                    return Ok(());
                                };
                                let Some(cfg) = self.opts.tls.clone() else {
                                    return Ok(());
                                };
                                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                                let left = login_deadline
                                    .saturating_duration_since(tokio::time::Instant::now())
                                    .max(Duration::from_secs(1));
                                let tls = match tokio::time::timeout(left, acceptor.accept(tcp)).await {
                                    Ok(Ok(t)) => t,
                                    Ok(Err(e)) => return Err(e),
                                    Err(_) => return Ok(()),
                                };
                                if c.host.is_none()
                                    && let Some(h) = tls.get_ref().1.server_name().and_then(|n| self.known_host(n))
                                {
                                    c.host = Some(h);
                                }
                                c.tls = true;
                                client = ClientStream::Tls(Box::new(tls));
                                break;
                            }
                        }
                    }
                    if cline.len() > MAX_COMMAND_LINE {
                        let _ = client.write_all(b"500 Command line too long.\r\n").await;
                            linger_close(&mut client).await;
                        return Ok(());
                    }
                }
                r = up.read(&mut ubuf) => {
                    let n = r?;
                    if n == 0 {
                        let _ = client.shutdown().await;
                        return Ok(());
                    }
                    uline.extend_from_slice(&ubuf[..n]);
                    while let Some(pos) = uline.iter().position(|&b| b == b'\n') {
                        let raw: Vec<u8> = uline.drain(..=pos).collect();
                        let out = match std::str::from_utf8(&raw) {
                            Ok(t) => self.reply(&mut c, t),
                            Err(_) => String::from_utf8_lossy(&raw).into_owned(),
                        };
                        client.write_all(out.as_bytes()).await?;
                    }
                    if uline.len() > MAX_REPLY_LINE {
                        client.write_all(&uline).await?;
                        uline.clear();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_site_and_are_encoded() {
        let p = |s: &str| url_path(Path::new(s));
        assert_eq!(p("/pub/a.txt").as_deref(), Some("/pub/a.txt"));
        assert_eq!(p("../../etc/passwd").as_deref(), Some("/etc/passwd"));
        assert_eq!(p("/a/../../../b").as_deref(), Some("/b"));
        assert_eq!(p("/").as_deref(), Some("/"));
        assert_eq!(p("..").as_deref(), Some("/"));
        assert_eq!(p("/x/./y z?q#f%").as_deref(), Some("/x/y%20z%3Fq%23f%25"));
        assert_eq!(p("/caf\u{e9}").as_deref(), Some("/caf%C3%A9"));
        assert_eq!(p("/a\rb"), None);
        assert_eq!(p("/a\nb"), None);
        assert_eq!(percent_decode("y%20z%3Fq%C3%A9%zz%4"), "y z?q\u{e9}%zz%4");
    }

    #[test]
    fn port_and_eprt_arguments() {
        assert_eq!(
            parse_port("127,0,0,1,200,10"),
            Some("127.0.0.1:51210".parse().unwrap())
        );
        assert_eq!(parse_port("127,0,0,1,200"), None);
        assert_eq!(parse_port("127,0,0,1,300,1"), None);
        assert_eq!(parse_port(""), None);
        assert_eq!(
            parse_eprt("|1|127.0.0.2|2121|"),
            Some("127.0.0.2:2121".parse().unwrap())
        );
        assert_eq!(
            parse_eprt("|2|::1|2121|"),
            Some("[::1]:2121".parse().unwrap())
        );
        assert_eq!(parse_eprt("|1|::1|2121|"), None);
        assert_eq!(parse_eprt("|1|127.0.0.1|99999|"), None);
        assert_eq!(parse_eprt(""), None);
        assert_eq!(
            canonical_ip("::ffff:127.0.0.1".parse().unwrap()),
            IpAddr::from([127, 0, 0, 1])
        );
    }

    #[test]
    fn hostnames() {
        assert!(hostname_like("www.shop.example"));
        assert!(hostname_like("127.0.0.1:2121"));
        assert!(!hostname_like(""));
        assert!(!hostname_like("a b"));
        assert!(!hostname_like("a/b"));
        assert!(!hostname_like(&"a".repeat(254)));
    }
}
