//! `SyncMessage::decode` (what the node's request-response codec runs on
//! every sync message a peer sends) on arbitrary bytes: never panics; errors
//! are short; what it accepts re-encodes to the same bytes when decoded
//! again. The stable, seeded twins are `sync_decode_serve_and_plan` in
//! `mmls-core/tests/fuzz.rs` and `sync_codec_reads_hostile_streams` in
//! `node/tests/fuzz.rs` (see FUZZING.md).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mmls_core::sync::SyncMessage;

fuzz_target!(|data: &[u8]| {
    match SyncMessage::decode(data) {
        Ok(m) => {
            let enc = m.encode();
            let again = SyncMessage::decode(&enc).expect("a re-encoded sync message decodes");
            assert_eq!(again.encode(), enc);
        }
        Err(err) => assert!(err.chars().count() <= 600, "{err}"),
    }
});
