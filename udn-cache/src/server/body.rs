//! Response bodies: whole buffers, channels fed by a fill, file ranges, and the
//! wrapper that counts bytes sent and writes the access-log record when done.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::mpsc;
use udn_core::log::{HttpRecord, LogRecord, LogSink};

/// The body type of every edge response.
pub type RespBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub(crate) fn full(b: Bytes) -> RespBody {
    http_body_util::Full::new(b)
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn empty() -> RespBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn stream_body(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> RespBody {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c.map(Frame::data), rx))
    });
    http_body_util::StreamBody::new(s).boxed_unsync()
}

const CHUNK: usize = 256 * 1024;

/// Streams `len` bytes of a file from `start` without holding it in memory.
pub(crate) async fn file_body(path: &Path, start: u64, len: u64) -> std::io::Result<RespBody> {
    let mut f = tokio::fs::File::open(path).await?;
    if start > 0 {
        f.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut left = len;
        while left > 0 {
            let want = (left as usize).min(CHUNK);
            let mut buf = vec![0u8; want];
            match f.read_exact(&mut buf).await {
                Ok(_) => {
                    left -= want as u64;
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    Ok(stream_body(rx))
}

/// What the access log needs to know about a request.
pub(crate) struct LogInfo {
    pub customer: Option<String>,
    pub host: String,
    pub path: String,
    pub method: String,
    pub outcome: &'static str,
    pub fill_bytes: u64,
    pub client: IpAddr,
    pub pop: String,
    pub started: Instant,
}

/// Counts body bytes and writes the access-log record when the body is dropped
/// (finished, or abandoned by the client).
pub(crate) struct LoggedBody {
    inner: RespBody,
    info: Option<LogInfo>,
    status: u16,
    bytes: u64,
    log: Arc<dyn LogSink>,
    clock: super::Clock,
    counter: Counter,
}

impl LoggedBody {
    pub(crate) fn new(
        inner: RespBody,
        info: LogInfo,
        status: u16,
        log: Arc<dyn LogSink>,
        clock: super::Clock,
        counter: Counter,
    ) -> LoggedBody {
        LoggedBody {
            inner,
            info: Some(info),
            status,
            bytes: 0,
            log,
            clock,
            counter,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            let n = d.len() as u64;
            self.bytes += n;
            self.counter.inc_by(n);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(i) = self.info.take() {
            self.log.record(LogRecord::Http(HttpRecord {
                ts: (self.clock)(),
                customer: i.customer,
                host: i.host,
                path: i.path,
                method: i.method,
                status: self.status,
                bytes: self.bytes,
                fill_bytes: i.fill_bytes,
                outcome: i.outcome.to_string(),
                duration_us: i.started.elapsed().as_micros() as u64,
                client: i.client,
                pop: i.pop,
            }));
        }
    }
}
