//! Properties of the collector's file validation (network input): arbitrary bytes never
//! panic it, and a valid file cut anywhere is rejected, never half-accepted.

use proptest::prelude::*;
use udn_bins::collector::{Invalid, parse_file, sha256_hex};

const GOOD: &str = concat!(
    r#"{"magic":"udn-log","version":1,"file_id":"f","role":"edge","instance":"e","opened_at":0}"#,
    "\n",
    r#"{"type":"http","ts":1,"customer":null,"host":"h","path":"/","method":"GET","status":200,"bytes":5,"fill_bytes":0,"outcome":"hit","duration_us":1,"client":"127.0.0.1","pop":"fra"}"#,
    "\n",
    r#"{"type":"probe","ts":2,"pop":"fra","kind":"latency","target":"t","method":"dns","ok":true,"value":1.0}"#,
    "\n",
);

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_file(&body, &sha256_hex(&body));
    }

    #[test]
    fn arbitrary_lines_after_a_good_header_never_panic(tail in ".{0,400}") {
        let body = format!("{}{}\n", GOOD.lines().next().unwrap_or(""), tail);
        let _ = parse_file(body.as_bytes(), &sha256_hex(body.as_bytes()));
    }

    #[test]
    fn a_cut_file_is_rejected(cut in 1usize..GOOD.len()) {
        let body = &GOOD.as_bytes()[..cut];
        let r = parse_file(body, &sha256_hex(body));
        // Cut at a line end it is a shorter valid file; anywhere else it is rejected.
        if body.ends_with(b"\n") {
            let f = r.expect("a prefix of whole lines is valid");
            prop_assert_eq!(f.records.len() + 1, body.iter().filter(|&&b| b == b'\n').count());
        } else {
            prop_assert!(r.is_err());
        }
    }

    #[test]
    fn one_flipped_byte_never_passes_the_checksum(pos in 0usize..GOOD.len(), bit in 0u8..8) {
        let mut body = GOOD.as_bytes().to_vec();
        let sum = sha256_hex(&body);
        body[pos] ^= 1 << bit;
        let r = parse_file(&body, &sum);
        prop_assert!(matches!(r, Err(Invalid::ChecksumMismatch { .. })), "{:?}", r.err());
    }
}

#[test]
fn an_escaped_backslash_before_u0000_is_text_not_nul() {
    let body = GOOD.replace(r#""target":"t""#, r#""target":"a\\u0000b""#);
    assert!(body.contains(r#"a\\u0000b"#));
    let f = parse_file(body.as_bytes(), &sha256_hex(body.as_bytes())).unwrap();
    assert_eq!(f.records.len(), 2);
    let nul = GOOD.replace(r#""target":"t""#, r#""target":"a\u0000b""#);
    assert!(matches!(
        parse_file(nul.as_bytes(), &sha256_hex(nul.as_bytes())),
        Err(Invalid::NulCharacter { line: 3 })
    ));
}

#[test]
fn the_good_file_parses() {
    let f = parse_file(GOOD.as_bytes(), &sha256_hex(GOOD.as_bytes())).unwrap();
    assert_eq!(f.records.len(), 2);
    assert_eq!(f.rollups.http.len(), 1);
    assert_eq!(f.rollups.probe.len(), 1);
}
