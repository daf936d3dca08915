//! `Envelope::decode` on arbitrary bytes: never panics; errors are short;
//! what it accepts re-encodes to an envelope that decodes to itself. The
//! stable, seeded twin of this target is `envelope_decode` in
//! `mmls-core/tests/fuzz.rs` (see FUZZING.md).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mmls_core::Envelope;

fuzz_target!(|data: &[u8]| {
    match Envelope::decode(data) {
        Ok(e) => assert_eq!(Envelope::decode(&e.encode()).as_ref(), Ok(&e)),
        Err(err) => assert!(err.to_string().chars().count() <= 600, "{err}"),
    }
});
