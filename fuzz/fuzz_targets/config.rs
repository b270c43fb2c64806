//! Fuzzes `Config::parse` with arbitrary UTF-8, then `validate` with what it
//! accepts. Neither may panic, and every error must have a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match burro::Config::parse(text) {
        Ok(config) => {
            if let Err(message) = config.validate() {
                assert!(!message.is_empty());
            }
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
