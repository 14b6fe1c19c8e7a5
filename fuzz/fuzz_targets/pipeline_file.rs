//! The pipeline file parser on arbitrary text: an error or a pipeline, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = cutover::config::parse(text, "fuzz.toml", &|name| {
            (name == "SET").then(|| "postgres://u:p@h/db".to_string())
        });
    }
});
