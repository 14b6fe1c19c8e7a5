//! PostgreSQL's binary COPY format: a streaming tuple parser for `COPY ... TO STDOUT (FORMAT
//! binary)` and an encoder for `COPY ... FROM STDIN (FORMAT binary)`. Field values stay in the
//! binary send format end to end, so a PostgreSQL-to-PostgreSQL copy never converts a value.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cutover_core::{Row, Value};

/// The 11-byte signature that starts every binary COPY stream.
pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// A malformed binary COPY stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyFormatError {
    #[error("binary COPY stream does not start with the PGCOPY signature")]
    BadSignature,
    #[error("binary COPY tuple has {found} fields, expected {expected}")]
    FieldCount { expected: usize, found: i16 },
    #[error("binary COPY field has negative length {0}")]
    BadLength(i32),
    #[error("binary COPY stream ended inside a tuple")]
    Truncated,
    #[error("binary COPY stream has data after its trailer")]
    TrailingData,
}

/// Parses a binary COPY stream delivered in arbitrary chunks into rows of `columns` values.
/// Values are zero-copy slices of the chunks whenever a tuple lies within one chunk.
pub struct CopyParser {
    columns: usize,
    pending: BytesMut,
    header_done: bool,
    finished: bool,
}

impl CopyParser {
    pub fn new(columns: usize) -> Self {
        CopyParser {
            columns,
            pending: BytesMut::new(),
            header_done: false,
            finished: false,
        }
    }

    /// Feeds one chunk; complete rows are appended to `out`.
    pub fn feed(&mut self, chunk: Bytes, out: &mut Vec<Row>) -> Result<(), CopyFormatError> {
        let mut data = if self.pending.is_empty() {
            chunk
        } else {
            self.pending.extend_from_slice(&chunk);
            self.pending.split().freeze()
        };
        if self.finished {
            return if data.is_empty() {
                Ok(())
            } else {
                Err(CopyFormatError::TrailingData)
            };
        }
        if !self.header_done {
            if data.len() < 19 {
                self.pending.extend_from_slice(&data);
                return Ok(());
            }
            if &data[..11] != SIGNATURE {
                return Err(CopyFormatError::BadSignature);
            }
            let ext = u32::from_be_bytes([data[15], data[16], data[17], data[18]]) as usize;
            if data.len() < 19 + ext {
                self.pending.extend_from_slice(&data);
                return Ok(());
            }
            data.advance(19 + ext);
            self.header_done = true;
        }
        loop {
            match self.parse_tuple(&data)? {
                Parsed::Row(row, used) => {
                    out.push(row);
                    data.advance(used);
                }
                Parsed::Trailer => {
                    self.finished = true;
                    data.advance(2);
                    if !data.is_empty() {
                        return Err(CopyFormatError::TrailingData);
                    }
                    return Ok(());
                }
                Parsed::NeedMore => {
                    self.pending.extend_from_slice(&data);
                    return Ok(());
                }
            }
        }
    }

    /// Checks that the stream ended with its trailer.
    pub fn finish(&self) -> Result<(), CopyFormatError> {
        if self.finished {
            Ok(())
        } else {
            Err(CopyFormatError::Truncated)
        }
    }

    fn parse_tuple(&self, data: &Bytes) -> Result<Parsed, CopyFormatError> {
        if data.len() < 2 {
            return Ok(Parsed::NeedMore);
        }
        let count = i16::from_be_bytes([data[0], data[1]]);
        if count == -1 {
            return Ok(Parsed::Trailer);
        }
        if count < 0 || count as usize != self.columns {
            return Err(CopyFormatError::FieldCount {
                expected: self.columns,
                found: count,
            });
        }
        let mut at = 2usize;
        let mut values = Vec::with_capacity(self.columns);
        for _ in 0..self.columns {
            if data.len() < at + 4 {
                return Ok(Parsed::NeedMore);
            }
            let len = i32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            at += 4;
            if len == -1 {
                values.push(Value::Null);
                continue;
            }
            if len < 0 {
                return Err(CopyFormatError::BadLength(len));
            }
            let len = len as usize;
            if data.len() < at + len {
                return Ok(Parsed::NeedMore);
            }
            values.push(Value::Binary(data.slice(at..at + len)));
            at += len;
        }
        Ok(Parsed::Row(Row(values), at))
    }
}

enum Parsed {
    Row(Row, usize),
    Trailer,
    NeedMore,
}

/// Writes the binary COPY header.
pub fn put_header(buf: &mut BytesMut) {
    buf.put_slice(SIGNATURE);
    buf.put_i32(0);
    buf.put_i32(0);
}

/// Writes the binary COPY trailer.
pub fn put_trailer(buf: &mut BytesMut) {
    buf.put_i16(-1);
}

/// Writes one tuple of the values at `columns` of `row`. `Unchanged` values must have been
/// resolved by the caller; they are written as NULL only if the caller chose so explicitly.
pub fn put_row<'a>(buf: &mut BytesMut, values: impl ExactSizeIterator<Item = &'a Value>) {
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Value::Binary(b) => {
                buf.put_i32(b.len() as i32);
                buf.put_slice(b);
            }
            Value::Null | Value::Unchanged => buf.put_i32(-1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(rows: &[Row]) -> Bytes {
        let mut buf = BytesMut::new();
        put_header(&mut buf);
        for r in rows {
            put_row(&mut buf, r.0.iter());
        }
        put_trailer(&mut buf);
        buf.freeze()
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Value::Binary(v.into())),
        ]
    }

    proptest! {
        #[test]
        fn any_chunking_parses_the_same_rows(
            rows in proptest::collection::vec(proptest::collection::vec(value(), 3), 0..30),
            cuts in proptest::collection::vec(1usize..50, 0..20),
        ) {
            let rows: Vec<Row> = rows.into_iter().map(Row).collect();
            let data = encode(&rows);
            let mut parser = CopyParser::new(3);
            let mut out = Vec::new();
            let mut at = 0;
            for c in cuts {
                let end = (at + c).min(data.len());
                parser.feed(data.slice(at..end), &mut out).unwrap();
                at = end;
            }
            parser.feed(data.slice(at..), &mut out).unwrap();
            parser.finish().unwrap();
            prop_assert_eq!(out, rows);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut parser = CopyParser::new(2);
            let mut out = Vec::new();
            let _ = parser.feed(Bytes::from(data), &mut out);
        }
    }

    #[test]
    fn wrong_field_count_is_an_error() {
        let data = encode(&[Row(vec![Value::Null, Value::Null])]);
        let mut parser = CopyParser::new(3);
        let err = parser.feed(data, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err,
            CopyFormatError::FieldCount {
                expected: 3,
                found: 2
            }
        );
    }

    #[test]
    fn truncated_stream_is_reported_at_finish() {
        let data = encode(&[Row(vec![Value::Binary(Bytes::from_static(b"abc"))])]);
        let mut parser = CopyParser::new(1);
        parser
            .feed(data.slice(..data.len() - 3), &mut Vec::new())
            .unwrap();
        assert_eq!(parser.finish(), Err(CopyFormatError::Truncated));
    }
}
