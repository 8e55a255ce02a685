//! Web config parsing and validation must never panic, whatever the bytes. Certificate paths
//! resolve against a directory that does not exist; inputs naming absolute paths are skipped,
//! so that the fuzzer does not read the machine's files (or /dev/zero) as certificates.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if text.contains('/') {
            return;
        }
        let _ = procwatch::http::WebConfig::parse(text, std::path::Path::new("nonexistent-dir/web.yml"));
    }
});
