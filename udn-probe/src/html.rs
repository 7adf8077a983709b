//! Components of a page: the images, scripts and stylesheets its HTML references.
//!
//! A careful, allocation-light tokenizer: it skips comments, doctype and processing
//! instructions, treats the contents of `script`, `style`, `textarea` and `title` as raw
//! text (so markup inside a script is not mistaken for tags), reads attributes quoted
//! with `"` or `'` or unquoted, decodes the common character references in attribute
//! values, and honours `<base href>`. It never panics, whatever the bytes.
//!
//! # Examples
//!
//! ```
//! use udn_probe::html::{ComponentKind, components};
//! let page = r#"<html><head><link rel="Stylesheet" href="/s.css">
//!   <script src='app.js?v=1&amp;x=2'></script></head>
//!   <body><!-- <img src="commented.gif"> --><img src=a.gif><img src="a.gif"></body></html>"#;
//! let c = components("http://www.shop.example/dir/index.html", page);
//! let urls: Vec<_> = c.iter().map(|c| (c.kind, c.url.as_str())).collect();
//! assert_eq!(urls, vec![
//!     (ComponentKind::Stylesheet, "http://www.shop.example/s.css"),
//!     (ComponentKind::Script, "http://www.shop.example/dir/app.js?v=1&x=2"),
//!     (ComponentKind::Image, "http://www.shop.example/dir/a.gif"),
//! ]);
//! ```

use serde::Serialize;

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    /// `<img src>`.
    Image,
    /// `<script src>`.
    Script,
    /// `<link rel=stylesheet href>`.
    Stylesheet,
}

/// A component of a page, with its absolute URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    /// Kind.
    pub kind: ComponentKind,
    /// Absolute http(s) URL.
    pub url: String,
}

/// One start tag: lower-case name and attributes (lower-case names, decoded values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Tag name.
    pub name: String,
    /// Attributes in order.
    pub attrs: Vec<(String, String)>,
}

