//! Fuzzes the BIND zone-file parser: arbitrary text must parse or fail with a line
//! number, never panic, with `$INCLUDE` and `$GENERATE` too (the include loader hands
//! back the same text, so includes nest to the depth bound). Run:
//! `cargo +nightly fuzz run zonefile` in `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = udn_dns::zonefile::parse(text, None) {
            assert!(e.line >= 1);
        }
        let mut loader = |_: &str| Ok::<String, String>(text.to_owned());
        if let Err(e) = udn_dns::zonefile::parse_with(text, None, &mut loader) {
            assert!(e.line >= 1);
        }
    }
});
