//! A live event's prefill on the edge: the playlist the control plane names is fetched
//! into the cache, then (planned by [`crate::live`]) its variant playlists and the
//! segments they name, each through the ordinary fill (coalesced with viewers, skipped
//! when fresh), so the event's first viewers are served hits.

use super::{Action, BodyLoc, Edge, FillResult, HeaderMap, PrefillResult, Want, policy};
use crate::live::{MAX_SEGMENTS, Playlist, per_variant, plan};
use bytes::Bytes;
use serde::Serialize;
use std::sync::Arc;

/// What a live prefill fetched: the playlists (the one named first) and the segments,
/// each with its outcome (`cached`, `stored`, `not-storable`) or error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LivePrefill {
    /// The playlists, the master first.
    pub playlists: Vec<PrefillResult>,
    /// The segments (and initialisation sections).
    pub segments: Vec<PrefillResult>,
}

fn result(url: String, r: Result<&'static str, String>) -> PrefillResult {
    match r {
        Ok(o) => PrefillResult {
            url,
            outcome: Some(o.into()),
            error: None,
        },
        Err(e) => PrefillResult {
            url,
            outcome: None,
            error: Some(e),
        },
    }
}

impl Edge {
    /// Prefills a live event: fetches the playlist at `url` (a URL of a CDN hostname this
    /// edge serves) into the cache, and, when it is a master playlist, up to
    /// [`crate::live::MAX_VARIANTS`] of its variant playlists; then the segments each
    /// media playlist names, at most `max_segments` (and [`MAX_SEGMENTS`]) in all. An
    /// error when the first playlist cannot be fetched or is not a playlist; a variant or
    /// segment that fails is reported in its result.
    pub async fn prefill_live(
        self: &Arc<Self>,
        url: &str,
        max_segments: usize,
    ) -> Result<LivePrefill, String> {
        let u = crate::target::parse_url(url).map_err(|e| e.to_string())?;
        let rest = &u.key["http://".len()..];
        let (host, path) = match rest.find('/') {
            Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
            None => (rest.to_owned(), "/".to_owned()),
        };
        let url_of = |p: &str| format!("http://{host}{p}");
        let mut out = LivePrefill {
            playlists: Vec::new(),
            segments: Vec::new(),
        };
        let mut budget = max_segments.min(MAX_SEGMENTS);
        let (outcome, body) = self.fetch_playlist(&host, &path).await?;
        out.playlists.push(result(url_of(&path), Ok(outcome)));
        let media: Vec<(String, Bytes)> = match plan(&body, &path, budget) {
            None => return Err(format!("{url} is not an HLS playlist")),
            Some(Playlist::Media(_)) => vec![(path.clone(), body)],
            Some(Playlist::Master(variants)) => {
                let mut media = Vec::new();
                for v in variants {
                    match self.fetch_playlist(&host, &v).await {
                        Ok((o, b)) => {
                            out.playlists.push(result(url_of(&v), Ok(o)));
                            media.push((v, b));
                        }
                        Err(e) => out.playlists.push(result(url_of(&v), Err(e))),
                    }
                }
                media
            }
        };
        let share = per_variant(budget, media.len());
        for (p, body) in &media {
            let Some(Playlist::Media(segments)) = plan(body, p, share.min(budget)) else {
                continue;
            };
            for s in segments {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                let su = url_of(&s);
                let r = self.prefill_one(&su).await;
                out.segments.push(result(su, r));
            }
        }
        Ok(out)
    }

    /// The body of the playlist at `host` `path`, from the cache when fresh there, else
    /// filled from the origin (and so cached): `cached` or `stored`, and the bytes.
    async fn fetch_playlist(
        self: &Arc<Self>,
        host: &str,
        path: &str,
    ) -> Result<(&'static str, Bytes), String> {
        let route = self
            .hooks
            .cache_key(&self.router(), host, path)
            .map_err(|e| e.to_string())?;
        let req = HeaderMap::new();
        for attempt in 0..2 {
            let full = self.full_key(&route, &req);
            if let Some(o) = self.lookup(&full, &route.key).await
                && policy::evaluate(&o.meta, &req, self.now(), route.origin.check_interval)
                    == Action::Fresh
            {
                return Ok((
                    if attempt == 0 { "cached" } else { "stored" },
                    body_of(&o.body).await?,
                ));
            }
            if attempt == 1 {
                break;
            }
            match self.fill(&route, &req, None, Want::RESULT).await {
                Err(FillResult::Stored(o)) | Err(FillResult::Revalidated(o)) => {
                    if !o.meta.status.is_success() {
                        return Err(format!("origin: {}", o.meta.status));
                    }
                    return Ok(("stored", body_of(&o.body).await?));
                }
                Err(FillResult::NotStored) => {
                    return Err("origin: the playlist may not be cached".into());
                }
                Err(FillResult::Failed(e)) => return Err(format!("origin: {e:?}")),
                // Joined a fill in flight: read the result from the cache.
                Ok(_) => {}
            }
        }
        Err("the playlist left the cache while it was read".into())
    }
}

/// A stored body's bytes; a playlist is small (the larger are refused by the planner).
async fn body_of(b: &BodyLoc) -> Result<Bytes, String> {
    match b {
        BodyLoc::Memory(b) => Ok(b.clone()),
        BodyLoc::Disk(p) => {
            let len = tokio::fs::metadata(p)
                .await
                .map_err(|e| format!("reading the playlist: {e}"))?
                .len();
            if len > crate::hls::MAX_PLAYLIST_LEN as u64 {
                return Err("the playlist is too large".into());
            }
            tokio::fs::read(p)
                .await
                .map(Bytes::from)
                .map_err(|e| format!("reading the playlist: {e}"))
        }
    }
}
