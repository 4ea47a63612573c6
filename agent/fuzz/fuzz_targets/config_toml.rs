//! Fuzz target `config_toml`: see `proglog_agent::fuzz::config_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proglog_agent::fuzz::config_toml(data);
});
