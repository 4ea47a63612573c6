//! Fuzz target `mux`: see `proglog_agent::fuzz::mux`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proglog_agent::fuzz::mux(data);
});
