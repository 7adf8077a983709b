//! HLS playlists as an edge reads them (RFC 8216): whether a response is a playlist,
//! and which media segments a **live** media playlist names next, so the edge can fetch
//! them into the cache before the viewers ask (each segment is then fetched from the
//! origin once, however many viewers follow the stream).
//!
//! Only what is safe to prefetch is returned: the media segments (and the `EXT-X-MAP`
//! initialisation section) of a live media playlist, newest last, as absolute paths on
//! the playlist's own origin. A VOD playlist (`EXT-X-ENDLIST`), a master playlist
//! (`EXT-X-STREAM-INF`), absolute URLs (another host), preload hints (parts the origin
//! has not produced yet) and anything that is not a clean URI reference are left out.
//!
//! # Examples
//!
//! ```
//! use udn_cache::hls::next_segments;
//! let live = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n\
//! #EXTINF:2.0,\nseg7.ts\n#EXTINF:2.0,\nseg8.ts\n#EXTINF:2.0,\nseg9.ts\n";
//! assert_eq!(
//!     next_segments(live, "/live/cam/index.m3u8?token=1", 2),
//!     ["/live/cam/seg8.ts", "/live/cam/seg9.ts"]
//! );
//! let vod = b"#EXTM3U\n#EXTINF:2.0,\nseg0.ts\n#EXT-X-ENDLIST\n";
//! assert!(next_segments(vod, "/vod/index.m3u8", 2).is_empty());
//! ```

/// The media types of HLS playlists (RFC 8216 section 4 and the legacy names).
pub const PLAYLIST_TYPES: [&str; 3] = [
    "application/vnd.apple.mpegurl",
    "application/x-mpegurl",
    "audio/mpegurl",
];

/// The longest segment URI considered, in bytes.
pub const MAX_URI_LEN: usize = 2048;

/// The largest playlist read for prefetching, in bytes (a live playlist is a few KiB).
pub const MAX_PLAYLIST_LEN: usize = 1 << 20;

/// Whether a response is an HLS playlist: by its media type, or (for an origin that
/// sends a generic type) by a path ending in `.m3u8`.
pub fn is_playlist(path: &str, content_type: Option<&str>) -> bool {
    let by_type = content_type.is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        PLAYLIST_TYPES
            .iter()
            .any(|t| essence.eq_ignore_ascii_case(t))
    });
    let path = path.split(['?', '#']).next().unwrap_or("");
    by_type || path.to_ascii_lowercase().ends_with(".m3u8")
}

/// The last `max` media segments a live media playlist names (with its `EXT-X-MAP`
/// initialisation section first, when it has one), resolved against `playlist_path`
/// (the playlist's path and query at its origin) to absolute paths. Empty for anything
/// that is not a live media playlist.
pub fn next_segments(playlist: &[u8], playlist_path: &str, max: usize) -> Vec<String> {
    if max == 0 || playlist.len() > MAX_PLAYLIST_LEN {
        return Vec::new();
    }
    let Ok(text) = std::str::from_utf8(playlist) else {
        return Vec::new();
    };
    let text = text.trim_start_matches('\u{feff}');
    let mut lines = text.lines().map(str::trim);
    if lines.next() != Some("#EXTM3U") {
        return Vec::new();
    }
    let mut map = None;
    let mut segments: Vec<&str> = Vec::new();
    for line in lines {
        if line.starts_with("#EXT-X-ENDLIST") || line.starts_with("#EXT-X-STREAM-INF") {
            return Vec::new();
        }
        if let Some(attrs) = line.strip_prefix("#EXT-X-MAP:") {
            map = quoted_attr(attrs, "URI");
        } else if !line.is_empty() && !line.starts_with('#') {
            segments.push(line);
        }
    }
    let from = segments.len().saturating_sub(max);
    let mut out: Vec<String> = Vec::new();
    for uri in map.into_iter().chain(segments[from..].iter().copied()) {
        if let Some(p) = resolve(playlist_path, uri)
            && !out.contains(&p)
        {
            out.push(p);
        }
    }
    out
}

/// The value of `name="..."` in an attribute list.
pub(crate) fn quoted_attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = attrs;
    while !rest.is_empty() {
        let (k, after) = rest.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim();
        if let Some(q) = after.strip_prefix('"') {
            let (v, tail) = q.split_once('"')?;
            if k == name {
                return Some(v);
            }
            rest = tail.trim_start_matches(',');
        } else {
            let (v, tail) = after.split_once(',').unwrap_or((after, ""));
            if k == name {
                return Some(v);
            }
            rest = tail;
        }
    }
    None
}

