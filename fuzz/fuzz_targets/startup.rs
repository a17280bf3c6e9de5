//! Start-up negotiation packets (startup, SSL, GSS, cancel) over arbitrary
//! bytes: the length check and the parser never panic, and a packet they
//! accept is within PostgreSQL's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_proxy::startup::{packet_len, parse, MAX_STARTUP_PACKET};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(len)) = packet_len(data) {
        assert!((8..=MAX_STARTUP_PACKET).contains(&len));
        if len <= data.len() {
            let _ = parse(bytes::Bytes::copy_from_slice(&data[..len]));
        }
    }
    let _ = parse(bytes::Bytes::copy_from_slice(data));
});
