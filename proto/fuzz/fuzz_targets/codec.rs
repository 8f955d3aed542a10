//! Arbitrary bytes through the server-side codec: it must never panic, every decoded frame must
//! consume bytes, and a `None` or an error must stop the loop (the connection waits or closes).
#![no_main]

use bytes::BytesMut;
use gearfleet_proto::codec::{Check, Codec, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small packet limit so that the "too large" path is reached often, plus the default one.
    for codec in [Codec::server().with_max_packet(256), Codec::server()] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            let checked = codec.check(&buf);
            match codec.decode_frame(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before, "frame decoded without consuming input");
                    match (&checked, &frame) {
                        (Ok(Check::Line { len }), Frame::Admin(line)) => {
                            assert_eq!(before - buf.len(), *len);
                            assert!(line.len() < *len);
                        }
                        (Ok(Check::Packet { len }), Frame::Packet(_)) => {
                            assert_eq!(before - buf.len(), *len);
                        }
                        other => panic!("check and decode_frame disagree: {other:?}"),
                    }
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "incomplete input must not be consumed");
                    assert!(matches!(checked, Ok(Check::Incomplete { .. })));
                    break;
                }
                Err(_) => break,
            }
        }
    }
});
