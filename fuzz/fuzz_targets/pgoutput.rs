//! The pgoutput decoder on arbitrary messages: a sequence of length-prefixed messages (a
//! Relation fills the cache that later row messages are decoded with), against a decoder that
//! knows one table. No panic, whatever the bytes.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use cutover_core::{Column, TableName, TableSchema};
use cutover_postgres::pgoutput::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let table = Arc::new(TableSchema {
        name: TableName::new("public", "t"),
        columns: vec![
            Column::new("id", 23, true),
            Column::new("v", 25, false),
            Column::new("n", 1700, false),
        ],
    });
    let mut decoder = Decoder::with_catalog([table]);
    let mut rest = data;
    while rest.len() >= 2 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        rest = &rest[2..];
        let take = len.min(rest.len());
        let _ = decoder.decode(&Bytes::copy_from_slice(&rest[..take]));
        rest = &rest[take..];
    }
});
