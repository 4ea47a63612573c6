//! Fuzz target `store_entry`: see `proglog_agent::fuzz::store_entry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proglog_agent::fuzz::store_entry(data);
});
