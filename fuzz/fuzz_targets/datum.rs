//! Binary values of every built-in type cutover decodes, and their text renderings: no panic,
//! and no allocation beyond what the bytes can describe.
#![no_main]

use cutover_core::datum::{decode, oid};
use libfuzzer_sys::fuzz_target;

/// The types cutover decodes, and arrays of some (element types come from the array's header).
const TYPES: &[u32] = &[
    oid::BOOL, oid::BYTEA, oid::CHAR, oid::NAME, oid::INT8, oid::INT2, oid::INT4, oid::TEXT,
    oid::OID, oid::JSON, oid::XML, oid::CIDR, oid::FLOAT4, oid::FLOAT8, oid::MONEY, oid::MACADDR,
    oid::INET, oid::BPCHAR, oid::VARCHAR, oid::DATE, oid::TIME, oid::TIMESTAMP, oid::TIMESTAMPTZ,
    oid::INTERVAL, oid::TIMETZ, oid::NUMERIC, oid::UUID, oid::JSONB,
    1000, 1005, 1007, 1016, 1009, 1015, 1021, 1022, 1182, 1115, 1185, 1231, 2951, 3807, 199,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let type_oid = TYPES[pick as usize % TYPES.len()];
    if let Ok(datum) = decode(type_oid, value) {
        let _ = datum.render();
    }
});
