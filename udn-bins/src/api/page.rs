//! Cursor pagination of the API's lists.
//!
//! Every list route takes `limit` (1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]) and
//! `cursor`, and answers a JSON array of at most `limit` items in the list's order; when
//! more follow, the answer carries `Link: <PATH?...&cursor=C>; rel="next"` (RFC 8288)
//! and `X-Next-Cursor: C`. A cursor names the last item returned by its sort key (not
//! its position), so items added or removed between two requests neither repeat nor
//! skip the others. Cursors are opaque (hex of the key); a malformed one, or one of
//! another list, is a `400` naming `cursor`, and a bad `limit` a `400` naming `limit`.

use super::{ApiError, FieldError};
use axum::Json;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 1000;

/// The pagination parameters (`limit`, `cursor`), read beside a route's own query.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// Where the previous page ended: the `cursor` of its `Link: <...>; rel="next"`
    /// header (or `X-Next-Cursor`)
    pub cursor: Option<String>,
}

/// One part of a sort key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    /// A text, ascending.
    Asc(String),
    /// A number, ascending.
    Up(i64),
    /// A number, descending (newest first).
    Down(i64),
}

impl Part {
    fn cmp_to(&self, other: &Part) -> Option<Ordering> {
        match (self, other) {
            (Part::Asc(a), Part::Asc(b)) => Some(a.cmp(b)),
            (Part::Up(a), Part::Up(b)) => Some(a.cmp(b)),
            (Part::Down(a), Part::Down(b)) => Some(b.cmp(a)),
            _ => None,
        }
    }
}

/// A list's sort key: parts compared in turn.
pub type Key = Vec<Part>;

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadParam(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// How `a` compares with `b` in list order, or `None` when the keys are of different
/// lists.
fn compare(a: &Key, b: &Key) -> Option<Ordering> {
    if a.len() != b.len() {
        return None;
    }
    for (x, y) in a.iter().zip(b) {
        match x.cmp_to(y)? {
            Ordering::Equal => continue,
            o => return Some(o),
        }
    }
    Some(Ordering::Equal)
}

impl PageQuery {
    /// The page size asked for.
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self
            .limit
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            None => Ok(DEFAULT_LIMIT),
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(bad(
                    "limit",
                    format!("a whole number from 1 to {MAX_LIMIT}"),
                )),
            },
        }
    }

    /// The key the previous page ended at.
    pub fn after(&self) -> Result<Option<Key>, ApiError> {
        let Some(c) = self
            .cursor
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        else {
            return Ok(None);
        };
        let invalid = || {
            bad(
                "cursor",
                "not a cursor of this list (use the one a Link header gave)",
            )
        };
        if c.len() > 4096 {
            return Err(invalid());
        }
        let bytes = udn_core::hex::decode(c).ok_or_else(invalid)?;
        serde_json::from_slice::<Key>(&bytes)
            .map(Some)
            .map_err(|_| invalid())
    }
}

/// The opaque cursor of `key`.
pub fn cursor_of(key: &Key) -> String {
    udn_core::hex::encode(&serde_json::to_vec(key).unwrap_or_default())
}

/// Sorts `items` by `key`, keeps those after the cursor, and answers the page with its
/// `Link` to the next one; `uri` is the request's (its other parameters are kept).
pub fn page<T: Serialize>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> Key,
    q: &PageQuery,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let limit = q.limit()?;
    let after = q.after()?;
    let mut keyed: Vec<(Key, T)> = items.drain(..).map(|t| (key(&t), t)).collect();
    if let (Some(a), Some((k, _))) = (&after, keyed.first())
        && compare(a, k).is_none()
    {
        return Err(bad(
            "cursor",
            "not a cursor of this list (use the one a Link header gave)",
        ));
    }
    keyed.sort_by(|a, b| compare(&a.0, &b.0).unwrap_or(Ordering::Equal));
    let start = match &after {
        Some(a) => keyed.partition_point(|(k, _)| compare(k, a) != Some(Ordering::Greater)),
        None => 0,
    };
    let more = keyed.len().saturating_sub(start) > limit;
    let page: Vec<(Key, T)> = keyed.into_iter().skip(start).take(limit).collect();
    let next = more
        .then(|| page.last().map(|(k, _)| cursor_of(k)))
        .flatten();
    let body: Vec<&T> = page.iter().map(|(_, t)| t).collect();
    let mut resp = Json(body).into_response();
    if let Some(c) = next {
        let mut query: Vec<String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
            .map(str::to_owned)
            .collect();
        query.push(format!("cursor={c}"));
        let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.join("&"));
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert(header::LINK, v);
        }
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.insert(header::HeaderName::from_static("x-next-cursor"), v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(resp: Response) -> (Vec<String>, Option<String>) {
        let next = resp
            .headers()
            .get("x-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = futures_body(resp);
        (serde_json::from_slice(&body).unwrap(), next)
    }

    fn futures_body(resp: Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec()
        })
    }

    fn q(limit: Option<&str>, cursor: Option<String>) -> PageQuery {
        PageQuery {
            limit: limit.map(str::to_owned),
            cursor,
        }
    }

    #[test]
    fn bad_limits_and_cursors_name_their_parameter() {
        for l in ["0", "1001", "x", "-1"] {
            assert!(
                matches!(q(Some(l), None).limit(), Err(ApiError::BadParam(f)) if f.field == "limit")
            );
        }
        for c in ["zz", "abc", "7b7d", "00"] {
            assert!(
                matches!(q(None, Some(c.into())).after(), Err(ApiError::BadParam(f)) if f.field == "cursor"),
                "{c}"
            );
        }
        // A cursor of a numbered list on a named one.
        let uri: Uri = "/v1/x".parse().unwrap();
        let c = cursor_of(&vec![Part::Down(5)]);
        let r = page(
            vec!["a".to_string()],
            |s| vec![Part::Asc(s.clone())],
            &q(None, Some(c)),
            &uri,
        );
        assert!(matches!(r, Err(ApiError::BadParam(f)) if f.field == "cursor"));
    }

    proptest! {
        /// Walking the pages returns every item once, in order, whatever the page size;
        /// an item removed between pages does not shift the rest.
        #[test]
        fn pages_cover_the_list_once(mut set in proptest::collection::btree_set("[a-z]{1,6}", 0..40), limit in 1usize..7) {
            let uri: Uri = "/v1/things?customer=shop".parse().unwrap();
            let all: Vec<String> = set.iter().cloned().collect();
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let resp = page(set.iter().cloned().collect(), |s: &String| vec![Part::Asc(s.clone())], &q(Some(&limit.to_string()), cursor.clone()), &uri).unwrap();
                if let Some(link) = resp.headers().get(header::LINK) {
                    let link = link.to_str().unwrap();
                    prop_assert!(link.starts_with("</v1/things?customer=shop&cursor="), "{}", link);
                }
                let (got, next) = names(resp);
                prop_assert!(got.len() <= limit);
                // Remove the first remaining item not yet returned: it must not shift.
                seen.extend(got);
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
                if let Some(x) = set.iter().find(|x| !seen.contains(x)).cloned() {
                    set.remove(&x);
                }
            }
            let expected: Vec<String> = all.iter().filter(|x| set.contains(*x) || seen.contains(x)).cloned().collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
