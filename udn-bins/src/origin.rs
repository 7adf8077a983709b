//! `udn origin`: the sample customer origin site, for the demo, the walkthrough and the
//! tests of the other roles. It serves an embedded page with its stylesheet, script and
//! images with `Last-Modified`, `ETag` and `Cache-Control`, answers conditional requests
//! with 304, serves generated objects of any size at `/gen/{bytes}` (streamed, never held
//! whole in memory), a live HLS stream (`/live/master.m3u8`: a sliding window over a few
//! embedded MPEG-TS segments, see [`live_playlist`]) and a VOD one (`/vod/index.m3u8`),
//! reports health at `/health`, and has a fault drill: `POST
//! /_drill/fail` makes every request (health included) answer 503 until `POST
//! /_drill/restore`.

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Command-line arguments of `udn origin`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.21:8080")]
    pub listen: SocketAddr,
    /// Name reported in `X-Served-By`.
    #[arg(long, default_value = "origin")]
    pub name: String,
    /// `Cache-Control: max-age` of the site's files, seconds.
    #[arg(long, default_value_t = 60)]
    pub max_age: u32,
}

/// The embedded site: path, content type, bytes.
const SITE: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../assets/site/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../assets/site/index.html"),
    ),
    (
        "/css/site.css",
        "text/css",
        include_bytes!("../assets/site/css/site.css"),
    ),
    (
        "/js/app.js",
        "text/javascript",
        include_bytes!("../assets/site/js/app.js"),
    ),
    (
        "/img/logo.svg",
        "image/svg+xml",
        include_bytes!("../assets/site/img/logo.svg"),
    ),
    (
        "/img/product-1.svg",
        "image/svg+xml",
        include_bytes!("../assets/site/img/product-1.svg"),
    ),
    (
        "/img/product-2.svg",
        "image/svg+xml",
        include_bytes!("../assets/site/img/product-2.svg"),
    ),
    (
        "/img/product-3.svg",
        "image/svg+xml",
        include_bytes!("../assets/site/img/product-3.svg"),
    ),
];

/// The paths of the sample page and its components.
pub fn site_paths() -> impl Iterator<Item = &'static str> {
    SITE.iter().map(|(p, _, _)| *p).filter(|p| *p != "/")
}

/// The HLS segments the live and VOD streams cycle through (2 s each; how they were made:
/// `udn-bins/assets/hls/README.md`).
const SEGMENTS: [&[u8]; 4] = [
    include_bytes!("../assets/hls/seg0.ts"),
    include_bytes!("../assets/hls/seg1.ts"),
    include_bytes!("../assets/hls/seg2.ts"),
    include_bytes!("../assets/hls/seg3.ts"),
];

/// The duration of each HLS segment, seconds (the playlists' target duration).
pub const SEGMENT_SECS: u64 = 2;

/// How many segments the live playlist names (its sliding window).
pub const LIVE_WINDOW: u64 = 3;

/// The live stream's master playlist: one variant, `low/index.m3u8`.
pub const MASTER_PLAYLIST: &str = "#EXTM3U\n#EXT-X-VERSION:3\n\
#EXT-X-STREAM-INF:BANDWIDTH=64000,RESOLUTION=128x72,CODECS=\"avc1.42c00a\"\nlow/index.m3u8\n";

/// The HLS media type.
const M3U8: &str = "application/vnd.apple.mpegurl";

/// The newest segment of the live stream at `now`: the one that ended last, counted in
/// [`SEGMENT_SECS`] from the epoch (wall-clock time, so every origin server of a
/// site publishes the same window).
pub fn live_newest(now: SystemTime) -> u64 {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (secs / SEGMENT_SECS).saturating_sub(1)
}

/// The live media playlist whose newest segment is `newest`: the last [`LIVE_WINDOW`]
/// segments `seg<N>.ts`, N the media sequence number; segment N is embedded segment
/// N mod 4, so each return to the first one is marked `EXT-X-DISCONTINUITY` (its
/// timestamps start again) and counted in `EXT-X-DISCONTINUITY-SEQUENCE`.
pub fn live_playlist(newest: u64) -> String {
    let n = SEGMENTS.len() as u64;
    let first = newest.saturating_sub(LIVE_WINDOW - 1);
    let mut s = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{SEGMENT_SECS}\n\
#EXT-X-MEDIA-SEQUENCE:{first}\n#EXT-X-DISCONTINUITY-SEQUENCE:{}\n",
        first / n
    );
    for seq in first..=newest {
        if seq % n == 0 && seq > first {
            s.push_str("#EXT-X-DISCONTINUITY\n");
        }
        s.push_str(&format!("#EXTINF:{SEGMENT_SECS}.000,\nseg{seq}.ts\n"));
    }
    s
}

