//! `udn edge` under hostile and slow clients and a slow or stalling origin, with real
//! processes: the real binary on loopback, a real origin (a hyper server inside the
//! test), real clients (curl, raw sockets).
//!
//! - slowloris connections are closed at the header timeout while curl is served;
//! - a fill is paced by the origin, not by its slowest client (one client reading
//!   1 KiB/s, fifty fast ones, one origin request);
//! - an origin that stalls mid-body is cut off at the body timeout and the client sees
//!   an aborted body, and the object is not stored;
//! - a Range request on a cold large object is answered before the fill ends;
//! - a live HLS playlist's newest segments are fetched ahead, once, and served as hits
//!   to every viewer (a VOD playlist's are not);
//! - LL-HLS blocking playlist reloads from many viewers are held at the edge and make
//!   one origin request per `_HLS_msn`/`_HLS_part`.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// The paced object: 64 MiB, 1 MiB every 60 ms (about 4 s at the origin).
const PACED: u64 = 64 * MIB;
const PACE: Duration = Duration::from_millis(60);

#[derive(Default)]
struct Origin {
    hits: Mutex<HashMap<String, u64>>,
    /// When the origin sent the last byte of a paced object.
    paced_done: Mutex<Option<Instant>>,
    paced_finished: AtomicBool,
}

impl Origin {
    fn count(&self, path: &str) -> u64 {
        *self.hits.lock().unwrap().get(path).unwrap_or(&0)
    }
}

type OBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn origin_handle(st: Arc<Origin>, req: Request<Incoming>) -> Response<OBody> {
    let path = req.uri().path().to_string();
    *st.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    if let Some(q) = req.uri().query() {
        *st.hits
            .lock()
            .unwrap()
            .entry(format!("{path}?{q}"))
            .or_default() += 1;
    }
    let cc = "max-age=3600";
    if path.starts_with("/paced/") {
        let s = futures_util::stream::unfold(0u64, move |i| {
            let st = st.clone();
            async move {
                if i >= PACED / MIB {
                    return None;
                }
                tokio::time::sleep(PACE).await;
                if i + 1 == PACED / MIB {
                    // The last chunk (hyper need not poll again after Content-Length).
                    *st.paced_done.lock().unwrap() = Some(Instant::now());
                    st.paced_finished.store(true, Ordering::SeqCst);
                }
                let chunk = Bytes::from(vec![b'a' + (i % 26) as u8; MIB as usize]);
                Some((Ok::<_, std::io::Error>(Frame::data(chunk)), i + 1))
            }
        });
        let mut r = Response::new(StreamBody::new(s).boxed());
        r.headers_mut().insert("content-length", PACED.into());
        r.headers_mut().insert("cache-control", cc.parse().unwrap());
        return r;
    }
    if path.starts_with("/stall/") {
        // Announces 4 MiB, sends 1 MiB, then nothing for a minute.
        let s = futures_util::stream::unfold(0u64, move |i| async move {
            if i == 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return None;
            }
            let chunk = Bytes::from(vec![b's'; MIB as usize]);
            Some((Ok::<_, std::io::Error>(Frame::data(chunk)), i + 1))
        });
        let mut r = Response::new(StreamBody::new(s).boxed());
        r.headers_mut().insert("content-length", (4 * MIB).into());
        r.headers_mut().insert("cache-control", cc.parse().unwrap());
        return r;
    }
    if path == "/ll/index.m3u8" {
        // LL-HLS: a blocking reload (`_HLS_msn`, `_HLS_part`) is held until that part
        // exists, here 800 ms.
        let q = req.uri().query().unwrap_or("").to_string();
        if q.contains("_HLS_msn=") {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let text = format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-MEDIA-SEQUENCE:10\n#EXTINF:2.0,\nll-seg10.mp4\n# {q}\n"
        );
        let mut r = Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed());
        r.headers_mut().insert(
            "content-type",
            "application/vnd.apple.mpegurl".parse().unwrap(),
        );
        r.headers_mut()
            .insert("cache-control", "max-age=1".parse().unwrap());
        return r;
    }
    if let Some(name) = path.strip_prefix("/live/")
        && name.ends_with(".m3u8")
    {
        // A live media playlist (five segments, no ENDLIST), or the VOD one.
        let mut text = String::from(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n",
        );
        let prefix = name.trim_end_matches(".m3u8");
        for i in 1..=5 {
            text.push_str(&format!("#EXTINF:2.0,\n{prefix}-seg{i}.ts\n"));
        }
        if name == "vod.m3u8" {
            text.push_str("#EXT-X-ENDLIST\n");
        }
        let mut r = Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed());
        r.headers_mut().insert(
            "content-type",
            "application/vnd.apple.mpegurl".parse().unwrap(),
        );
        r.headers_mut()
            .insert("cache-control", "max-age=1".parse().unwrap());
        return r;
    }
    let mut r = Response::new(
        Full::new(Bytes::from(format!("content of {path}")))
            .map_err(|e| match e {})
            .boxed(),
    );
    r.headers_mut().insert("cache-control", cc.parse().unwrap());
    r
}

