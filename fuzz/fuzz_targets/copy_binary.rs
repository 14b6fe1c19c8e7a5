//! The binary COPY parser on arbitrary bytes delivered in two chunks split anywhere, most often
//! after a valid header (so the tuples are reached): no panic, and every row it returns has the
//! column count it was asked for.
#![no_main]

use bytes::Bytes;
use cutover_postgres::copy_binary::{CopyParser, SIGNATURE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [columns, split, flags, rest @ ..] = data else {
        return;
    };
    let columns = (*columns as usize % 8) + 1;
    let mut stream = Vec::with_capacity(rest.len() + 19);
    if flags & 1 == 0 {
        stream.extend_from_slice(SIGNATURE);
        stream.extend_from_slice(&0u32.to_be_bytes());
        stream.extend_from_slice(&0u32.to_be_bytes());
    }
    stream.extend_from_slice(rest);
    let at = (*split as usize).min(stream.len());
    let mut parser = CopyParser::new(columns);
    let mut rows = Vec::new();
    for chunk in [&stream[..at], &stream[at..]] {
        if parser.feed(Bytes::copy_from_slice(chunk), &mut rows).is_err() {
            return;
        }
    }
    let _ = parser.finish();
    assert!(rows.iter().all(|r| r.0.len() == columns));
});
