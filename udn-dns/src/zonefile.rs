//! A parser for BIND master (zone) files, the common subset operators bring:
//! `$ORIGIN`, `$TTL`, `@`, relative names, owner inherited from the previous line,
//! TTL and class in either order, parentheses spanning lines, quoted strings with
//! escapes, `;` comments, and the record types A, AAAA, CNAME, MX, NS, TXT, SRV, CAA,
//! PTR and SOA (other types hickory-proto can parse from text and whose data holds no
//! domain name are accepted too).
//!
//! It is pure: it parses text and never opens a file, so `$INCLUDE` is rejected with a
//! clear error. Every error carries the 1-based line of the entry at fault.
//!
//! hickory-proto 0.26 ships a zone-file parser, but it resolves `$INCLUDE` by reading
//! files and reports errors without line numbers, so this crate has its own.
//!
//! # Examples
//!
//! ```
//! use udn_dns::zonefile::parse;
//! let text = "$ORIGIN example.com.\n$TTL 300\n\
//!             @ IN SOA ns1 hostmaster ( 1 7200 900 1209600 60 )\n\
//!               IN NS ns1\n\
//!             ns1 IN A 192.0.2.53\n\
//!             www 60 IN CNAME ns1\n";
//! let zone = parse(text, None).unwrap();
//! assert_eq!(zone.origin.to_ascii(), "example.com.");
//! assert_eq!(zone.records.len(), 4);
//! assert_eq!(zone.records[3].ttl, 60);
//!
//! let err = parse("$ORIGIN example.com.\nwww IN A 999.1.1.1\n", None).unwrap_err();
//! assert_eq!(err.line, 2);
//! ```

use hickory_proto::rr::rdata::{A, AAAA, CNAME, HTTPS, MX, NAPTR, NS, PTR, SOA, SRV, SVCB, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::str::FromStr;

/// A parsed zone file.
#[derive(Debug, Clone)]
pub struct ZoneFile {
    /// The origin in effect at the first SOA record (or at the end, without one).
    pub origin: Name,
    /// The records in file order, owner names absolute.
    pub records: Vec<Record>,
}

/// A zone-file error, with the line of the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ZoneFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: ZoneFileErrorKind,
}

/// What is wrong with a zone-file entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneFileErrorKind {
    /// A quoted string is not closed.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// Parentheses do not balance.
    #[error("unbalanced parentheses")]
    UnbalancedParens,
    /// `$INCLUDE` where no include loader is given (see [`parse_with`]).
    #[error(
        "$INCLUDE needs the zone file's directory (inline the file, or load the zone from a file)"
    )]
    Include,
    /// An `$INCLUDE` that could not be read or is refused (outside the zone file's
    /// directory, too deep).
    #[error("$INCLUDE {file}: {reason}")]
    IncludeRefused {
        /// The file named.
        file: String,
        /// Why.
        reason: String,
    },
    /// An error inside an included file.
    #[error("in $INCLUDE {file}, {error}")]
    InInclude {
        /// The file named.
        file: String,
        /// The error, with its line in that file.
        error: Box<ZoneFileError>,
    },
    /// A malformed `$GENERATE`.
    #[error("bad $GENERATE: {0}")]
    Generate(String),
    /// An unknown `$` directive.
    #[error("unknown directive {0:?}")]
    UnknownDirective(String),
    /// A relative name (or `@`) with no `$ORIGIN` known.
    #[error("relative name {0:?} but no $ORIGIN is set")]
    NoOrigin(String),
    /// A line starting with a blank before any owner name.
    #[error("no owner name: the first record must name its owner")]
    NoOwner,
    /// A malformed domain name.
    #[error("bad domain name {0:?}")]
    BadName(String),
    /// A malformed TTL.
    #[error("bad TTL {0:?}")]
    BadTtl(String),
    /// No TTL given and no `$TTL` or earlier TTL to inherit.
    #[error("no TTL: give one or set $TTL")]
    NoTtl,
    /// A class other than IN.
    #[error("unsupported class {0:?} (only IN)")]
    UnsupportedClass(String),
    /// No record type where one was expected.
    #[error("missing record type")]
    MissingType,
    /// A record type this parser does not handle.
    #[error("unsupported record type {0:?}")]
    UnsupportedType(String),
    /// Wrong number of data fields for the type.
    #[error("{rtype} needs {expected} data fields, found {found}")]
    FieldCount {
        /// The record type.
        rtype: &'static str,
        /// What the type needs.
        expected: &'static str,
        /// How many there were.
        found: usize,
    },
    /// A malformed data field.
    #[error("bad {field} {value:?}")]
    BadField {
        /// Which field.
        field: &'static str,
        /// Its text.
        value: String,
    },
    /// A TXT character-string longer than 255 bytes.
    #[error("character-string longer than 255 bytes")]
    StringTooLong,
}

/// One token of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    /// The text; quoted strings are unescaped, bare tokens are kept raw.
    text: String,
    quoted: bool,
}

/// One logical entry (a line, or lines joined by parentheses).
#[derive(Debug)]
struct Entry {
    line: usize,
    starts_blank: bool,
    tokens: Vec<Token>,
}

fn err(line: usize, kind: ZoneFileErrorKind) -> ZoneFileError {
    ZoneFileError { line, kind }
}