/// The VOD playlist: the embedded segments once, `seg0.ts` to `seg3.ts`.
pub fn vod_playlist() -> String {
    let mut s = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{SEGMENT_SECS}\n\
#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MEDIA-SEQUENCE:0\n"
    );
    for i in 0..SEGMENTS.len() {
        s.push_str(&format!("#EXTINF:{SEGMENT_SECS}.000,\nseg{i}.ts\n"));
    }
    s.push_str("#EXT-X-ENDLIST\n");
    s
}

/// The largest generated object, bytes.
pub const MAX_GENERATED: u64 = 4 << 30;

/// Shared state of a running origin.
#[derive(Debug)]
pub struct Origin {
    name: String,
    max_age: u32,
    started: SystemTime,
    failing: AtomicBool,
    requests: AtomicU64,
    bytes: AtomicU64,
    segments: AtomicU64,
}

impl Origin {
    /// Whether the fault drill is on.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// Turns the fault drill on or off.
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Requests served (all paths).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// HLS segment requests served (live and VOD).
    pub fn segments(&self) -> u64 {
        self.segments.load(Ordering::SeqCst)
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn unavailable(o: &Origin) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("x-served-by", o.name.clone())],
        "origin drill: failing\n",
    )
        .into_response()
}

async fn file(State(o): State<Arc<Origin>>, uri: axum::http::Uri, req: HeaderMap) -> Response {
    o.requests.fetch_add(1, Ordering::Relaxed);
    if o.is_failing() {
        return unavailable(&o);
    }
    let Some((_, ctype, body)) = SITE.iter().find(|(p, _, _)| *p == uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    // Seconds precision, as HTTP dates have.
    let started = UNIX_EPOCH
        + std::time::Duration::from_secs(
            o.started
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
    let etag = format!("\"{:016x}\"", fnv(body));
    let last_modified = httpdate::fmt_http_date(started);
    let mut headers = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    headers.insert(header::CONTENT_TYPE, hv(ctype));
    headers.insert(header::ETAG, hv(&etag));
    headers.insert(header::LAST_MODIFIED, hv(&last_modified));
    headers.insert(
        header::CACHE_CONTROL,
        hv(&format!("public, max-age={}", o.max_age)),
    );
    headers.insert("x-served-by", hv(&o.name));
    let inm = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    let ims = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok());
    let not_modified = match (inm, ims) {
        (Some(tags), _) => tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"),
        (None, Some(date)) => date == last_modified,
        _ => false,
    };
    if not_modified {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    o.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    (StatusCode::OK, headers, *body).into_response()
}

async fn generated(State(o): State<Arc<Origin>>, Path(size): Path<String>) -> Response {
    o.requests.fetch_add(1, Ordering::Relaxed);
    if o.is_failing() {
        return unavailable(&o);
    }
    let Ok(size) = size.trim_end_matches(".bin").parse::<u64>() else {
        return (StatusCode::BAD_REQUEST, "size must be a number of bytes\n").into_response();
    };
    if size > MAX_GENERATED {
        return (StatusCode::BAD_REQUEST, "at most 4 GiB\n").into_response();
    }
    // Deterministic content: byte i is (i * 131 + i / 4096) mod 256, streamed in 64 KiB
    // chunks.
    let chunk = 64 * 1024u64;
    let stream = generated_stream(size, chunk);
    o.bytes.fetch_add(size, Ordering::Relaxed);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header(
            header::CACHE_CONTROL,
            format!("public, max-age={}", o.max_age),
        )
        .header(header::ETAG, format!("\"gen-{size}\""))
        .header("x-served-by", o.name.clone())
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The byte at offset `i` of a generated object.
pub fn generated_byte(i: u64) -> u8 {
    (i.wrapping_mul(131).wrapping_add(i / 4096)) as u8
}

fn generated_stream(
    size: u64,
    chunk: u64,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(0u64, move |off| async move {
        if off >= size {
            return None;
        }
        let n = chunk.min(size - off);
        let buf: Vec<u8> = (off..off + n).map(generated_byte).collect();
        Some((Ok(buf), off + n))
    })
}

fn hls_response(o: &Origin, ctype: &str, cache: &str, body: axum::body::Bytes) -> Response {
    o.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ctype.to_owned()),
            (header::CACHE_CONTROL, cache.to_owned()),
            (
                header::HeaderName::from_static("x-served-by"),
                o.name.clone(),
            ),
        ],
        body,
    )
        .into_response()
}

