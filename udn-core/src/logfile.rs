//! Reading a UDN log file as a collector does: checksum, header (magic, version, role),
//! one record a line, a final newline, no NUL in any string, no count that could
//! overflow a sum. Pure, so an embedder of any UDN crate can read (and check) the files
//! UDN's roles write; `udn control`'s collector stores what [`parse_file`] accepts.

use crate::log::{FORMAT_VERSION, FileHeader, LogRecord, MAGIC};
use sha2::{Digest as _, Sha256};

/// Largest byte count or duration a record may carry (2^48: 256 TiB in one response, or
/// 8.9 years in microseconds). Larger values are refused: summed over a customer's
/// records they could overflow the 64-bit totals billing adds up.
pub const MAX_COUNT: u64 = 1 << 48;

/// Why a file was rejected (answered 422 and quarantined).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// No checksum, or not 64 hex digits.
    #[error("missing or malformed checksum (64 hex digits of the body's SHA-256)")]
    MissingChecksum,
    /// The body does not hash to the checksum sent with it.
    #[error("checksum mismatch: header says {claimed}, body hashes to {actual}")]
    ChecksumMismatch {
        /// Sent.
        claimed: String,
        /// Computed.
        actual: String,
    },
    /// The body is empty.
    #[error("empty file")]
    Empty,
    /// The last line has no newline: the file was cut short.
    #[error("truncated file: the last line ({len} bytes) has no terminating newline")]
    Truncated {
        /// Length of the unterminated tail.
        len: usize,
    },
    /// The first line is not a JSON object.
    #[error("line 1: not a udn log header: {0}")]
    Header(serde_json::Error),
    /// The magic string is not ours.
    #[error("foreign file: magic {0:?}, expected {MAGIC:?}")]
    ForeignMagic(String),
    /// Written by a newer or unknown format version.
    #[error("unsupported format version {0} (this collector reads {FORMAT_VERSION})")]
    Version(u64),
    /// The header names a role this collector does not know.
    #[error("unknown role {0:?} (expected dns, edge, probe or control)")]
    UnknownRole(String),
    /// A record line does not parse.
    #[error("line {line}: {error}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The decoding error.
        error: crate::Error,
    },
    /// A string holds a NUL character, which PostgreSQL text cannot store: the file
    /// could never be committed, so it is rejected rather than retried for ever.
    #[error("line {line}: a string contains a NUL character (\\u0000)")]
    NulCharacter {
        /// 1-based line number.
        line: usize,
    },
    /// An empty line inside the file.
    #[error("line {line}: empty line")]
    BlankLine {
        /// 1-based line number.
        line: usize,
    },
    /// A count is larger than [`MAX_COUNT`].
    #[error("line {line}: {field} = {value} is out of range (at most {MAX_COUNT})")]
    OutOfRange {
        /// 1-based line number.
        line: usize,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// An operational record the store cannot keep ([`crate::ops::check`]).
    #[error("line {line}: operational record: {reason}")]
    BadOps {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A different file with this id was stored before.
    #[error("file id {file_id:?} was stored before with checksum {stored}, this one is {actual}")]
    Conflict {
        /// The id.
        file_id: String,
        /// Stored checksum.
        stored: String,
        /// This file's checksum.
        actual: String,
    },
}

/// Hex SHA-256 of `bytes` (the checksum a file is shipped with).
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

/// A log file that passed every check of [`parse_file`].
#[derive(Debug, Clone)]
pub struct ParsedFile {
    /// Its header line.
    pub header: FileHeader,
    /// Hex SHA-256 of the whole file.
    pub checksum: String,
    /// Every record, in file order.
    pub records: Vec<LogRecord>,
}

/// Validates a complete log file: checksum, header (magic, version, role), every line a
/// record, terminated by a newline.
///
/// # Examples
///
/// ```
/// use udn_core::logfile::{parse_file, sha256_hex, Invalid};
/// let body = b"{\"magic\":\"udn-log\",\"version\":1,\"file_id\":\"f1\",\"role\":\"probe\",\
///   \"instance\":\"p1\",\"opened_at\":0}\n";
/// let file = parse_file(body, &sha256_hex(body)).unwrap();
/// assert_eq!(file.header.file_id, "f1");
/// let cut = &body[..body.len() - 1];
/// assert!(matches!(parse_file(cut, &sha256_hex(cut)), Err(Invalid::Truncated { .. })));
/// ```
pub fn parse_file(body: &[u8], claimed: &str) -> Result<ParsedFile, Invalid> {
    let claimed = claimed.trim().to_ascii_lowercase();
    if claimed.len() != 64 || !claimed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid::MissingChecksum);
    }
    let actual = sha256_hex(body);
    if actual != claimed {
        return Err(Invalid::ChecksumMismatch { claimed, actual });
    }
    if body.is_empty() {
        return Err(Invalid::Empty);
    }
    // The header first: a foreign file is called foreign, not truncated.
    let header_end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
    let header = parse_header(&body[..header_end])?;
    if body.last() != Some(&b'\n') {
        let len = body.len() - body.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        return Err(Invalid::Truncated { len });
    }
    if let Some(line) = find_nul_escape(body) {
        return Err(Invalid::NulCharacter { line });
    }
    let records = parse_records(&body[header_end + 1..])?;
    check_ranges(&records)?;
    Ok(ParsedFile {
        header,
        checksum: actual,
        records,
    })
}

