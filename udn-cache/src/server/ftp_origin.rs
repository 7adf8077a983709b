//! FTP origins: `ftp://[user[:password]@]host[:port][/dir]` in a CDN hostname's
//! `origin_urls` (or `udn edge --origin ftp://...`), fetched with suppaftp and turned
//! into the HTTP response the rest of the edge works with, so fills, coalescing,
//! purges, prefills, Range and logging are the same as for HTTP origins.
//!
//! * **One session per fetch**: connect (within the connect timeout), greeting, `USER`
//!   / `PASS` (anonymous unless the URL names a user), `TYPE I`, `SIZE` and `MDTM`
//!   (within the login timeout), then `PASV` (or `EPSV` over IPv6) and `RETR`, with
//!   `REST` first for a range; every read of the data connection within the transfer
//!   timeout. The body is handed on as it arrives (a bounded channel: the origin is
//!   read at the pace the fill writes).
//! * **Validators**: `SIZE` gives `Content-Length`, `MDTM` gives `Last-Modified`, both
//!   together a strong `ETag` (`"ftp-<size>-<mtime>"`). A revalidation
//!   (`If-None-Match` / `If-Modified-Since`) is answered `304` from `SIZE` and `MDTM`
//!   alone: no `RETR`. Freshness is the heuristic one (a share of the file's age), as
//!   for any response with `Last-Modified` and no `Cache-Control`.
//! * **Target policy**: the host's addresses go through the same
//!   [`TargetPolicy`](udn_core::netpolicy::TargetPolicy) as HTTP origins; the data
//!   connection goes to the control connection's peer address only, at the port the
//!   server names: an address in a `PASV` reply is never connected to (the FTP
//!   bounce), so a server cannot point the edge at a third host.
//! * **Paths**: the request path (without its query) is percent-decoded; one that
//!   decodes to a control character (`%0d%0a` would end the FTP command line and start
//!   another) or to invalid UTF-8 is refused with `400`, before any connection.
//! * **Replies**: `550` (no such file) is `404`; any other refusal (`530` bad login,
//!   ...) is `502` naming the FTP reply; an unreachable server `502`, a timeout `504`.

use super::body::{empty, stream_body};
use super::fill::FetchError;
use super::{RespBody, simple};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use suppaftp::tokio::AsyncFtpStream;
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use udn_core::netpolicy::TargetPolicy;

/// The timeouts of one FTP fetch.
#[derive(Clone, Copy, Debug)]
pub(super) struct FtpTimeouts {
    /// Name resolution and the TCP connection of the control channel.
    pub connect: Duration,
    /// Greeting, login and each command before the transfer (`SIZE`, `MDTM`, opening
    /// the data connection).
    pub login: Duration,
    /// Each read of the data connection, and the completion reply.
    pub transfer: Duration,
}

/// Data read from the data connection at once.
const CHUNK: usize = 256 * 1024;

/// Where one fetch goes: decoded from the fetch URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
    path: String,
}

/// Percent-decodes `s`; `None` on a bad escape, invalid UTF-8, or a control character.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.chars().any(char::is_control)).then_some(s)
}

/// Splits `ftp://[user[:password]@]host[:port]/path[?query]`.
fn parse(url: &str) -> Option<Target> {
    let rest = url.strip_prefix("ftp://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((a, b)) => (decode(a)?, decode(b)?),
            None => (decode(u)?, String::new()),
        },
        None => ("anonymous".to_string(), "udn@".to_string()),
    };
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (h, p) = v6.split_once(']')?;
            (h, p.strip_prefix(':'))
        }
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok().filter(|&p| p != 0)?,
        None => 21,
    };
    if host.is_empty() {
        return None;
    }
    Some(Target {
        host: host.to_string(),
        port,
        user,
        password,
        path: decode(path)?,
    })
}

/// What the request asks beyond the file: a byte range (start, inclusive end) and
/// whether its `If-Range` still holds.
fn requested_range(
    req: &HeaderMap,
    etag: Option<&str>,
    lm: Option<&str>,
) -> Option<(u64, Option<u64>)> {
    let spec = req
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .trim()
        .strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    if let Some(v) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if Some(v) != etag && Some(v) != lm {
            return None;
        }
    }
    let (a, b) = spec.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let end = match b.trim() {
        "" => None,
        e => Some(e.parse().ok()?),
    };
    Some((start, end))
}

/// Whether a conditional request is answered `304` by these validators.
fn not_modified(req: &HeaderMap, etag: Option<&str>, mtime: Option<SystemTime>) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return etag.is_some_and(|e| {
            inm.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == e)
        });
    }
    match (
        req.get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        mtime,
    ) {
        (Some(since), Some(m)) => m <= since,
        _ => false,
    }
}