/// `/live/...` and `/vod/...`: the playlists (cached for a second: shorter than a
/// segment) and the segments (immutable once published).
async fn hls(State(o): State<Arc<Origin>>, uri: axum::http::Uri) -> Response {
    o.requests.fetch_add(1, Ordering::Relaxed);
    if o.is_failing() {
        return unavailable(&o);
    }
    let not_found = || (StatusCode::NOT_FOUND, "not found\n").into_response();
    let newest = live_newest(SystemTime::now());
    let playlist =
        |text: String| hls_response(&o, M3U8, "public, max-age=1", axum::body::Bytes::from(text));
    let segment = |n: u64| {
        o.segments.fetch_add(1, Ordering::Relaxed);
        let body = SEGMENTS[(n % SEGMENTS.len() as u64) as usize];
        hls_response(
            &o,
            "video/mp2t",
            "public, max-age=3600",
            axum::body::Bytes::from_static(body),
        )
    };
    let seg_number = |file: &str| -> Option<u64> {
        let digits = file.strip_prefix("seg")?.strip_suffix(".ts")?;
        if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    match uri.path() {
        "/live/master.m3u8" => playlist(MASTER_PLAYLIST.to_owned()),
        "/live/low/index.m3u8" => playlist(live_playlist(newest)),
        "/vod/index.m3u8" => playlist(vod_playlist()),
        p => {
            if let Some(n) = p.strip_prefix("/live/low/").and_then(seg_number) {
                // Not published yet: 404, as a live origin answers.
                if n > newest {
                    return not_found();
                }
                return segment(n);
            }
            match p.strip_prefix("/vod/").and_then(seg_number) {
                Some(n) if n < SEGMENTS.len() as u64 => segment(n),
                _ => not_found(),
            }
        }
    }
}

async fn health(State(o): State<Arc<Origin>>) -> Response {
    o.requests.fetch_add(1, Ordering::Relaxed);
    if o.is_failing() {
        return unavailable(&o);
    }
    (StatusCode::OK, [("x-served-by", o.name.clone())], "ok\n").into_response()
}

async fn drill_fail(State(o): State<Arc<Origin>>) -> &'static str {
    o.set_failing(true);
    "failing\n"
}

async fn drill_restore(State(o): State<Arc<Origin>>) -> &'static str {
    o.set_failing(false);
    "restored\n"
}

async fn stats(State(o): State<Arc<Origin>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "name": o.name,
        "failing": o.is_failing(),
        "requests": o.requests(),
        "bytes": o.bytes.load(Ordering::Relaxed),
        "hls_segments": o.segments(),
    }))
}

/// A running origin.
pub struct Handle {
    /// The bound address.
    pub addr: SocketAddr,
    /// Its state (drill switch, counters).
    pub origin: Arc<Origin>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// The router of an origin.
pub fn router(origin: Arc<Origin>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/gen/{size}", get(generated))
        .route("/_drill/fail", post(drill_fail))
        .route("/_drill/restore", post(drill_restore))
        .route("/_stats", get(stats))
        .route("/live/{*rest}", get(hls))
        .route("/vod/{*rest}", get(hls))
        .fallback(get(file))
        .with_state(origin)
}

/// Binds `args.listen` and serves in the background.
pub async fn start(args: &Args) -> anyhow::Result<Handle> {
    let origin = Arc::new(Origin {
        name: args.name.clone(),
        max_age: args.max_age,
        started: SystemTime::now(),
        failing: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        segments: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding origin to {}", args.listen))?;
    let addr = listener.local_addr()?;
    let app = router(origin.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "origin server stopped");
        }
    });
    Ok(Handle { addr, origin, task })
}

/// Runs `udn origin` until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        let h = start(&args).await?;
        println!(
            "udn origin: {} serving the sample site on http://{}",
            args.name, h.addr
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        h.stop();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_window_slides_over_the_segments() {
        let p = live_playlist(5);
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:3\n"), "{p}");
        assert!(p.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"), "{p}");
        assert!(
            p.ends_with(
                "seg3.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:2.000,\nseg4.ts\n#EXTINF:2.000,\nseg5.ts\n"
            ),
            "{p}"
        );
        assert_eq!(p.matches(".ts").count(), 3, "{p}");
        assert!(!p.contains("ENDLIST"));
        let p = live_playlist(9);
        assert!(
            p.contains("#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n"),
            "{p}"
        );
        // The start: fewer segments, never a negative sequence.
        assert_eq!(live_playlist(0).matches(".ts").count(), 1);
        let next =
            udn_cache::hls::next_segments(live_playlist(9).as_bytes(), "/live/low/index.m3u8", 2);
        assert_eq!(next, ["/live/low/seg8.ts", "/live/low/seg9.ts"]);
        assert!(vod_playlist().ends_with("seg3.ts\n#EXT-X-ENDLIST\n"));
        assert!(
            SEGMENTS.iter().all(|s| s.len() > 188 && s[0] == 0x47),
            "MPEG-TS sync byte"
        );
    }
}