/// `uri` (a relative reference from a playlist) resolved against `base` (an absolute
/// path with an optional query) per RFC 3986 section 5.2, as an absolute path; `None`
/// for an absolute URL, a network-path reference, a fragment-only or unclean reference.
pub(crate) fn resolve(base: &str, uri: &str) -> Option<String> {
    if uri.is_empty()
        || uri.len() > MAX_URI_LEN
        || uri.starts_with("//")
        || uri.starts_with('#')
        || uri
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return None;
    }
    // A scheme (`http:`, `data:`) before any `/`, `?` or `#` makes it absolute.
    let head = uri.split(['/', '?', '#']).next().unwrap_or("");
    if head.contains(':') {
        return None;
    }
    let uri = uri.split('#').next().unwrap_or("");
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri, None),
    };
    let merged = if path.starts_with('/') {
        path.to_owned()
    } else {
        let base_path = base.split(['?', '#']).next().unwrap_or("/");
        let dir = match base_path.rfind('/') {
            Some(i) => &base_path[..=i],
            None => "/",
        };
        if path.is_empty() {
            // `?q` keeps the base path (RFC 3986 5.2.2), but a playlist naming itself
            // is not a segment.
            return None;
        }
        format!("{dir}{path}")
    };
    let mut out = remove_dot_segments(&merged);
    // One leading slash: `//x` would read as another host.
    let lead = out.len() - out.trim_start_matches('/').len();
    out.replace_range(..lead, "/");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// RFC 3986 section 5.2.4 on an absolute path: `.` and `..` segments removed, never
/// above the root.
fn remove_dot_segments(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let n = segs.len();
    for (i, s) in segs.iter().enumerate() {
        match *s {
            "." => {
                if i + 1 == n {
                    parts.push("");
                }
            }
            ".." => {
                parts.pop();
                if i + 1 == n {
                    parts.push("");
                }
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn playlists_are_known_by_type_or_extension() {
        assert!(is_playlist("/a/index.m3u8?x=1", None));
        assert!(is_playlist("/a/INDEX.M3U8", Some("text/plain")));
        assert!(is_playlist(
            "/a/live",
            Some("application/vnd.apple.mpegurl; charset=utf-8")
        ));
        assert!(is_playlist("/a/live", Some("Application/X-MpegURL")));
        assert!(!is_playlist("/a/seg.ts", Some("video/mp2t")));
        assert!(!is_playlist("/a/x.m3u8.ts", None));
    }

    #[test]
    fn the_newest_segments_and_the_map_of_a_live_playlist() {
        let p = b"#EXTM3U\r\n#EXT-X-VERSION:7\r\n#EXT-X-MAP:URI=\"init.mp4\",BYTERANGE=\"800@0\"\r\n\
#EXTINF:4,\r\n../c/s1.m4s\r\n#EXTINF:4,\r\n/abs/s2.m4s?t=9\r\n#EXT-X-PART:DURATION=1,URI=\"p3.0.m4s\"\r\n\
#EXTINF:4,\r\ns3.m4s#frag\r\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p4.0.m4s\"\r\n";
        assert_eq!(
            next_segments(p, "/live/b/index.m3u8", 3),
            [
                "/live/b/init.mp4",
                "/live/c/s1.m4s",
                "/abs/s2.m4s?t=9",
                "/live/b/s3.m4s"
            ]
        );
        assert_eq!(
            next_segments(p, "/live/b/index.m3u8", 1),
            ["/live/b/init.mp4", "/live/b/s3.m4s"]
        );
    }

    #[test]
    fn what_is_not_prefetched() {
        let master = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow/index.m3u8\n";
        assert!(next_segments(master, "/m.m3u8", 3).is_empty());
        let other_hosts = b"#EXTM3U\n#EXTINF:1,\nhttp://elsewhere.example/s.ts\n#EXTINF:1,\n//cdn.example/s.ts\n#EXTINF:1,\ndata:x\n#EXTINF:1,\nseg with space.ts\n";
        assert!(next_segments(other_hosts, "/l/i.m3u8", 10).is_empty());
        assert!(next_segments(b"not a playlist\nseg.ts\n", "/i.m3u8", 3).is_empty());
        assert!(next_segments(b"#EXTM3U\n#EXTINF:1,\nseg.ts\n", "/i.m3u8", 0).is_empty());
        assert!(next_segments(&[0xff, 0xfe], "/i.m3u8", 3).is_empty());
        // never above the root
        assert_eq!(
            next_segments(
                b"#EXTM3U\n#EXTINF:1,\n../../../../etc/s.ts\n",
                "/a/i.m3u8",
                3
            ),
            ["/etc/s.ts"]
        );
    }

    #[test]
    fn dot_segments() {
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("/a/.."), "/");
        assert_eq!(remove_dot_segments("/a/b/."), "/a/b/");
        assert_eq!(remove_dot_segments("/../x"), "/x");
    }

    proptest! {
        /// Any bytes: no panic, at most max + 1 paths, each absolute, clean and short.
        #[test]
        fn any_playlist_is_safe(lines in prop::collection::vec("[ -~]{0,40}", 0..40), max in 0usize..6, base in "/[a-z/.]{0,20}") {
            let body = format!("#EXTM3U\n{}", lines.join("\n"));
            let out = next_segments(body.as_bytes(), &base, max);
            prop_assert!(out.len() <= max + 1);
            for p in out {
                prop_assert!(p.starts_with('/'), "{}", p);
                prop_assert!(!p.starts_with("//"), "{}", p);
                prop_assert!(!p.split('?').next().unwrap().split('/').any(|s| s == ".." || s == "."), "{}", p);
                prop_assert!(!p.chars().any(|c| c.is_control() || c.is_whitespace()));
                prop_assert!(p.len() <= MAX_URI_LEN + base.len() + 1);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = next_segments(&body, "/x/i.m3u8", 3);
        }
    }
}
