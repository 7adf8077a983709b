//! Small wire-format walkers shared by response rate limiting and the EDNS options the
//! server adds (cookies, NSID). They never panic: every read is bounds-checked and a
//! malformed message gives `None`.

pub(crate) fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// The offset just past the (possibly compressed) name starting at `i`.
pub(crate) fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *b.get(i)?;
        match len {
            0 => return Some(i + 1),
            l if l & 0xc0 == 0xc0 => {
                b.get(i + 1)?;
                return Some(i + 2);
            }
            l if l & 0xc0 != 0 => return None,
            l => i += 1 + l as usize,
        }
    }
    None
}

/// The offset just past the question section.
pub(crate) fn question_end(b: &[u8]) -> Option<usize> {
    let qd = be16(b, 4)?;
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(b, i)? + 4;
    }
    (i <= b.len()).then_some(i)
}

/// Where the OPT record is: the offset of its owner name, of its RDATA and the end of
/// its RDATA.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opt {
    pub start: usize,
    pub rdata: usize,
    pub end: usize,
}

impl Opt {
    /// The sender's UDP payload size.
    pub fn payload(&self, b: &[u8]) -> u16 {
        be16(b, self.start + 3).unwrap_or(512)
    }
    /// Every option as (code, data offset, data length).
    pub fn options<'a>(&self, b: &'a [u8]) -> impl Iterator<Item = (u16, &'a [u8], usize)> {
        let (mut o, end) = (self.rdata, self.end);
        std::iter::from_fn(move || {
            if o + 4 > end {
                return None;
            }
            let code = be16(b, o)?;
            let len = be16(b, o + 2)? as usize;
            let data = b.get(o + 4..o + 4 + len)?;
            if o + 4 + len > end {
                return None;
            }
            let at = o;
            o += 4 + len;
            Some((code, data, at))
        })
    }
}

/// Finds the OPT record of a message (the last one in the additional section).
pub(crate) fn find_opt(b: &[u8]) -> Option<Opt> {
    let mut i = question_end(b)?;
    let n = be16(b, 6)? as usize + be16(b, 8)? as usize;
    let ar = be16(b, 10)? as usize;
    let mut opt = None;
    for k in 0..n + ar {
        let start = i;
        i = skip_name(b, i)?;
        let t = be16(b, i)?;
        let rdlen = be16(b, i + 8)? as usize;
        let rdata = i + 10;
        let end = rdata + rdlen;
        if end > b.len() {
            return None;
        }
        if k >= n && t == 41 {
            opt = Some(Opt { start, rdata, end });
        }
        i = end;
    }
    opt
}

/// Copies `resp`'s header and question into `out` with TC set and no records (a
/// truncated answer: the client retries over TCP). With `opt`, the OPT record (its
/// bytes) is kept as the only additional record.
pub(crate) fn truncated(resp: &[u8], opt: Option<&[u8]>, out: &mut Vec<u8>) -> Option<()> {
    let q = question_end(resp)?;
    out.clear();
    out.extend_from_slice(&resp[..q]);
    out[2] |= 0x02;
    out[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
    if let Some(o) = opt {
        out[11] = 1;
        out.extend_from_slice(o);
    }
    Some(())
}

/// The question name lower-cased in wire form (uncompressed in a query or a response
/// question) and the question type.
pub(crate) fn question(b: &[u8]) -> Option<(&[u8], u16)> {
    if be16(b, 4)? == 0 {
        return None;
    }
    let end = skip_name(b, 12)?;
    let name = b.get(12..end)?;
    Some((name, be16(b, end)?))
}
