//! The binary COPY parser on arbitrary bytes delivered in two chunks split anywhere: no panic,
//! and every row it returns has the column count it was asked for.
#![no_main]

use bytes::Bytes;
use cutover_postgres::copy_binary::CopyParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [columns, split, rest @ ..] = data else {
        return;
    };
    let columns = (*columns as usize % 8) + 1;
    let at = (*split as usize).min(rest.len());
    let mut parser = CopyParser::new(columns);
    let mut rows = Vec::new();
    for chunk in [&rest[..at], &rest[at..]] {
        if parser.feed(Bytes::copy_from_slice(chunk), &mut rows).is_err() {
            return;
        }
    }
    let _ = parser.finish();
    assert!(rows.iter().all(|r| r.0.len() == columns));
});
