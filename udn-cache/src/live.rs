//! Planning a live event's prefill (pure; the edge's side is `server::Edge::prefill_live`):
//! which playlists and segments an edge fetches into its cache ahead of an event's
//! start, so the first viewers' requests are hits.
//!
//! The event names one playlist. A master playlist (`EXT-X-STREAM-INF`) names its variant
//! playlists (and `EXT-X-MEDIA` renditions): each is fetched and planned in turn, at most
//! [`MAX_VARIANTS`]. A media playlist names segments: of a live one (no `EXT-X-ENDLIST`)
//! the newest, where a player joins; of an event or VOD playlist the first, where a player
//! starts. The `EXT-X-MAP` initialisation section comes first. Every path is resolved
//! against the playlist's own path on the same host, with the rules of [`crate::hls`]:
//! absolute URLs (other hosts), preload hints and unclean references are left out.
//!
//! # Examples
//!
//! ```
//! use udn_cache::live::{plan, Playlist};
//! let master = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=64000\nlow/index.m3u8\n";
//! assert_eq!(plan(master, "/live/master.m3u8", 5), Some(Playlist::Master(vec!["/live/low/index.m3u8".into()])));
//! let live = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns1.ts\n#EXTINF:2,\ns2.ts\n#EXTINF:2,\ns3.ts\n";
//! assert_eq!(plan(live, "/live/low/index.m3u8", 2), Some(Playlist::Media(vec!["/live/low/s2.ts".into(), "/live/low/s3.ts".into()])));
//! let vod = b"#EXTM3U\n#EXTINF:2,\ns1.ts\n#EXTINF:2,\ns2.ts\n#EXT-X-ENDLIST\n";
//! assert_eq!(plan(vod, "/vod/index.m3u8", 1), Some(Playlist::Media(vec!["/vod/s1.ts".into()])));
//! assert_eq!(plan(b"<html>", "/x.m3u8", 3), None);
//! ```

use crate::hls::{MAX_PLAYLIST_LEN, quoted_attr, resolve};

/// The most variant playlists of a master playlist that one prefill fetches.
pub const MAX_VARIANTS: usize = 8;

/// The most segments one prefill fetches (all variants together).
pub const MAX_SEGMENTS: usize = 100;

/// What a playlist asks to fetch next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playlist {
    /// A master playlist: its variant and rendition playlists (absolute paths, at most
    /// [`MAX_VARIANTS`], in playlist order).
    Master(Vec<String>),
    /// A media playlist: the segments to fetch (absolute paths, at most the budget plus
    /// the initialisation section).
    Media(Vec<String>),
}

/// Plans one playlist fetched from `path` (path and query at its host): `None` when
/// `body` is not an HLS playlist (no `#EXTM3U` first line, not UTF-8, larger than
/// [`crate::hls::MAX_PLAYLIST_LEN`]). `max_segments` (at most [`MAX_SEGMENTS`]) bounds
/// the media segments returned.
pub fn plan(body: &[u8], path: &str, max_segments: usize) -> Option<Playlist> {
    if body.len() > MAX_PLAYLIST_LEN {
        return None;
    }
    let text = std::str::from_utf8(body)
        .ok()?
        .trim_start_matches('\u{feff}');
    let mut lines = text.lines().map(str::trim);
    if lines.next() != Some("#EXTM3U") {
        return None;
    }
    let max_segments = max_segments.min(MAX_SEGMENTS);
    let mut variants: Vec<String> = Vec::new();
    let mut master = false;
    let mut stream_inf = false;
    let mut ended = false;
    let mut map = None;
    let mut segments: Vec<&str> = Vec::new();
    let push_variant = |variants: &mut Vec<String>, uri: &str| {
        if let Some(p) = resolve(path, uri)
            && variants.len() < MAX_VARIANTS
            && !variants.contains(&p)
        {
            variants.push(p);
        }
    };
    for line in lines {
        if line.starts_with("#EXT-X-STREAM-INF") {
            master = true;
            stream_inf = true;
        } else if let Some(attrs) = line.strip_prefix("#EXT-X-MEDIA:") {
            master = true;
            if let Some(uri) = quoted_attr(attrs, "URI") {
                push_variant(&mut variants, uri);
            }
        } else if line.starts_with("#EXT-X-ENDLIST") {
            ended = true;
        } else if let Some(attrs) = line.strip_prefix("#EXT-X-MAP:") {
            map = quoted_attr(attrs, "URI");
        } else if !line.is_empty() && !line.starts_with('#') {
            if stream_inf {
                push_variant(&mut variants, line);
                stream_inf = false;
            } else {
                segments.push(line);
            }
        }
    }
    if master {
        return Some(Playlist::Master(variants));
    }
    let chosen: &[&str] = if ended {
        &segments[..segments.len().min(max_segments)]
    } else {
        &segments[segments.len().saturating_sub(max_segments)..]
    };
    let mut out: Vec<String> = Vec::new();
    if max_segments > 0 {
        for uri in map.into_iter().chain(chosen.iter().copied()) {
            if let Some(p) = resolve(path, uri)
                && !out.contains(&p)
            {
                out.push(p);
            }
        }
    }
    Some(Playlist::Media(out))
}

