//! Streaming media in the access log: which requests are HLS or DASH, and of which
//! stream.
//!
//! An edge serves live and on-demand streams as plain HTTP objects: playlists
//! (`.m3u8`), manifests (`.mpd`) and media segments (MPEG-TS `.ts`, fragmented MP4
//! `.m4s`/`.mp4`, CMAF chunks and LL-HLS parts, audio `.aac`/`.m4a`). [`classify`] tells
//! them apart from a request's path alone (the access log records the path, not the
//! content type), and names the *stream* a request belongs to: the directory of its
//! path, where a packager writes a stream's playlist and segments side by side
//! (`/live/event/index.m3u8` and `/live/event/seg42.ts` are both stream
//! `/live/event/`). A rendition in a directory of its own (`/live/event/720p/...`) is a
//! stream of its own.
//!
//! The query string (LL-HLS `_HLS_msn`/`_HLS_part`, tokens) and fragment are ignored;
//! extensions match without regard to case.
//!
//! # Examples
//!
//! ```
//! use udn_core::stream::{MediaKind, classify};
//! let m = classify("/live/event/index.m3u8?_HLS_msn=42&_HLS_part=1").unwrap();
//! assert_eq!((m.kind, m.stream), (MediaKind::HlsPlaylist, "/live/event/"));
//! let s = classify("/live/event/seg42.part1.M4S").unwrap();
//! assert_eq!((s.kind, s.stream), (MediaKind::Segment, "/live/event/"));
//! assert_eq!(classify("/dash/vod/manifest.mpd").unwrap().kind, MediaKind::DashManifest);
//! assert!(classify("/img/logo.gif").is_none());
//! ```

/// The longest stream name kept, in bytes: a longer directory is cut (on a character
/// boundary), so a crafted path cannot make rollup keys of unbounded size.
pub const MAX_STREAM_LEN: usize = 256;

/// What a streaming request fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// An HLS playlist, multivariant or media (`.m3u8`, `.m3u`).
    HlsPlaylist,
    /// A DASH manifest (`.mpd`).
    DashManifest,
    /// A media segment, CMAF chunk or LL-HLS part (`.ts`, `.m4s`, `.mp4`, `.m4v`,
    /// `.m4a`, `.aac`, `.cmfv`, `.cmfa`, `.cmft`).
    Segment,
}

impl MediaKind {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::HlsPlaylist => "hls-playlist",
            MediaKind::DashManifest => "dash-manifest",
            MediaKind::Segment => "segment",
        }
    }

    /// Whether this is a playlist or manifest (what players reload), not media.
    pub fn is_playlist(self) -> bool {
        matches!(self, MediaKind::HlsPlaylist | MediaKind::DashManifest)
    }
}

/// A request classified as streaming media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Media<'a> {
    /// What it fetched.
    pub kind: MediaKind,
    /// The stream: the directory of the path, with its trailing `/` (at most
    /// [`MAX_STREAM_LEN`] bytes; a prefix of the path).
    pub stream: &'a str,
}

/// The kind of media an extension (without its dot, any case) names, if any.
pub fn kind_of_extension(ext: &str) -> Option<MediaKind> {
    const PLAYLIST: [&str; 2] = ["m3u8", "m3u"];
    const SEGMENT: [&str; 9] = [
        "ts", "m4s", "mp4", "m4v", "m4a", "aac", "cmfv", "cmfa", "cmft",
    ];
    if PLAYLIST.iter().any(|e| ext.eq_ignore_ascii_case(e)) {
        Some(MediaKind::HlsPlaylist)
    } else if ext.eq_ignore_ascii_case("mpd") {
        Some(MediaKind::DashManifest)
    } else if SEGMENT.iter().any(|e| ext.eq_ignore_ascii_case(e)) {
        Some(MediaKind::Segment)
    } else {
        None
    }
}

/// Classifies a request path (as logged: path and query) as streaming media, or
/// `None` for anything else (see the [module docs](self) for the rules).
pub fn classify(path: &str) -> Option<Media<'_>> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let path = &path[..end];
    if !path.starts_with('/') {
        return None;
    }
    // `path` starts with '/', so there is a last one.
    let slash = path.rfind('/')?;
    let name = &path[slash + 1..];
    let dot = name.rfind('.')?;
    if dot == 0 {
        return None;
    }
    let kind = kind_of_extension(&name[dot + 1..])?;
    let mut cut = (slash + 1).min(MAX_STREAM_LEN);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(Media {
        kind,
        stream: &path[..cut],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_of_packagers() {
        let cases = [
            // ffmpeg's HLS muxer, flat.
            ("/live.m3u8", Some((MediaKind::HlsPlaylist, "/"))),
            ("/live12.ts", Some((MediaKind::Segment, "/"))),
            // Shaka packager / Unified Streaming DASH.
            (
                "/dash/ev/manifest.mpd",
                Some((MediaKind::DashManifest, "/dash/ev/")),
            ),
            (
                "/dash/ev/chunk-stream0-00001.m4s",
                Some((MediaKind::Segment, "/dash/ev/")),
            ),
            (
                "/dash/ev/init-stream0.m4s",
                Some((MediaKind::Segment, "/dash/ev/")),
            ),
            // CMAF and LL-HLS parts.
            ("/ll/a/seg10.cmfv", Some((MediaKind::Segment, "/ll/a/"))),
            (
                "/ll/a/part10.3.mp4?x=1",
                Some((MediaKind::Segment, "/ll/a/")),
            ),
            ("/ll/a/audio.aac", Some((MediaKind::Segment, "/ll/a/"))),
            (
                "/ll/a/index.m3u8?_HLS_msn=10&_HLS_part=3",
                Some((MediaKind::HlsPlaylist, "/ll/a/")),
            ),
            // Not media.
            ("/index.html", None),
            ("/live/", None),
            ("/live/.ts", None),
            ("/live/ts", None),
            ("/a.ts/readme", None),
            ("/page?f=a.ts", None),
            ("relative/a.ts", None),
            ("", None),
        ];
        for (path, want) in cases {
            let got = classify(path).map(|m| (m.kind, m.stream));
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn a_long_directory_is_cut_on_a_character_boundary() {
        let dir = format!("/{}/", "é".repeat(300));
        let path = format!("{dir}seg1.ts");
        let m = classify(&path).unwrap();
        assert!(m.stream.len() <= MAX_STREAM_LEN && m.stream.len() >= MAX_STREAM_LEN - 1);
        assert!(path.starts_with(m.stream));
    }
}
