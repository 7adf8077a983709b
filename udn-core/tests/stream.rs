//! Properties of the streaming-media classification (`udn_core::stream`).

use proptest::prelude::*;
use udn_core::stream::{MAX_STREAM_LEN, MediaKind, classify};

const MEDIA: [&str; 12] = [
    "m3u8", "M3U8", "mpd", "ts", "m4s", "mp4", "M4V", "m4a", "aac", "cmfv", "cmfa", "cmft",
];
const OTHER: [&str; 6] = ["html", "gif", "css", "js", "txt", "json"];

fn dir() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-zA-Z0-9_é-]{1,12}", 0..5)
        .prop_map(|parts| parts.iter().map(|p| format!("/{p}")).collect::<String>() + "/")
}

proptest! {
    /// Any text: no panic, and a stream is always a bounded prefix of the path.
    #[test]
    fn arbitrary_paths_never_panic_and_streams_are_prefixes(path in any::<String>()) {
        if let Some(m) = classify(&path) {
            prop_assert!(path.starts_with(m.stream));
            prop_assert!(m.stream.len() <= MAX_STREAM_LEN);
            prop_assert!(m.stream.starts_with('/'));
        }
    }

    /// Everything a packager writes into one directory is one stream, whatever the
    /// query string; the playlist and manifest kinds and the segment kind follow the
    /// extension.
    #[test]
    fn files_of_one_directory_are_one_stream(
        d in dir(),
        names in proptest::collection::vec(("[a-z0-9]{1,10}", 0usize..MEDIA.len()), 1..8),
        query in proptest::option::of("[a-zA-Z0-9_=&.?/]{0,20}"),
    ) {
        prop_assume!(d.len() <= MAX_STREAM_LEN);
        for (stem, e) in &names {
            let ext = MEDIA[*e];
            let mut path = format!("{d}{stem}.{ext}");
            if let Some(q) = &query {
                path = format!("{path}?{q}");
            }
            let m = classify(&path).expect("media");
            prop_assert_eq!(m.stream, d.as_str());
            let want = match ext.to_ascii_lowercase().as_str() {
                "m3u8" => MediaKind::HlsPlaylist,
                "mpd" => MediaKind::DashManifest,
                _ => MediaKind::Segment,
            };
            prop_assert_eq!(m.kind, want);
            prop_assert_eq!(m.kind.is_playlist(), want != MediaKind::Segment);
        }
    }

    /// Other files, and media extensions that appear only in the query, are not media.
    #[test]
    fn other_files_are_not_media(
        d in dir(),
        stem in "[a-z0-9]{1,10}",
        o in 0usize..OTHER.len(),
        e in 0usize..MEDIA.len(),
    ) {
        let path = format!("{d}{stem}.{}", OTHER[o]);
        prop_assert!(classify(&path).is_none());
        let tricked = format!("{path}?file=x.{}", MEDIA[e]);
        prop_assert!(classify(&tricked).is_none());
    }
}