/// The segment budget of each of `variants` variant playlists when a prefill may fetch
/// `max_segments` in all: an equal share, at least one.
pub fn per_variant(max_segments: usize, variants: usize) -> usize {
    if variants == 0 {
        return 0;
    }
    (max_segments.min(MAX_SEGMENTS) / variants).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_master_names_its_variants_and_renditions() {
        let m =
            b"#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"en\",URI=\"audio/en.m3u8\"\n\
#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO=\"a\"\nhi/index.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=2\n\
http://elsewhere.example/x.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=3\n/abs/lo.m3u8?t=1\n";
        assert_eq!(
            plan(m, "/ev/master.m3u8", 10),
            Some(Playlist::Master(vec![
                "/ev/audio/en.m3u8".into(),
                "/ev/hi/index.m3u8".into(),
                "/abs/lo.m3u8?t=1".into()
            ]))
        );
    }

    #[test]
    fn variants_are_bounded() {
        let mut m = String::from("#EXTM3U\n");
        for i in 0..50 {
            m.push_str(&format!("#EXT-X-STREAM-INF:BANDWIDTH={i}\nv{i}.m3u8\n"));
        }
        let Some(Playlist::Master(v)) = plan(m.as_bytes(), "/m.m3u8", 10) else {
            panic!("a master playlist");
        };
        assert_eq!(v.len(), MAX_VARIANTS);
        assert_eq!(v[0], "/v0.m3u8");
    }

    #[test]
    fn live_takes_the_newest_and_vod_the_first_with_the_map() {
        let live = b"#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2,\na.m4s\n#EXTINF:2,\nb.m4s\n#EXTINF:2,\nc.m4s\n";
        assert_eq!(
            plan(live, "/l/i.m3u8", 2),
            Some(Playlist::Media(vec![
                "/l/init.mp4".into(),
                "/l/b.m4s".into(),
                "/l/c.m4s".into()
            ]))
        );
        let vod =
            b"#EXTM3U\n#EXTINF:2,\na.ts\n#EXTINF:2,\nb.ts\n#EXTINF:2,\nc.ts\n#EXT-X-ENDLIST\n";
        assert_eq!(
            plan(vod, "/v/i.m3u8", 2),
            Some(Playlist::Media(vec!["/v/a.ts".into(), "/v/b.ts".into()]))
        );
        assert_eq!(plan(vod, "/v/i.m3u8", 0), Some(Playlist::Media(vec![])));
        // The budget is capped.
        let mut big = String::from("#EXTM3U\n");
        for i in 0..500 {
            big.push_str(&format!("#EXTINF:2,\ns{i}.ts\n"));
        }
        let Some(Playlist::Media(s)) = plan(big.as_bytes(), "/b/i.m3u8", 10_000) else {
            panic!("a media playlist");
        };
        assert_eq!(s.len(), MAX_SEGMENTS);
        assert_eq!(s.last().map(String::as_str), Some("/b/s499.ts"));
    }

    #[test]
    fn what_is_not_a_playlist() {
        assert_eq!(plan(b"", "/i.m3u8", 3), None);
        assert_eq!(plan(b"seg.ts\n", "/i.m3u8", 3), None);
        assert_eq!(plan(&[0xff, 0xfe, 0], "/i.m3u8", 3), None);
        assert_eq!(plan(&vec![b'#'; MAX_PLAYLIST_LEN + 1], "/i.m3u8", 3), None);
    }

    #[test]
    fn shares() {
        assert_eq!(per_variant(10, 3), 3);
        assert_eq!(per_variant(2, 8), 1);
        assert_eq!(per_variant(10, 0), 0);
        assert_eq!(per_variant(1000, 1), MAX_SEGMENTS);
    }

    proptest! {
        /// Any text: no panic, bounded output, only clean absolute paths.
        #[test]
        fn any_playlist_plans_safely(lines in prop::collection::vec("[ -~]{0,40}", 0..60), max in 0usize..200) {
            let body = format!("#EXTM3U\n{}", lines.join("\n"));
            match plan(body.as_bytes(), "/a/b/i.m3u8", max) {
                Some(Playlist::Master(v)) => {
                    prop_assert!(v.len() <= MAX_VARIANTS);
                    for p in v { prop_assert!(p.starts_with('/') && !p.starts_with("//"), "{}", p); }
                }
                Some(Playlist::Media(s)) => {
                    prop_assert!(s.len() <= max.min(MAX_SEGMENTS) + 1);
                    for p in s { prop_assert!(p.starts_with('/') && !p.starts_with("//"), "{}", p); }
                }
                None => prop_assert!(false, "an #EXTM3U body is a playlist"),
            }
        }
    }
}