/// Refuses counts that could overflow a sum ([`MAX_COUNT`]) and operational records the
/// store cannot keep.
fn check_ranges(records: &[LogRecord]) -> Result<(), Invalid> {
    for (i, r) in records.iter().enumerate() {
        if let LogRecord::Ops(o) = r {
            crate::ops::check(o).map_err(|reason| Invalid::BadOps {
                line: i + 2,
                reason,
            })?;
        }
        if let LogRecord::Http(h) = r {
            for (field, value) in [
                ("bytes", h.bytes),
                ("fill_bytes", h.fill_bytes),
                ("duration_us", h.duration_us),
            ] {
                if value > MAX_COUNT {
                    return Err(Invalid::OutOfRange {
                        line: i + 2,
                        field,
                        value,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The 1-based line of the first JSON escape `\u0000` (a backslash-escaped backslash
/// followed by `u0000` is text, not a NUL).
fn find_nul_escape(body: &[u8]) -> Option<usize> {
    memchr::memmem::find_iter(body, b"\\u0000")
        .find(|&at| {
            let backslashes = body[..=at]
                .iter()
                .rev()
                .take_while(|&&b| b == b'\\')
                .count();
            backslashes % 2 == 1
        })
        .map(|at| memchr::memchr_iter(b'\n', &body[..at]).count() + 1)
}

fn parse_header(line: &[u8]) -> Result<FileHeader, Invalid> {
    let v: serde_json::Value = serde_json::from_slice(line).map_err(Invalid::Header)?;
    let magic = v.get("magic").and_then(|m| m.as_str()).unwrap_or("");
    if magic != MAGIC {
        return Err(Invalid::ForeignMagic(magic.to_owned()));
    }
    let version = v.get("version").and_then(|m| m.as_u64()).unwrap_or(0);
    if version != u64::from(FORMAT_VERSION) {
        return Err(Invalid::Version(version));
    }
    let role = v.get("role").and_then(|m| m.as_str()).unwrap_or("");
    if !matches!(role, "dns" | "edge" | "probe" | "control") {
        return Err(Invalid::UnknownRole(role.to_owned()));
    }
    serde_json::from_value(v).map_err(Invalid::Header)
}

/// Parses the record lines (after the header), on all cores for large files.
fn parse_records(body: &[u8]) -> Result<Vec<LogRecord>, Invalid> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || body.len() < 1 << 20 {
        return parse_chunk(body, 2);
    }
    // Split at newlines into `threads` chunks, remembering each chunk's first line number.
    let mut chunks = Vec::with_capacity(threads);
    let mut start = 0;
    let mut line = 2;
    for i in 1..=threads {
        let end = if i == threads {
            body.len()
        } else {
            let target = (body.len() * i / threads).max(start);
            match body[target..].iter().position(|&b| b == b'\n') {
                Some(p) => target + p + 1,
                None => body.len(),
            }
        };
        chunks.push((start, end, line));
        line += body[start..end].iter().filter(|&&b| b == b'\n').count();
        start = end;
    }
    let parts: Vec<Result<Vec<LogRecord>, Invalid>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|&(a, b, first)| s.spawn(move || parse_chunk(&body[a..b], first)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new())))
            .collect()
    });
    let mut out = Vec::new();
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

fn parse_chunk(body: &[u8], first_line: usize) -> Result<Vec<LogRecord>, Invalid> {
    let mut out = Vec::with_capacity(body.len() / 200);
    let mut line = first_line;
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(l) = lines.next() {
        if l.is_empty() {
            // Only the empty tail after the final newline is allowed.
            if lines.peek().is_some() {
                return Err(Invalid::BlankLine { line });
            }
            continue;
        }
        let rec = LogRecord::from_slice(l).map_err(|error| Invalid::BadLine { line, error })?;
        out.push(rec);
        line += 1;
    }
    Ok(out)
}
