#![no_main]
//! Arbitrary bytes as a server's message stream: `backend::decode` until `None` or an error,
//! whole and in chunks, with the same result.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pgclone_fuzz::backend_decode(data));
