//! Fuzz target `segment`: see `proglog_agent::fuzz::segment`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proglog_agent::fuzz::segment(data);
});