fn start_origin() -> (SocketAddr, Arc<Origin>) {
    let st = Arc::new(Origin::default());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let st2 = st.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                let st = st2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(origin_handle(st, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                });
            }
        });
    });
    (addr, st)
}

struct EdgeProc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_edge(origin: SocketAddr, args: &[&str]) -> EdgeProc {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["edge", "--listen", &addr.to_string()])
        .args(["--origin", &format!("http://{origin}")])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start udn edge");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "udn edge did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    EdgeProc { child, addr }
}

/// curl: (exit code, HTTP status, bytes downloaded, seconds).
fn curl(url: &str, extra: &[&str]) -> (i32, u16, u64, f64) {
    let t = Instant::now();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .args(["--max-time", "40"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = text.split_whitespace();
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let size = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        out.status.code().unwrap_or(-1),
        status,
        size,
        t.elapsed().as_secs_f64(),
    )
}

/// 300 connections (30 from each of ten loopback addresses, under the per-client cap)
/// send half a request header and then nothing. Meanwhile curl is served at its usual
/// speed; after the header timeout (2 s) every one of them has been closed.
#[test]
fn slowloris_connections_are_closed_while_a_normal_client_is_served() {
    let (origin, _st) = start_origin();
    let edge = start_edge(origin, &["--header-timeout-ms", "2000"]);
    let url = format!("http://{}/small", edge.addr);
    // Warm the object, and the usual speed of a hit.
    assert_eq!(curl(&url, &[]).1, 200);
    let usual = (0..5).map(|_| curl(&url, &[]).3).fold(0.0, f64::max);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target = edge.addr;
    let conns = rt.block_on(async move {
        let mut conns = Vec::new();
        for i in 0..300u32 {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            let src: SocketAddr = format!("127.0.0.{}:0", 2 + i % 10).parse().unwrap();
            sock.bind(src).unwrap();
            let mut s = sock.connect(target).await.unwrap();
            use tokio::io::AsyncWriteExt as _;
            s.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            conns.push(s);
        }
        conns
    });
    let opened = Instant::now();
    // A normal client while they hang.
    let mut during = Vec::new();
    while opened.elapsed() < Duration::from_millis(1500) {
        let (_, status, _, secs) = curl(&url, &[]);
        assert_eq!(
            status, 200,
            "curl must be served while 300 connections hang"
        );
        during.push(secs);
    }
    let worst = during.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "slowloris: hit {usual:.3} s before, worst {worst:.3} s during ({} requests)",
        during.len()
    );
    assert!(
        worst < (usual * 5.0).max(0.5),
        "curl slowed from {usual:.3} s to {worst:.3} s"
    );
    // Every slow connection is closed by the edge at its header timeout.
    let closed = rt.block_on(async move {
        let mut closed = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        for mut s in conns {
            use tokio::io::AsyncReadExt as _;
            let mut buf = [0u8; 512];
            loop {
                match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        closed += 1;
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    Err(_) => break,
                }
            }
        }
        closed
    });
    let after = opened.elapsed();
    eprintln!("slowloris: {closed} of 300 closed {after:?} after they were opened");
    assert_eq!(closed, 300, "every slowloris connection must be closed");
    assert!(after >= Duration::from_millis(1500), "{after:?}");
    // And the edge still serves.
    assert_eq!(curl(&url, &[]).1, 200);
}

