#![no_main]
//! Arbitrary bytes as one `INCREMENTAL.<relfile>` member of a 17+ incremental backup, cut into
//! chunks, through the decoder and the reconstruction plan.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pgclone_fuzz::incremental_member(data));