/// Splits the text into entries.
fn lex(text: &str) -> Result<Vec<Entry>, ZoneFileError> {
    let mut entries = Vec::new();
    let b = text.as_bytes();
    let mut i = 0usize;
    let mut line = 1usize;
    let mut depth = 0usize;
    let mut cur: Option<Entry> = None;
    let mut at_line_start = true;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
                at_line_start = true;
                if depth == 0
                    && let Some(e) = cur.take()
                    && !e.tokens.is_empty()
                {
                    entries.push(e);
                }
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                if at_line_start && depth == 0 && cur.is_none() {
                    cur = Some(Entry {
                        line,
                        starts_blank: true,
                        tokens: Vec::new(),
                    });
                }
                at_line_start = false;
                i += 1;
                continue;
            }
            b';' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        at_line_start = false;
        let e = cur.get_or_insert_with(|| Entry {
            line,
            starts_blank: false,
            tokens: Vec::new(),
        });
        match c {
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                if depth == 0 {
                    return Err(err(line, ZoneFileErrorKind::UnbalancedParens));
                }
                depth -= 1;
                i += 1;
            }
            b'"' => {
                let start_line = line;
                i += 1;
                let mut s = Vec::new();
                loop {
                    let Some(&ch) = b.get(i) else {
                        return Err(err(start_line, ZoneFileErrorKind::UnterminatedQuote));
                    };
                    match ch {
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\\' => {
                            let (byte, used) = unescape(&b[i..])
                                .ok_or_else(|| err(line, ZoneFileErrorKind::UnterminatedQuote))?;
                            s.push(byte);
                            i += used;
                        }
                        b'\n' => {
                            line += 1;
                            s.push(ch);
                            i += 1;
                        }
                        _ => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                e.tokens.push(Token {
                    text: String::from_utf8_lossy(&s).into_owned(),
                    quoted: true,
                });
            }
            _ => {
                let start = i;
                while i < b.len() {
                    match b[i] {
                        b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' | b')' | b'"' => break,
                        b'\\' => i = (i + 2).min(b.len()),
                        _ => i += 1,
                    }
                }
                e.tokens.push(Token {
                    text: String::from_utf8_lossy(&b[start..i]).into_owned(),
                    quoted: false,
                });
            }
        }
    }
    if depth != 0 {
        let l = cur.as_ref().map(|e| e.line).unwrap_or(line);
        return Err(err(l, ZoneFileErrorKind::UnbalancedParens));
    }
    if let Some(e) = cur
        && !e.tokens.is_empty()
    {
        entries.push(e);
    }
    Ok(entries)
}

/// Decodes one escape at the start of `s` (which begins with a backslash): `\X` or
/// `\DDD`. Returns the byte and how many input bytes it used.
fn unescape(s: &[u8]) -> Option<(u8, usize)> {
    let next = *s.get(1)?;
    if next.is_ascii_digit() {
        let d = s.get(1..4)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = (d[0] - b'0') as u32 * 100 + (d[1] - b'0') as u32 * 10 + (d[2] - b'0') as u32;
        Some((u8::try_from(v).ok()?, 4))
    } else {
        Some((next, 2))
    }
}

/// Unescapes a bare character-string token.
fn unescape_bare(t: &str) -> Option<Vec<u8>> {
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let (c, n) = unescape(&b[i..])?;
            out.push(c);
            i += n;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Parses a TTL: seconds, or BIND units (`1w2d3h4m5s`, case-insensitive).
pub fn parse_ttl(s: &str) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    for c in s.bytes() {
        if c.is_ascii_digit() {
            let n = num
                .unwrap_or(0)
                .checked_mul(10)?
                .checked_add((c - b'0') as u64)?;
            num = Some(n);
        } else {
            let mult = match c.to_ascii_lowercase() {
                b's' => 1,
                b'm' => 60,
                b'h' => 3600,
                b'd' => 86_400,
                b'w' => 604_800,
                _ => return None,
            };
            total = total.checked_add(num.take()?.checked_mul(mult)?)?;
        }
    }
    if let Some(n) = num {
        total = total.checked_add(n)?;
    }
    u32::try_from(total).ok()
}

fn parse_name(t: &str, origin: Option<&Name>, line: usize) -> Result<Name, ZoneFileError> {
    if t == "@" {
        return origin
            .cloned()
            .ok_or_else(|| err(line, ZoneFileErrorKind::NoOrigin(t.into())));
    }
    let name = Name::from_ascii(t).map_err(|_| err(line, ZoneFileErrorKind::BadName(t.into())))?;
    if name.is_fqdn() {
        return Ok(name);
    }
    let o = origin.ok_or_else(|| err(line, ZoneFileErrorKind::NoOrigin(t.into())))?;
    name.append_domain(o)
        .map_err(|_| err(line, ZoneFileErrorKind::BadName(t.into())))
}

fn is_class(t: &str) -> bool {
    matches!(
        t.to_ascii_uppercase().as_str(),
        "IN" | "CH" | "CS" | "HS" | "NONE" | "ANY"
    )
}

/// Loads the text of an `$INCLUDE`d file by the name written in the zone file.
pub type IncludeLoader<'a> = &'a mut dyn FnMut(&str) -> Result<String, String>;

/// How deep `$INCLUDE`s may nest.
pub const MAX_INCLUDE_DEPTH: usize = 8;

/// The most records one `$GENERATE` line may produce.
pub const MAX_GENERATE: u64 = 65_536;

