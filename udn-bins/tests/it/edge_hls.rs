//! A live HLS stream made by a real ffmpeg at a loopback origin and watched through the
//! real `udn edge` by several real ffmpeg viewers at once: every viewer plays its
//! seconds without being held up by the others, and every segment is fetched from the
//! origin once, whatever the number of viewers (coalescing, and the edge's prefetch of
//! the segments a live playlist names next).
//!
//! ffmpeg comes from Debian's package (scripts/install-deps.sh).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Viewers watching at once.
const VIEWERS: usize = 4;
/// Seconds each viewer plays.
const WATCH_SECS: u32 = 6;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Successful (200) origin responses per path.
type Served = Arc<Mutex<HashMap<String, u32>>>;

async fn serve_file(
    dir: Arc<PathBuf>,
    served: Served,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_start_matches('/').to_string();
    let file = (!path.contains("..") && !path.contains('/'))
        .then(|| std::fs::read(dir.join(&path)).ok())
        .flatten();
    let Some(body) = file else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        return r;
    };
    *served.lock().unwrap().entry(path.clone()).or_default() += 1;
    let (ct, cc) = if path.ends_with(".m3u8") {
        ("application/vnd.apple.mpegurl", "max-age=1")
    } else {
        ("video/mp2t", "max-age=3600")
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert("content-type", ct.parse().unwrap());
    r.headers_mut().insert("cache-control", cc.parse().unwrap());
    r
}

/// A plain HTTP file server for `dir` on loopback, in its own runtime thread.
fn start_origin(dir: &Path) -> (SocketAddr, Served) {
    let served: Served = Arc::default();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let (dir, s2) = (Arc::new(dir.to_path_buf()), served.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (dir, served) = (dir.clone(), s2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (dir, served) = (dir.clone(), served.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(serve_file(dir, served, req).await)
                        }
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
    (addr, served)
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn viewers_of_a_live_ffmpeg_stream_share_one_origin_fetch_per_segment() {
    assert!(
        ffmpeg_available(),
        "ffmpeg is needed (Debian package ffmpeg: scripts/install-deps.sh)"
    );
    let dir = std::env::temp_dir().join(format!("udn-hls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The live encoder: 1-second segments, a sliding window of 4, written whole
    // (temp_file) so the origin never serves half a segment.
    let _encoder = Kill(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10"])
            .args(["-t", "60", "-c:v", "libx264", "-preset", "ultrafast"])
            .args(["-tune", "zerolatency", "-g", "10", "-f", "hls"])
            .args(["-hls_time", "1", "-hls_list_size", "4"])
            .args(["-hls_flags", "delete_segments+temp_file"])
            .arg(dir.join("live.m3u8"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start ffmpeg"),
    );
    let (origin, served) = start_origin(&dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("live.m3u8").exists() {
        assert!(Instant::now() < deadline, "ffmpeg wrote no playlist");
        std::thread::sleep(Duration::from_millis(100));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let edge_addr = format!("127.0.0.1:{port}");
    let _edge = Kill(
        Command::new(env!("CARGO_BIN_EXE_udn"))
            .args(["edge", "--listen", &edge_addr])
            .args(["--origin", &format!("http://{origin}")])
            .stdout(Stdio::null())
            .spawn()
            .expect("start udn edge"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&edge_addr).is_err() {
        assert!(Instant::now() < deadline, "udn edge did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The viewers, all at once, each playing WATCH_SECS of the live stream.
    let url = format!("http://{edge_addr}/live.m3u8");
    let start = Instant::now();
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let out = Command::new("ffmpeg")
                    .args(["-hide_banner", "-loglevel", "error", "-i", &url])
                    .args([
                        "-t",
                        &WATCH_SECS.to_string(),
                        "-c",
                        "copy",
                        "-f",
                        "null",
                        "-",
                    ])
                    .stdin(Stdio::null())
                    .output()
                    .expect("run the ffmpeg viewer");
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).to_string(),
                    t.elapsed(),
                )
            })
        })
        .collect();
    let mut took = Vec::new();
    for v in viewers {
        let (ok, err, t) = v.join().unwrap();
        assert!(ok, "a viewer failed: {err}");
        took.push(t);
    }
    eprintln!("{VIEWERS} viewers played {WATCH_SECS} s each in {took:?}");
    // A live stream plays in real time: no viewer took much longer than the stream it
    // watched (none was held up by another).
    for t in &took {
        assert!(
            *t < Duration::from_secs(u64::from(WATCH_SECS) + 15),
            "a viewer was held up: {took:?}"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(60));

    let served = served.lock().unwrap().clone();
    let segments: Vec<_> = served.iter().filter(|(p, _)| p.ends_with(".ts")).collect();
    assert!(
        segments.len() >= WATCH_SECS as usize,
        "the viewers played segments through the edge: {served:?}"
    );
    for (path, n) in &segments {
        assert_eq!(
            **n, 1,
            "{path} was fetched {n} times from the origin: {served:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