/// A content type from the file name, for the types a CDN commonly serves.
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("mpd") => "application/dash+xml",
        Some("ts") => "video/mp2t",
        Some("mp4" | "m4s" | "m4v") => "video/mp4",
        Some("m4a") => "audio/mp4",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("gz" | "tgz") => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// A refusal reply as the fetch's error: `550` is "no such file" (a 404 response,
/// `Ok`), any other reply code the FTP reply, anything else unreachable.
fn reply_error(e: FtpError) -> Result<Response<RespBody>, FetchError> {
    match e {
        FtpError::UnexpectedResponse(r) if r.status.code() == 550 => Ok(simple(
            StatusCode::NOT_FOUND,
            "not found at the FTP origin (550)",
        )),
        FtpError::UnexpectedResponse(r) => Err(FetchError::FtpReply(
            r.status.code().min(u16::MAX as u32) as u16,
        )),
        e => {
            tracing::debug!(error = %e, "FTP origin session failed");
            Err(FetchError::Unreachable)
        }
    }
}

/// Resolves the target's host and connects to the first address the policy allows.
async fn connect(t: &Target, policy: &TargetPolicy) -> Result<TcpStream, FetchError> {
    let addrs: Vec<SocketAddr> = match t.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, t.port)],
        Err(_) => tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|_| FetchError::Unreachable)?
            .collect(),
    };
    let mut refused = None;
    for a in addrs {
        if let Err(range) = policy.check(a.ip()) {
            refused.get_or_insert(range);
            continue;
        }
        if let Ok(s) = TcpStream::connect(a).await {
            return Ok(s);
        }
    }
    match refused {
        Some(range) => {
            tracing::warn!(host = %t.host, range = range.as_str(),
                "FTP origin refused: its address is not a permitted target");
            Err(FetchError::Refused(range))
        }
        None => Err(FetchError::Unreachable),
    }
}