/// An include loader reading files in `dir` (the zone file's directory) and refusing
/// any path that leads outside it (`../`, an absolute path elsewhere, a symbolic link
/// out).
pub fn dir_loader(dir: &std::path::Path) -> impl FnMut(&str) -> Result<String, String> + use<> {
    let dir = dir.to_path_buf();
    move |name: &str| {
        let base = dir
            .canonicalize()
            .map_err(|e| format!("zone directory {}: {e}", dir.display()))?;
        let path = base.join(name);
        let real = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !real.starts_with(&base) {
            return Err(format!(
                "refused: outside the zone file's directory {}",
                base.display()
            ));
        }
        let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
        if !meta.is_file() || meta.len() > 64 << 20 {
            return Err("not a regular file of at most 64 MiB".into());
        }
        std::fs::read_to_string(&real).map_err(|e| format!("{}: {e}", real.display()))
    }
}

struct Parser<'l> {
    loader: Option<IncludeLoader<'l>>,
    depth: usize,
    origin: Option<Name>,
    default_ttl: Option<u32>,
    last_ttl: Option<u32>,
    owner: Option<Name>,
    soa_origin: Option<Name>,
    records: Vec<Record>,
}

/// Parses a zone file. `origin` is the origin before any `$ORIGIN` (the zone apex, if
/// known from configuration).
pub fn parse(text: &str, origin: Option<&Name>) -> Result<ZoneFile, ZoneFileError> {
    parse_inner(text, origin, None)
}

/// Parses a zone file whose `$INCLUDE`s are read by `loader` (e.g. [`dir_loader`] of
/// the zone file's directory). Includes nest at most [`MAX_INCLUDE_DEPTH`] deep.
pub fn parse_with(
    text: &str,
    origin: Option<&Name>,
    loader: IncludeLoader<'_>,
) -> Result<ZoneFile, ZoneFileError> {
    parse_inner(text, origin, Some(loader))
}

fn parse_inner(
    text: &str,
    origin: Option<&Name>,
    loader: Option<IncludeLoader<'_>>,
) -> Result<ZoneFile, ZoneFileError> {
    let mut p = Parser {
        loader,
        depth: 0,
        origin: origin.map(|o| {
            let mut o = o.clone();
            o.set_fqdn(true);
            o
        }),
        default_ttl: None,
        last_ttl: None,
        owner: None,
        soa_origin: None,
        records: Vec::new(),
    };
    p.text(text)?;
    let origin = p.soa_origin.or(p.origin).unwrap_or_else(Name::root);
    Ok(ZoneFile {
        origin,
        records: p.records,
    })
}