/// A client reading 1 KiB/s starts the fill of a cold 64 MiB object; fifty fast curl
/// clients join it. The fill goes at the origin's pace (about 4 s): the fast clients
/// finish in about the origin's time, the slow one is still reading, and the origin
/// saw exactly one request.
#[test]
fn a_slow_client_does_not_pace_the_fill_for_fifty_fast_ones() {
    let (origin, st) = start_origin();
    let edge = start_edge(origin, &["--memory-mb", "64"]);
    let path = "/paced/64m";
    // The slow client: a raw socket that reads 1 KiB a second.
    let mut slow = std::net::TcpStream::connect(edge.addr).unwrap();
    slow.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let slow_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (n, stop) = (slow_read.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(k) = slow.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n.fetch_add(k as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    // The slow client started the fill.
    let deadline = Instant::now() + Duration::from_secs(10);
    while st.count(path) == 0 {
        assert!(Instant::now() < deadline, "the origin never saw the fill");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let url = format!("http://{}{path}", edge.addr);
    let fast: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = curl(&url, &[]);
                (r, Instant::now())
            })
        })
        .collect();
    let results: Vec<_> = fast.into_iter().map(|t| t.join().unwrap()).collect();
    let origin_done = st
        .paced_done
        .lock()
        .unwrap()
        .expect("the origin finished sending");
    let origin_secs = origin_done.duration_since(started).as_secs_f64();
    let last = results
        .iter()
        .map(|(_, t)| t.duration_since(started).as_secs_f64())
        .fold(0.0, f64::max);
    let slow_bytes = slow_read.load(Ordering::Relaxed);
    eprintln!(
        "fill: origin sent 64 MiB in {origin_secs:.2} s after the fast clients came; \
         the last of 50 fast clients finished at {last:.2} s; the slow one had read {slow_bytes} bytes"
    );
    for ((code, status, size, _), _) in &results {
        assert_eq!((*code, *status, *size), (0, 200, PACED), "a fast client");
    }
    assert!(
        last < origin_secs + 10.0,
        "the fast clients took {last:.2} s, the origin {origin_secs:.2} s"
    );
    assert!(
        slow_bytes < 16 * MIB,
        "the slow client is still at its own pace"
    );
    assert_eq!(st.count(path), 1, "the origin saw exactly one request");
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
}

/// The origin announces 4 MiB, sends 1 MiB and stalls. The edge cuts the fill off at
/// its body timeout (1.5 s): both clients (the first and a coalesced one) see an
/// aborted body (curl: partial file), and the object is not stored (a later request
/// goes to the origin again).
#[test]
fn a_stalled_origin_is_cut_off_and_its_clients_see_an_aborted_body() {
    let (origin, st) = start_origin();
    let edge = start_edge(origin, &["--origin-body-timeout-ms", "1500"]);
    let url = format!("http://{}/stall/x", edge.addr);
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300 * i));
                curl(&url, &[])
            })
        })
        .collect();
    for c in clients {
        let (code, status, size, secs) = c.join().unwrap();
        eprintln!("stall: curl exit {code}, status {status}, {size} bytes, {secs:.2} s");
        assert_eq!(status, 200);
        assert_eq!(
            code, 18,
            "curl must see a partial body (exit 18), not a complete one"
        );
        assert!(size < 4 * MIB, "{size}");
        assert!(
            secs < 10.0,
            "cut off at the body timeout, not at curl's: {secs:.2} s"
        );
    }
    assert_eq!(st.count("/stall/x"), 1, "the two clients shared one fill");
    let (code, _, _, _) = curl(&url, &[]);
    assert_eq!(code, 18);
    assert_eq!(st.count("/stall/x"), 2, "a failed fill is not stored");
}