/// One fetch from an FTP origin, answered as an HTTP origin would answer `method`
/// with `req`'s conditionals and `Range` (see the [module docs](self)).
pub(super) async fn fetch(
    url: &str,
    method: &Method,
    req: &HeaderMap,
    policy: &TargetPolicy,
    timeouts: FtpTimeouts,
) -> Result<Response<RespBody>, FetchError> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = simple(
            StatusCode::METHOD_NOT_ALLOWED,
            "an FTP origin serves GET and HEAD only",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let Some(t) = parse(url) else {
        return Ok(simple(
            StatusCode::BAD_REQUEST,
            "path not allowed for an FTP origin (bad escape or control character)",
        ));
    };
    let tcp = match tokio::time::timeout(timeouts.connect, connect(&t, policy)).await {
        Err(_) => return Err(FetchError::Timeout),
        Ok(r) => r?,
    };
    let peer = tcp.peer_addr().map_err(|_| FetchError::Unreachable)?.ip();
    let session = async {
        let ftp = AsyncFtpStream::connect_with_stream(tcp).await?;
        // The data connection: the control connection's peer, at the named port.
        let mut ftp = ftp.passive_stream_builder(move |named: SocketAddr| {
            Box::pin(async move {
                if named.ip() != peer {
                    tracing::warn!(%named, %peer,
                        "FTP origin named another host for its data connection: its own address is used");
                }
                TcpStream::connect(SocketAddr::new(peer, named.port()))
                    .await
                    .map_err(FtpError::ConnectionError)
            })
        });
        ftp.set_mode(if peer.is_ipv4() {
            Mode::Passive
        } else {
            Mode::ExtendedPassive
        });
        ftp.login(t.user.as_str(), t.password.as_str()).await?;
        ftp.transfer_type(FileType::Binary).await?;
        let size = match ftp.size(&t.path).await {
            Ok(n) => Some(n as u64),
            Err(FtpError::UnexpectedResponse(r)) if r.status.code() == 550 => {
                return Err(FtpError::UnexpectedResponse(r));
            }
            // A server without SIZE (RFC 3659): the length is not known.
            Err(_) => None,
        };
        let mtime = ftp
            .mdtm(&t.path)
            .await
            .ok()
            .and_then(|m| u64::try_from(m.and_utc().timestamp()).ok())
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        Ok((ftp, size, mtime))
    };
    let (mut ftp, size, mtime) = match tokio::time::timeout(timeouts.login, session).await {
        Err(_) => return Err(FetchError::Timeout),
        Ok(Err(e)) => return reply_error(e),
        Ok(Ok(s)) => s,
    };
    let etag = match (size, mtime) {
        (Some(n), Some(m)) => {
            let secs = m.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            Some(format!("\"ftp-{n}-{secs}\""))
        }
        _ => None,
    };
    let last_modified = mtime.map(httpdate::fmt_http_date);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::DATE,
        HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
            .unwrap_or(HeaderValue::from_static("")),
    );
    for (n, v) in [
        (header::ETAG, etag.as_deref()),
        (header::LAST_MODIFIED, last_modified.as_deref()),
    ] {
        if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(n, v);
        }
    }
    let quit = |mut ftp: AsyncFtpStream| async move {
        let _ = tokio::time::timeout(Duration::from_millis(500), ftp.quit()).await;
    };
    if not_modified(req, etag.as_deref(), mtime) {
        quit(ftp).await;
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = headers;
        return Ok(r);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&t.path)),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The part wanted: all, or (with a known size) a satisfiable range.
    let mut status = StatusCode::OK;
    let (mut offset, mut len) = (0, size);
    if let (Some(total), Some((start, end))) = (
        size,
        requested_range(req, etag.as_deref(), last_modified.as_deref()),
    ) {
        let end = end.unwrap_or(u64::MAX).min(total.saturating_sub(1));
        if start >= total || end < start {
            quit(ftp).await;
            let mut r = simple(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
        status = StatusCode::PARTIAL_CONTENT;
        (offset, len) = (start, Some(end - start + 1));
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")) {
            headers.insert(header::CONTENT_RANGE, v);
        }
    }
    if let Some(n) = len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let body = if method == Method::HEAD {
        quit(ftp).await;
        empty()
    } else {
        let open = async {
            if offset > 0 {
                ftp.resume_transfer(offset as usize).await?;
            }
            ftp.retr_as_stream(&t.path).await
        };
        let mut data = match tokio::time::timeout(timeouts.login, open).await {
            Err(_) => return Err(FetchError::Timeout),
            Ok(Err(e)) => return reply_error(e),
            Ok(Ok(d)) => d,
        };
        // The transfer runs in its own task and hands its chunks over a small channel:
        // it reads only as fast as they are taken, and ends when the body is dropped.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let idle = timeouts.transfer;
        let path = t.path.clone();
        tokio::spawn(async move {
            let mut left = len;
            loop {
                if left == Some(0) {
                    if size.is_some_and(|s| offset + len.unwrap_or(0) < s) {
                        // A range ended before the file: the session is dropped
                        // rather than drained.
                        return;
                    }
                    break;
                }
                let cap = left.map_or(CHUNK, |l| l.min(CHUNK as u64) as usize);
                let mut buf = BytesMut::with_capacity(cap);
                let n = match tokio::time::timeout(idle, data.read_buf(&mut buf)).await {
                    Err(_) => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "FTP origin transfer stalled",
                        );
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => n,
                };
                let n = left.map_or(n, |l| n.min(l as usize));
                buf.truncate(n);
                left = left.map(|l| l - n as u64);
                if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    return;
                }
            }
            // The whole file (or its tail): the completion reply says it is complete.
            match tokio::time::timeout(idle, data.finish()).await {
                Ok(Ok(())) => quit(ftp).await,
                Ok(Err(e)) => {
                    tracing::warn!(%path, error = %e, "FTP origin transfer not completed");
                    let _ = tx
                        .send(Err(std::io::Error::other("FTP transfer not completed")))
                        .await;
                }
                Err(_) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("FTP completion reply timed out")))
                        .await;
                }
            }
        });
        stream_body(rx)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_decoded() {
        let t = parse("ftp://u%40x:p%3Aw@[::1]:2121/pub/a%20b.bin?q=1").unwrap();
        assert_eq!(
            t,
            Target {
                host: "::1".into(),
                port: 2121,
                user: "u@x".into(),
                password: "p:w".into(),
                path: "/pub/a b.bin".into(),
            }
        );
        let t = parse("ftp://h.example/x").unwrap();
        assert_eq!((t.port, t.user.as_str()), (21, "anonymous"));
        for bad in [
            "ftp://h/a%0d%0aDELE%20x",
            "ftp://h/a%0",
            "ftp://h/%ff",
            "ftp://h:0/",
            "ftp:///x",
            "http://h/",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn validators_and_ranges() {
        let m = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"ftp-1-2\", \"ftp-5-9\""),
        );
        assert!(not_modified(&h, Some("\"ftp-5-9\""), Some(m)));
        assert!(!not_modified(&h, Some("\"ftp-6-9\""), Some(m)));
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_str(&httpdate::fmt_http_date(m)).unwrap(),
        );
        assert!(not_modified(&h, None, Some(m)));
        assert!(!not_modified(&h, None, Some(m + Duration::from_secs(1))));
        assert!(!not_modified(&HeaderMap::new(), Some("\"x\""), Some(m)));

        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-19"));
        assert_eq!(requested_range(&h, None, None), Some((10, Some(19))));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"old\""));
        assert_eq!(requested_range(&h, Some("\"new\""), None), None);
        assert_eq!(
            requested_range(&h, Some("\"old\""), None),
            Some((10, Some(19)))
        );
        h.insert(header::RANGE, HeaderValue::from_static("bytes=5-,9-10"));
        assert_eq!(requested_range(&h, Some("\"old\""), None), None);
        assert_eq!(content_type("/v/seg1.TS"), "video/mp2t");
    }
}