impl Parser<'_> {
    fn text(&mut self, text: &str) -> Result<(), ZoneFileError> {
        for e in lex(text)? {
            self.entry(&e)?;
        }
        Ok(())
    }

    /// `$INCLUDE file [origin]`: the file's records in place; the origin and the
    /// current owner are restored after it (RFC 1035 section 5.1).
    fn include(&mut self, t: &[Token], line: usize) -> Result<(), ZoneFileError> {
        let file = t.get(1).map(|x| x.text.clone()).unwrap_or_default();
        let refused = |reason: String| {
            err(
                line,
                ZoneFileErrorKind::IncludeRefused {
                    file: file.clone(),
                    reason,
                },
            )
        };
        if file.is_empty() {
            return Err(refused("no file named".into()));
        }
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(refused(format!(
                "includes nest more than {MAX_INCLUDE_DEPTH} deep"
            )));
        }
        let Some(loader) = self.loader.as_mut() else {
            return Err(err(line, ZoneFileErrorKind::Include));
        };
        let text = loader(&file).map_err(refused)?;
        let saved = (self.origin.clone(), self.owner.clone());
        if let Some(o) = t.get(2) {
            self.origin = Some(parse_name(&o.text, self.origin.as_ref(), line)?);
        }
        self.depth += 1;
        let r = self.text(&text);
        self.depth -= 1;
        (self.origin, self.owner) = saved;
        r.map_err(|e| {
            err(
                line,
                ZoneFileErrorKind::InInclude {
                    file: file.clone(),
                    error: Box::new(e),
                },
            )
        })
    }

    /// `$GENERATE start-stop[/step] lhs [ttl] [class] type rhs`, with `$`,
    /// `${offset[,width[,base]]}` (base d, o, x or X) and `\$` in lhs and rhs.
    fn generate(&mut self, t: &[Token], e: &Entry) -> Result<(), ZoneFileError> {
        let line = e.line;
        let g = |m: &str| err(line, ZoneFileErrorKind::Generate(m.into()));
        let range = t.get(1).ok_or_else(|| g("no range"))?.text.as_str();
        let (span, step) = match range.split_once('/') {
            Some((a, b)) => (a, b.parse::<u64>().map_err(|_| g("bad step"))?),
            None => (range, 1),
        };
        let (a, b) = span
            .split_once('-')
            .ok_or_else(|| g("range is start-stop"))?;
        let (start, stop) = (
            a.parse::<u64>().map_err(|_| g("bad range start"))?,
            b.parse::<u64>().map_err(|_| g("bad range stop"))?,
        );
        if step == 0 || stop < start || (stop - start) / step >= MAX_GENERATE {
            return Err(g(&format!(
                "the range must be increasing, the step positive and at most {MAX_GENERATE} records"
            )));
        }
        if t.len() < 4 {
            return Err(g("needs lhs, type and rhs"));
        }
        let mut i = start;
        while i <= stop {
            let mut tokens = Vec::with_capacity(t.len() - 2);
            let mut after_type = false;
            for (k, tok) in t[2..].iter().enumerate() {
                // lhs (first) and the data after the type are substituted.
                let subst = k == 0 || after_type;
                if k > 0 && !after_type && is_type(&tok.text) {
                    after_type = true;
                }
                tokens.push(Token {
                    text: if subst && !tok.quoted {
                        substitute(&tok.text, i).map_err(|m| g(&m))?
                    } else {
                        tok.text.clone()
                    },
                    quoted: tok.quoted,
                });
            }
            self.entry(&Entry {
                line,
                starts_blank: false,
                tokens,
            })?;
            i += step;
        }
        Ok(())
    }

    fn entry(&mut self, e: &Entry) -> Result<(), ZoneFileError> {
        let line = e.line;
        let t = &e.tokens;
        let first = &t[0];
        if !e.starts_blank && !first.quoted && first.text.starts_with('$') {
            let arg = t.get(1).map(|x| x.text.as_str());
            match first.text.to_ascii_uppercase().as_str() {
                "$ORIGIN" => {
                    let a =
                        arg.ok_or_else(|| err(line, ZoneFileErrorKind::BadName(String::new())))?;
                    let n = parse_name(a, self.origin.as_ref(), line)?;
                    self.origin = Some(n);
                }
                "$TTL" => {
                    let a = arg.unwrap_or("");
                    let v = parse_ttl(a)
                        .ok_or_else(|| err(line, ZoneFileErrorKind::BadTtl(a.into())))?;
                    self.default_ttl = Some(v);
                }
                "$INCLUDE" => return self.include(t, line),
                "$GENERATE" => return self.generate(t, e),
                other => {
                    return Err(err(line, ZoneFileErrorKind::UnknownDirective(other.into())));
                }
            }
            return Ok(());
        }
        let mut idx = 0;
        if !e.starts_blank {
            self.owner = Some(parse_name(&first.text, self.origin.as_ref(), line)?);
            idx = 1;
        }
        let owner = self
            .owner
            .clone()
            .ok_or_else(|| err(line, ZoneFileErrorKind::NoOwner))?;
        let mut ttl = None;
        let mut rtype = None;
        while let Some(tok) = t.get(idx) {
            idx += 1;
            let s = tok.text.as_str();
            if tok.quoted {
                return Err(err(line, ZoneFileErrorKind::MissingType));
            }
            if s.as_bytes()[0].is_ascii_digit() {
                if ttl.is_some() {
                    return Err(err(line, ZoneFileErrorKind::BadTtl(s.into())));
                }
                ttl = Some(
                    parse_ttl(s).ok_or_else(|| err(line, ZoneFileErrorKind::BadTtl(s.into())))?,
                );
            } else if is_class(s) {
                if !s.eq_ignore_ascii_case("IN") {
                    return Err(err(line, ZoneFileErrorKind::UnsupportedClass(s.into())));
                }
            } else {
                let up = s.to_ascii_uppercase();
                let rt = match up.strip_prefix("TYPE").map(str::parse::<u16>) {
                    Some(Ok(n)) => RecordType::from(n),
                    _ => RecordType::from_str(&up)
                        .map_err(|_| err(line, ZoneFileErrorKind::UnsupportedType(s.into())))?,
                };
                rtype = Some(rt);
                break;
            }
        }
        let rtype = rtype.ok_or_else(|| err(line, ZoneFileErrorKind::MissingType))?;
        let data = &t[idx..];
        let rdata = self.rdata(rtype, data, line)?;
        let ttl = match ttl {
            Some(v) => {
                self.last_ttl = Some(v);
                v
            }
            None => match (self.default_ttl, self.last_ttl, &rdata) {
                (Some(v), _, _) => v,
                (None, Some(v), _) => v,
                // RFC 1035: a SOA without TTL and no $TTL: use its minimum.
                (None, None, RData::SOA(soa)) => soa.minimum,
                _ => return Err(err(line, ZoneFileErrorKind::NoTtl)),
            },
        };
        if rtype == RecordType::SOA && self.soa_origin.is_none() {
            self.soa_origin = Some(owner.clone());
        }
        let mut rec = Record::from_rdata(owner, ttl, rdata);
        rec.dns_class = DNSClass::IN;
        self.records.push(rec);
        Ok(())
    }

    fn rdata(&self, rtype: RecordType, d: &[Token], line: usize) -> Result<RData, ZoneFileError> {
        let origin = self.origin.as_ref();
        let count = |expected: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(err(
                    line,
                    ZoneFileErrorKind::FieldCount {
                        rtype: rtype_str(rtype),
                        expected,
                        found: d.len(),
                    },
                ))
            }
        };
        let bad = |field: &'static str, value: &str| {
            err(
                line,
                ZoneFileErrorKind::BadField {
                    field,
                    value: value.into(),
                },
            )
        };
        let num16 = |field: &'static str, s: &str| s.parse::<u16>().map_err(|_| bad(field, s));
        let name = |s: &str| parse_name(s, origin, line);
        // RFC 3597 generic form, for any type: `\# length hex...`.
        if d.first().is_some_and(|t| !t.quoted && t.text == "\\#") {
            let len = d
                .get(1)
                .and_then(|t| t.text.parse::<usize>().ok())
                .ok_or_else(|| bad("RFC 3597 length", d.get(1).map_or("", |t| &t.text)))?;
            let hexs: String = d[2..].iter().map(|t| t.text.as_str()).collect();
            let bytes = hex_bytes(&hexs).ok_or_else(|| bad("RFC 3597 hex data", &hexs))?;
            if bytes.len() != len || len > u16::MAX as usize {
                return Err(bad("RFC 3597 length", &d[1].text));
            }
            return generic_rdata(rtype, bytes).ok_or_else(|| bad("RFC 3597 data", &hexs));
        }
        Ok(match rtype {
            RecordType::A => {
                count("1", d.len() == 1)?;
                let s = &d[0].text;
                RData::A(A(s.parse().map_err(|_| bad("IPv4 address", s))?))
            }
            RecordType::AAAA => {
                count("1", d.len() == 1)?;
                let s = &d[0].text;
                RData::AAAA(AAAA(s.parse().map_err(|_| bad("IPv6 address", s))?))
            }
            RecordType::CNAME => {
                count("1", d.len() == 1)?;
                RData::CNAME(CNAME(name(&d[0].text)?))
            }
            RecordType::NS => {
                count("1", d.len() == 1)?;
                RData::NS(NS(name(&d[0].text)?))
            }
            RecordType::PTR => {
                count("1", d.len() == 1)?;
                RData::PTR(PTR(name(&d[0].text)?))
            }
            RecordType::MX => {
                count("2", d.len() == 2)?;
                RData::MX(MX::new(
                    num16("MX preference", &d[0].text)?,
                    name(&d[1].text)?,
                ))
            }
            RecordType::SRV => {
                count("4", d.len() == 4)?;
                RData::SRV(SRV::new(
                    num16("SRV priority", &d[0].text)?,
                    num16("SRV weight", &d[1].text)?,
                    num16("SRV port", &d[2].text)?,
                    name(&d[3].text)?,
                ))
            }
            RecordType::TXT => {
                count("at least 1", !d.is_empty())?;
                let mut parts: Vec<Vec<u8>> = Vec::with_capacity(d.len());
                for tok in d {
                    let bytes = if tok.quoted {
                        tok.text.as_bytes().to_vec()
                    } else {
                        unescape_bare(&tok.text)
                            .ok_or_else(|| bad("character-string", &tok.text))?
                    };
                    if bytes.len() > 255 {
                        return Err(err(line, ZoneFileErrorKind::StringTooLong));
                    }
                    parts.push(bytes);
                }
                RData::TXT(TXT::from_bytes(
                    parts.iter().map(|p| p.as_slice()).collect(),
                ))
            }
            RecordType::SOA => {
                count("7", d.len() == 7)?;
                let t32 = |field: &'static str, s: &str| parse_ttl(s).ok_or_else(|| bad(field, s));
                let serial = d[2]
                    .text
                    .parse::<u32>()
                    .map_err(|_| bad("SOA serial", &d[2].text))?;
                let refresh = t32("SOA refresh", &d[3].text)?;
                let retry = t32("SOA retry", &d[4].text)?;
                let expire = t32("SOA expire", &d[5].text)?;
                let minimum = t32("SOA minimum", &d[6].text)?;
                let i = |v: u32, f: &'static str, s: &str| i32::try_from(v).map_err(|_| bad(f, s));
                RData::SOA(SOA::new(
                    name(&d[0].text)?,
                    name(&d[1].text)?,
                    serial,
                    i(refresh, "SOA refresh", &d[3].text)?,
                    i(retry, "SOA retry", &d[4].text)?,
                    i(expire, "SOA expire", &d[5].text)?,
                    minimum,
                ))
            }
            RecordType::CAA => {
                count("3", d.len() == 3)?;
                // Rebuild the text form with the value quoted and let hickory parse it.
                let v = d[2].text.replace('\\', "\\\\").replace('"', "\\\"");
                let text = format!("{} {} \"{}\"", d[0].text, d[1].text, v);
                RData::try_from_str(RecordType::CAA, &text).map_err(|_| bad("CAA data", &text))?
            }
            // Types whose data holds no domain name: hickory parses their text form.
            RecordType::SSHFP
            | RecordType::TLSA
            | RecordType::HINFO
            | RecordType::OPENPGPKEY
            | RecordType::CERT => {
                let text = d
                    .iter()
                    .map(|t| {
                        if t.quoted {
                            format!("\"{}\"", t.text.replace('\\', "\\\\").replace('"', "\\\""))
                        } else {
                            t.text.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                RData::try_from_str(rtype, &text).map_err(|_| bad("record data", &text))?
            }
            RecordType::SVCB | RecordType::HTTPS => {
                count("at least 2", d.len() >= 2)?;
                num16("SvcPriority", &d[0].text)?;
                let target = if d[1].text == "." {
                    Name::root()
                } else {
                    name(&d[1].text)?
                };
                // key=value or key="value" (the lexer splits the quoted part off).
                let mut params: Vec<String> = Vec::new();
                let mut k = 2;
                while k < d.len() {
                    let mut p = d[k].text.clone();
                    if d[k].quoted {
                        return Err(bad("SvcParam", &p));
                    }
                    if p.ends_with('=') && d.get(k + 1).is_some_and(|n| n.quoted) {
                        k += 1;
                        p.push_str(&d[k].text);
                    }
                    if p.contains(char::is_whitespace) || p.contains('"') {
                        return Err(bad("SvcParam", &p));
                    }
                    params.push(p);
                    k += 1;
                }
                let text = format!("{} {} {}", d[0].text, target.to_ascii(), params.join(" "));
                let rd = RData::try_from_str(rtype, &text).map_err(|_| bad("SVCB data", &text))?;
                // Keys in ascending order on the wire (RFC 9460 section 2.2), each once.
                let sort = |mut s: SVCB| -> Result<SVCB, ZoneFileError> {
                    s.svc_params.sort_by_key(|(k, _)| u16::from(*k));
                    if s.svc_params.windows(2).any(|w| w[0].0 == w[1].0) {
                        return Err(bad("SvcParams (a key repeats)", &text));
                    }
                    Ok(s)
                };
                match rd {
                    RData::SVCB(s) => RData::SVCB(sort(s)?),
                    RData::HTTPS(h) => RData::HTTPS(HTTPS(sort(h.0)?)),
                    other => other,
                }
            }
            RecordType::NAPTR => {
                count("6", d.len() == 6)?;
                let s = |t: &Token| {
                    if t.quoted {
                        Some(t.text.as_bytes().to_vec())
                    } else {
                        unescape_bare(&t.text)
                    }
                };
                let cs = |i: usize, f: &'static str| {
                    s(&d[i])
                        .filter(|b| b.len() <= 255)
                        .map(Vec::into_boxed_slice)
                        .ok_or_else(|| bad(f, &d[i].text))
                };
                RData::NAPTR(NAPTR::new(
                    num16("NAPTR order", &d[0].text)?,
                    num16("NAPTR preference", &d[1].text)?,
                    cs(2, "NAPTR flags")?,
                    cs(3, "NAPTR services")?,
                    cs(4, "NAPTR regexp")?,
                    if d[5].text == "." {
                        Name::root()
                    } else {
                        name(&d[5].text)?
                    },
                ))
            }
            RecordType::DS | RecordType::CDS => {
                count("at least 4", d.len() >= 4)?;
                let mut w = Vec::new();
                w.extend_from_slice(&num16("DS key tag", &d[0].text)?.to_be_bytes());
                for (i, f) in [(1, "DS algorithm"), (2, "DS digest type")] {
                    w.push(d[i].text.parse::<u8>().map_err(|_| bad(f, &d[i].text))?);
                }
                let hexs: String = d[3..].iter().map(|t| t.text.as_str()).collect();
                w.extend(
                    hex_bytes(&hexs)
                        .filter(|b| !b.is_empty())
                        .ok_or_else(|| bad("DS digest", &hexs))?,
                );
                generic_rdata(rtype, w).ok_or_else(|| bad("DS data", &hexs))?
            }
            RecordType::DNAME => {
                count("1", d.len() == 1)?;
                let target = name(&d[0].text)?;
                generic_rdata(rtype, name_wire(&target))
                    .ok_or_else(|| bad("DNAME target", &d[0].text))?
            }
            other => {
                return Err(err(
                    line,
                    ZoneFileErrorKind::UnsupportedType(format!(
                        "{} (use the RFC 3597 form: TYPE{} \\# LENGTH HEX)",
                        other,
                        u16::from(other)
                    )),
                ));
            }
        })
    }
}

