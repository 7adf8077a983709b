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

use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT};
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
    /// `$INCLUDE` (this parser never reads files).
    #[error("$INCLUDE is not supported: inline the included file")]
    Include,
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

struct Parser {
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
    let mut p = Parser {
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
    for e in lex(text)? {
        p.entry(&e)?;
    }
    let origin = p.soa_origin.or(p.origin).unwrap_or_else(Name::root);
    Ok(ZoneFile {
        origin,
        records: p.records,
    })
}

impl Parser {
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
                "$INCLUDE" => return Err(err(line, ZoneFileErrorKind::Include)),
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
                let rt = RecordType::from_str(&up)
                    .map_err(|_| err(line, ZoneFileErrorKind::UnsupportedType(s.into())))?;
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
            other => {
                return Err(err(
                    line,
                    ZoneFileErrorKind::UnsupportedType(rtype_str(other).into()),
                ));
            }
        })
    }
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
