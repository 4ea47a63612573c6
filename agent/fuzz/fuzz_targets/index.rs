//! Fuzz target `index`: see `proglog_agent::fuzz::index`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proglog_agent::fuzz::index(data);
});