/// Whether a `$GENERATE` token is the record type (not a TTL or a class).
fn is_type(t: &str) -> bool {
    let up = t.to_ascii_uppercase();
    !t.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && !is_class(t)
        && (RecordType::from_str(&up).is_ok()
            || up
                .strip_prefix("TYPE")
                .is_some_and(|n| n.parse::<u16>().is_ok()))
}

/// Substitutes the `$GENERATE` iterator `i` into `t`.
fn substitute(t: &str, i: u64) -> Result<String, String> {
    let b = t.as_bytes();
    let mut out = String::with_capacity(t.len() + 8);
    let mut k = 0;
    while k < b.len() {
        match b[k] {
            b'\\' if b.get(k + 1) == Some(&b'$') => {
                out.push_str("\\$");
                k += 2;
            }
            b'\\' => {
                out.push('\\');
                if let Some(&c) = b.get(k + 1) {
                    out.push(c as char);
                }
                k += 2;
            }
            b'$' if b.get(k + 1) == Some(&b'{') => {
                let end = t[k..].find('}').ok_or("unclosed ${")? + k;
                let spec: Vec<&str> = t[k + 2..end].split(',').collect();
                let offset: i64 = spec[0].trim().parse().map_err(|_| "bad ${offset}")?;
                let width: usize = match spec.get(1) {
                    Some(w) => w.trim().parse().map_err(|_| "bad ${,width}")?,
                    None => 0,
                };
                if spec.len() > 3 || width > 64 {
                    return Err("bad ${offset,width,base}".into());
                }
                let v = (i as i64)
                    .checked_add(offset)
                    .filter(|v| *v >= 0)
                    .ok_or("offset makes the value negative")?;
                let s = match spec.get(2).map(|s| s.trim()) {
                    None | Some("d") => format!("{v:0width$}"),
                    Some("o") => format!("{v:0width$o}"),
                    Some("x") => format!("{v:0width$x}"),
                    Some("X") => format!("{v:0width$X}"),
                    Some(o) => return Err(format!("unsupported base {o:?}")),
                };
                out.push_str(&s);
                k = end + 1;
            }
            b'$' => {
                out.push_str(&i.to_string());
                k += 1;
            }
            _ => {
                let c = t[k..].chars().next().unwrap_or('?');
                out.push(c);
                k += c.len_utf8().max(1);
            }
        }
    }
    Ok(out)
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    udn_core::hex::decode(s)
}