/// A Range request for the first KiB of a cold 64 MiB object is answered (206, the
/// right bytes) while the origin is still sending the object; the full object is
/// stored by the same fill.
#[test]
fn a_range_on_a_cold_large_object_is_served_before_the_fill_ends() {
    let (origin, st) = start_origin();
    let disk = std::env::temp_dir().join(format!("udn-edge-fill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&disk);
    let edge = start_edge(
        origin,
        &["--memory-mb", "64", "--disk-dir", disk.to_str().unwrap()],
    );
    let url = format!("http://{}/paced/range", edge.addr);
    let t = Instant::now();
    let out = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-r",
            "1048576-1049599",
            "--max-time",
            "40",
            &url,
        ])
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let finished = st.paced_finished.load(Ordering::SeqCst);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("range on a cold object: {secs:.2} s (origin finished: {finished})");
    assert!(text.starts_with("HTTP/1.1 206"), "{text:.300}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-range: bytes 1048576-1049599/67108864"),
        "{text:.300}"
    );
    // The second MiB of the paced object is all 'b'.
    assert!(
        text.ends_with(&"b".repeat(1024)),
        "{:?}",
        &text[text.len().saturating_sub(40)..]
    );
    assert!(
        !finished,
        "the range was answered only after the whole fill ({secs:.2} s)"
    );
    // The same fill goes on and is stored: one origin request in all.
    let (code, status, size, _) = curl(&url, &[]);
    assert_eq!((code, status, size), (0, 200, PACED));
    assert_eq!(st.count("/paced/range"), 1);
    drop(edge);
    let _ = std::fs::remove_dir_all(&disk);
}

/// A viewer fetches a live playlist: the edge fetches its three newest segments from the
/// origin before anyone asks; then eight viewers fetch the newest segment at once, all
/// hits, and the origin has served it once. A VOD playlist (ENDLIST) is not prefetched.
#[test]
fn a_live_playlists_next_segments_are_fetched_ahead_once() {
    let (origin, st) = start_origin();
    let edge = start_edge(origin, &[]);
    let base = format!("http://{}", edge.addr);
    let (code, status, size, _) = curl(&format!("{base}/live/index.m3u8"), &[]);
    assert_eq!((code, status), (0, 200));
    assert!(size > 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (3..=5).any(|i| st.count(&format!("/live/index-seg{i}.ts")) == 0) {
        assert!(
            Instant::now() < deadline,
            "the newest segments were not prefetched: {:?}",
            st.hits.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Only the newest three.
    assert_eq!(st.count("/live/index-seg1.ts"), 0);
    assert_eq!(st.count("/live/index-seg2.ts"), 0);
    let viewers: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{base}/live/index-seg5.ts");
            std::thread::spawn(move || {
                let out = Command::new("curl")
                    .args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "20"])
                    .arg(&url)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
            })
        })
        .collect();
    for v in viewers {
        let head = v.join().unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("x-cache: hit"), "{head}");
    }
    assert_eq!(st.count("/live/index-seg5.ts"), 1);
    // The playlist again (it is fresh for a second): nothing fetched twice.
    let _ = curl(&format!("{base}/live/index.m3u8"), &[]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(st.count("/live/index-seg4.ts"), 1);

    let (_, status, _, _) = curl(&format!("{base}/live/vod.m3u8"), &[]);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        (1..=5).all(|i| st.count(&format!("/live/vod-seg{i}.ts")) == 0),
        "a VOD playlist is not prefetched: {:?}",
        st.hits.lock().unwrap()
    );
}

/// Twelve viewers send the same LL-HLS blocking reload at once; the origin holds it for
/// 800 ms. The edge holds them all on one origin request and answers each with it; a
/// reload for the next part is a request of its own.
#[test]
fn ll_hls_blocking_reloads_are_held_and_coalesced() {
    let (origin, st) = start_origin();
    let edge = start_edge(origin, &[]);
    let url = format!("http://{}/ll/index.m3u8?_HLS_msn=11&_HLS_part=2", edge.addr);
    let t = Instant::now();
    let viewers: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let out = Command::new("curl")
                    .args(["-s", "--max-time", "20"])
                    .arg(&url)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).to_string()
            })
        })
        .collect();
    for v in viewers {
        let body = v.join().unwrap();
        assert!(body.contains("_HLS_msn=11&_HLS_part=2"), "{body}");
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "held until the origin answered"
    );
    assert_eq!(
        st.count("/ll/index.m3u8?_HLS_msn=11&_HLS_part=2"),
        1,
        "{:?}",
        st.hits.lock().unwrap()
    );
    let (_, status, _, _) = curl(
        &format!("http://{}/ll/index.m3u8?_HLS_msn=11&_HLS_part=3", edge.addr),
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(st.count("/ll/index.m3u8?_HLS_msn=11&_HLS_part=3"), 1);
}
