//! `protocol::decode_client_message`, the first thing that reads a client's WebSocket text:
//! arbitrary bytes (as UTF-8, lossily). Checked: a message that decodes re-encodes to one that
//! decodes to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("signaling_message");
    },
    |data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        if let Ok(message) = protocol::decode_client_message(&text) {
            let again = serde_json::to_string(&message).expect("a decoded message encodes");
            if again.len() <= protocol::MAX_MESSAGE_BYTES {
                let decoded = protocol::decode_client_message(&again)
                    .unwrap_or_else(|e| panic!("{again} does not decode again: {e:?}"));
                assert!(decoded == message, "{again} decodes to another message");
            }
        }
    }
);