/// A name in uncompressed wire form.
fn name_wire(n: &Name) -> Vec<u8> {
    let mut w = Vec::with_capacity(n.len() + 2);
    for l in n.iter() {
        w.push(l.len() as u8);
        w.extend_from_slice(l);
    }
    w.push(0);
    w
}

/// RDATA from its wire bytes: decoded by hickory-proto for the types it knows (so
/// answers are the same as from the text form), kept opaque for the others.
fn generic_rdata(rtype: RecordType, bytes: Vec<u8>) -> Option<RData> {
    use hickory_proto::serialize::binary::{BinDecoder, Restrict};
    let opaque = matches!(
        rtype,
        RecordType::DS | RecordType::CDS | RecordType::DNAME | RecordType::Unknown(_)
    );
    if !opaque
        && !matches!(
            rtype,
            RecordType::OPT | RecordType::ANY | RecordType::AXFR | RecordType::IXFR
        )
    {
        let len = u16::try_from(bytes.len()).ok()?;
        let mut dec = BinDecoder::new(&bytes);
        let rd = RData::read(&mut dec, rtype, Restrict::new(len)).ok()?;
        if dec.index() != bytes.len() {
            return None;
        }
        return Some(rd);
    }
    if !opaque {
        return None;
    }
    Some(RData::Unknown {
        code: rtype,
        // (`NULL::with` refuses empty data.)
        rdata: if bytes.is_empty() {
            hickory_proto::rr::rdata::NULL::new()
        } else {
            hickory_proto::rr::rdata::NULL::with(bytes)
        },
    })
}

