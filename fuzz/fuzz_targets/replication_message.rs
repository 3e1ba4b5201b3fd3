#![no_main]
//! Arbitrary bytes as one CopyBoth payload (`parse_copy_both`), and as the message stream of
//! START_REPLICATION driving a `WalReceiver`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pgclone_fuzz::replication(data));