impl Tag {
    /// The first value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

const RAW_TEXT: [&str; 4] = ["script", "style", "textarea", "title"];

fn find_ci(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|p| p + from)
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The start tags of an HTML document, in order.
pub fn start_tags(html: &str) -> Vec<Tag> {
    let b = html.as_bytes();
    let mut tags = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(lt) = b[i..].iter().position(|&c| c == b'<').map(|p| p + i) else {
            break;
        };
        i = lt + 1;
        if b[i..].starts_with(b"!--") {
            i = find(b, i + 3, b"-->").map_or(b.len(), |p| p + 3);
            continue;
        }
        match b.get(i) {
            Some(b'!') | Some(b'?') | Some(b'/') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'>')
                    .map_or(b.len(), |p| p + i + 1);
                continue;
            }
            Some(c) if c.is_ascii_alphabetic() => {}
            _ => continue,
        }
        let (tag, end) = read_tag(b, i);
        i = end;
        if RAW_TEXT.contains(&tag.name.as_str()) {
            let close = format!("</{}", tag.name);
            i = find_ci(b, i, close.as_bytes()).unwrap_or(b.len());
        }
        tags.push(tag);
    }
    tags
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// Reads a start tag whose name begins at `i`; returns it and the index after its `>`.
fn read_tag(b: &[u8], mut i: usize) -> (Tag, usize) {
    let start = i;
    while i < b.len() && !is_space(b[i]) && b[i] != b'>' && b[i] != b'/' {
        i += 1;
    }
    let name = String::from_utf8_lossy(&b[start..i]).to_ascii_lowercase();
    let mut attrs = Vec::new();
    loop {
        while i < b.len() && (is_space(b[i]) || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if b[i] == b'>' {
            i += 1;
            break;
        }
        let ns = i;
        while i < b.len() && !is_space(b[i]) && !matches!(b[i], b'>' | b'=' | b'/') {
            i += 1;
        }
        if i == ns {
            // A stray '=' with no name: skip it.
            i += 1;
            continue;
        }
        let aname = String::from_utf8_lossy(&b[ns..i]).to_ascii_lowercase();
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let mut value = String::new();
        if b.get(i) == Some(&b'=') {
            i += 1;
            while i < b.len() && is_space(b[i]) {
                i += 1;
            }
            match b.get(i) {
                Some(&q) if q == b'"' || q == b'\'' => {
                    let vs = i + 1;
                    let ve = b[vs..]
                        .iter()
                        .position(|&c| c == q)
                        .map_or(b.len(), |p| p + vs);
                    value = decode_entities(&String::from_utf8_lossy(&b[vs..ve]));
                    i = (ve + 1).min(b.len());
                }
                Some(_) => {
                    let vs = i;
                    while i < b.len() && !is_space(b[i]) && b[i] != b'>' {
                        i += 1;
                    }
                    value = decode_entities(&String::from_utf8_lossy(&b[vs..i]));
                }
                None => {}
            }
        }
        attrs.push((aname, value));
    }
    (Tag { name, attrs }, i)
}

/// Decodes `&amp; &lt; &gt; &quot; &apos; &#N; &#xN;`; anything else stays as written.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let end = rest[1..].find(';').map(|e| e + 1).filter(|&e| e <= 12);
        let decoded = end.and_then(|e| {
            let ent = &rest[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => ent
                    .strip_prefix("#x")
                    .or_else(|| ent.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The components `html` (served at `page_url`) references, deduplicated, in document
/// order: `img src`, `script src`, `link rel~=stylesheet href`.
pub fn components(page_url: &str, html: &str) -> Vec<Component> {
    let tags = start_tags(html);
    let base = tags
        .iter()
        .find(|t| t.name == "base")
        .and_then(|t| t.attr("href"))
        .and_then(|h| crate::url::resolve(page_url, h))
        .unwrap_or_else(|| page_url.to_string());
    let mut out: Vec<Component> = Vec::new();
    for t in &tags {
        let (kind, reference) = match t.name.as_str() {
            "img" => (ComponentKind::Image, t.attr("src")),
            "script" => (ComponentKind::Script, t.attr("src")),
            "link"
                if t.attr("rel").is_some_and(|r| {
                    r.split_ascii_whitespace()
                        .any(|w| w.eq_ignore_ascii_case("stylesheet"))
                }) =>
            {
                (ComponentKind::Stylesheet, t.attr("href"))
            }
            _ => continue,
        };
        let Some(url) = reference.and_then(|r| crate::url::resolve(&base, r)) else {
            continue;
        };
        if !out.iter().any(|c| c.url == url) {
            out.push(Component { kind, url });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn raw_text_hides_markup() {
        let page = r#"<script>document.write('<img src="fake.gif">')</SCRIPT><img src="real.gif">
            <style>/* <link rel=stylesheet href=x.css> */</style><textarea><img src=t.gif></textarea>"#;
        let c = components("http://h/", page);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].url, "http://h/real.gif");
    }

    #[test]
    fn base_href_and_odd_attributes() {
        let page = "<base href='http://cdn.example/static/'><IMG\nSRC = x.png alt=\"a > b\"><link href=s.css rel=\"alternate stylesheet\"><script async src=\"//other.example/j.js\"></script><img src='data:image/png;base64,AA'><script>inline()</script>";
        let urls: Vec<String> = components("http://h/p/", page)
            .into_iter()
            .map(|c| c.url)
            .collect();
        assert_eq!(
            urls,
            vec![
                "http://cdn.example/static/x.png",
                "http://cdn.example/static/s.css",
                "http://other.example/j.js"
            ]
        );
    }

    #[test]
    fn entities() {
        assert_eq!(
            decode_entities("a&amp;b&#47;&#x41;&bogus;&"),
            "a&b/A&bogus;&"
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let s = String::from_utf8_lossy(&bytes);
            for c in components("http://h.example/a/", &s) {
                prop_assert!(c.url.starts_with("http"));
            }
        }

        #[test]
        fn never_panics_on_tag_soup(parts in prop::collection::vec(prop::sample::select(vec![
            "<", ">", "img", "script", "src", "=", "\"", "'", " ", "/", "<!--", "-->", "</script", "a.gif", "&amp", ";", "é", "<link rel=stylesheet href=", "<base href=",
        ]), 0..40)) {
            let s: String = parts.concat();
            let _ = components("http://h.example/", &s);
        }
    }
}