fn rtype_str(t: RecordType) -> &'static str {
    t.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ZONE: &str = r#"
; A typical zone
$ORIGIN example.com.
$TTL 1h
@   IN  SOA ns1.example.com. hostmaster.example.com. (
        2024010101 ; serial
        7200       ; refresh
        15m        ; retry
        2w         ; expire
        300 )      ; minimum
    IN  NS  ns1
    IN  NS  ns2.example.com.
    IN  MX  10 mail
ns1 IN  A   192.0.2.1
ns2 60 IN A 192.0.2.2
    IN  AAAA 2001:db8::2
mail IN 120 A 192.0.2.25
www CNAME web
web A 192.0.2.80
txt TXT "hello world" "semi;colon" bare\032word "quote\"d"
_sip._tcp SRV 10 60 5060 sip.example.com.
@ CAA 0 issue "letsencrypt.org"
$ORIGIN 2.0.192.in-addr.arpa.
1 PTR ns1.example.com.
"#;

    #[test]
    fn parses_the_common_subset() {
        let z = parse(ZONE, None).unwrap();
        assert_eq!(z.origin.to_ascii(), "example.com.");
        let r = &z.records;
        assert_eq!(r.len(), 14);
        let RData::SOA(soa) = &r[0].data else {
            panic!("{:?}", r[0])
        };
        assert_eq!(soa.serial, 2024010101);
        assert_eq!(soa.retry, 900);
        assert_eq!(soa.expire, 1_209_600);
        assert_eq!(soa.minimum, 300);
        assert_eq!(r[0].ttl, 3600);
        assert_eq!(r[1].name.to_ascii(), "example.com.");
        assert_eq!(
            r[1].data,
            RData::NS(NS(Name::from_ascii("ns1.example.com.").unwrap()))
        );
        assert_eq!(
            r[3].data,
            RData::MX(MX::new(10, Name::from_ascii("mail.example.com.").unwrap()))
        );
        assert_eq!(r[5].ttl, 60);
        // Owner inherited from the previous line; TTL from $TTL.
        assert_eq!(r[6].name.to_ascii(), "ns2.example.com.");
        assert_eq!(r[6].ttl, 3600);
        assert_eq!(r[7].ttl, 120);
        assert_eq!(
            r[8].data,
            RData::CNAME(CNAME(Name::from_ascii("web.example.com.").unwrap()))
        );
        let RData::TXT(txt) = &r[10].data else {
            panic!()
        };
        let parts: Vec<&[u8]> = txt.txt_data.iter().map(|b| &b[..]).collect();
        assert_eq!(
            parts,
            vec![
                &b"hello world"[..],
                b"semi;colon",
                b"bare word",
                b"quote\"d"
            ]
        );
        assert_eq!(r[11].name.to_ascii(), "_sip._tcp.example.com.");
        assert_eq!(r[12].record_type(), RecordType::CAA);
        assert_eq!(r[13].name.to_ascii(), "1.2.0.192.in-addr.arpa.");
    }

    #[test]
    fn errors_name_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("www A 1.2.3.4\n", 1, "no $ORIGIN"),
            ("$ORIGIN a.\n$TTL 60\n\nwww A 1.2.3\n", 4, "IPv4"),
            ("$ORIGIN a.\n$TTL 60\nwww MX 10\n", 3, "MX needs 2"),
            (
                "$ORIGIN a.\n$TTL 60\n@ SOA a b ( 1 2 3\n 4\n",
                3,
                "parentheses",
            ),
            ("$ORIGIN a.\n$TTL 60\nx TXT \"open\n", 3, "unterminated"),
            ("$ORIGIN a.\n$INCLUDE other\n", 2, "$INCLUDE"),
            ("$ORIGIN a.\nwww A 1.2.3.4\n", 2, "no TTL"),
            ("$ORIGIN a.\n$TTL 60\nwww CH A 1.2.3.4\n", 3, "class"),
            (
                "$ORIGIN a.\n$TTL 60\nwww BOGUS 1\n",
                3,
                "unsupported record type",
            ),
            ("$ORIGIN a.\n$TTL 60\n  A 1.2.3.4\n", 3, "no owner"),
            ("$ORIGIN a.\n$TTL 1x\n", 2, "TTL"),
        ];
        for (text, line, needle) in cases {
            let e = parse(text, None).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.to_string().contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn generate_include_and_new_types() {
        let text = "$ORIGIN g.\n$TTL 60\n$GENERATE 1-3/2 h$ 30 IN A 10.0.0.${100}\n\
                    $INCLUDE part sub\nafter TXT x\nz TYPE65534 \\# 2 beef\n\
                    d DNAME other.\ns HTTPS 1 . port=443 alpn=h2\n";
        let mut seen = Vec::new();
        let mut loader = |name: &str| {
            seen.push(name.to_owned());
            Ok::<_, String>("x A 192.0.2.1\n".to_owned())
        };
        let z = parse_with(text, None, &mut loader).unwrap();
        assert_eq!(seen, ["part"]);
        let names: Vec<String> = z.records.iter().map(|r| r.name.to_ascii()).collect();
        assert_eq!(
            names,
            [
                "h1.g.", "h3.g.", "x.sub.g.", "after.g.", "z.g.", "d.g.", "s.g."
            ]
        );
        assert_eq!(
            z.records[1].data,
            RData::A(A("10.0.0.103".parse().unwrap()))
        );
        assert_eq!(z.records[1].ttl, 30);
        assert_eq!(z.records[4].record_type(), RecordType::Unknown(65534));
        // Without a loader, $INCLUDE is an error; bad $GENERATE ranges are refused.
        assert!(
            parse(text, None)
                .unwrap_err()
                .to_string()
                .contains("$INCLUDE")
        );
        for bad in ["1-", "3-1", "1-2/0", "0-70000", "1-2 x$"] {
            let e = parse(&format!("$ORIGIN g.\n$TTL 1\n$GENERATE {bad}\n"), None).unwrap_err();
            assert!(e.to_string().contains("$GENERATE"), "{bad}: {e}");
        }
        let e = parse("$ORIGIN g.\n$TTL 1\nx TYPE1 \\# 3 c00002\n", None).unwrap_err();
        assert!(e.to_string().contains("RFC 3597"), "{e}");
        let e = parse("$ORIGIN g.\n$TTL 1\nx NSEC3PARAM 1 0 0 -\n", None).unwrap_err();
        assert!(e.to_string().contains("RFC 3597 form"), "{e}");
    }

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("300"), Some(300));
        assert_eq!(parse_ttl("1h30m"), Some(5400));
        assert_eq!(parse_ttl("1W"), Some(604_800));
        assert_eq!(parse_ttl("h"), None);
        assert_eq!(parse_ttl("99999999999"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,400}") {
            let _ = parse(&s, Some(&Name::from_ascii("example.").unwrap()));
        }

        #[test]
        fn zone_like_text_never_panics(lines in proptest::collection::vec(
            "(\\$ORIGIN|\\$TTL|@|www|  |ns1\\.x\\.)? ?(1h|60|IN|CH)? ?(A|AAAA|MX|TXT|SOA|SRV|CAA|CNAME|NS|PTR)? ?(\\(|\\)|\"|;|1\\.2\\.3\\.4|::1|10|x|\\\\)*",
            0..12)) {
            let _ = parse(&lines.join("\n"), None);
        }

        #[test]
        fn directives_and_new_types_never_panic(lines in proptest::collection::vec(
            "(\\$GENERATE|\\$INCLUDE|@|x\\$|  )? ?(0-3|5-1|1-2/0|1-99999999|[0-9]{1,3}-[0-9]{1,3}/[0-9])? ?(h\\$|\\$\\{-?[0-9]{0,3},?[0-9]{0,3},?[doxXn]?\\}|inc|\\.\\./x|/etc/x)? ?(60|IN)? ?(SVCB|HTTPS|DS|NAPTR|DNAME|TYPE[0-9]{1,6}|A|PTR)? ?(\\\\#|[0-9]{1,3}|\\.|alpn=|\"h2\"|port=[0-9]{1,6}|ipv4hint=1\\.2\\.3\\.4|mandatory=port|ab|c0000201|x\\$|\"S\"|\\$)*",
            0..10)) {
            let text = lines.join("\n");
            // The include loader hands back the same text, so includes nest until the
            // depth bound.
            let mut loader = |_: &str| Ok::<String, String>(text.clone());
            let _ = parse_with(&text, Some(&Name::from_ascii("example.").unwrap()), &mut loader);
            let _ = parse(&text, None);
        }

        #[test]
        fn generic_rdata_of_any_bytes_never_panics(t in 0u16.., data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let hex = udn_core::hex::encode(&data);
            let text = format!("$ORIGIN e.\n$TTL 1\nx TYPE{t} \\# {} {hex}\n", data.len());
            let _ = parse(&text, None);
        }

        #[test]
        fn a_records_round_trip(octets in proptest::array::uniform4(0u8..), ttl in 0u32..1_000_000,
                                label in "[a-z][a-z0-9-]{0,20}[a-z0-9]") {
            let ip = std::net::Ipv4Addr::from(octets);
            let text = format!("$ORIGIN example.org.\n{label} {ttl} IN A {ip}\n");
            let z = parse(&text, None).unwrap();
            prop_assert_eq!(z.records.len(), 1);
            prop_assert_eq!(z.records[0].ttl, ttl);
            prop_assert_eq!(z.records[0].name.to_ascii(), format!("{label}.example.org."));
            prop_assert_eq!(&z.records[0].data, &RData::A(A(ip)));
        }
    }
}
