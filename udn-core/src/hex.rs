//! Lower-case hexadecimal, written once for every crate: certificate fingerprints,
//! secret tokens, cache file names, zone-file generic RDATA.

/// `bytes` as lower-case hex, two digits a byte.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// The bytes of an even-length hex string (either case); `None` for anything else
/// (odd length, a non-hex character, a sign).
pub fn decode(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// [`decode`] into a fixed-size array: `None` unless `s` is exactly `2 * N` hex digits.
pub fn decode_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    decode(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(decode("000FA5ff"), Some(vec![0x00, 0x0f, 0xa5, 0xff]));
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("+1"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode_array::<2>("0102"), Some([1, 2]));
        assert_eq!(decode_array::<2>("010203"), None);
    }

    proptest! {
        #[test]
        fn round_trips_and_matches_format(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = encode(&bytes);
            let reference: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(&s, &reference);
            prop_assert_eq!(decode(&s), Some(bytes.clone()));
            prop_assert_eq!(decode(&s.to_uppercase()), Some(bytes));
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,40}") {
            if let Some(b) = decode(&s) {
                prop_assert_eq!(encode(&b), s.to_lowercase());
            }
        }
    }
}
