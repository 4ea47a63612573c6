//! Fuzz target `raft_frame`: see `proglog_agent::fuzz::raft_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proglog_agent::fuzz::raft_frame(data);
});
