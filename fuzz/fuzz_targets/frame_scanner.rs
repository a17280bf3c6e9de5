//! `FrameScanner` over arbitrary bytes: it never panics, never claims more
//! bytes than it was given, and a frame it returns is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_proxy::frame::{take_frame, FrameScanner, Scan};

fuzz_target!(|data: &[u8]| {
    let scanner = FrameScanner {
        max_frame: 1 << 16,
        stream_threshold: 256,
        bulk_tags: b"dD",
    };
    let mut at = 0;
    let mut raw = 0usize;
    while at < data.len() {
        if raw > 0 {
            let n = raw.min(data.len() - at);
            at += n;
            raw -= n;
            continue;
        }
        match scanner.scan(&data[at..]) {
            Ok(Scan::Frame { len, .. }) => {
                assert!(len >= 5 && at + len <= data.len());
                at += len;
            }
            Ok(Scan::Partial {
                available,
                remaining,
            }) => {
                assert!(available <= data.len() - at && available > 0);
                at += available;
                raw = remaining;
            }
            Ok(Scan::Incomplete) | Err(_) => break,
        }
    }
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(frame)) = take_frame(&mut buf, 1 << 16) {
        assert!(frame.body.len() + 5 <= data.len());
    }
});
