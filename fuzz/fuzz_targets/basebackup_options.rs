#![no_main]
//! Arbitrary bytes as a 15+ server's BASE_BACKUP response: messages into a
//! `BaseBackupDecoder` (options dialect), archive bytes into a `TarSplitter`.
use libfuzzer_sys::fuzz_target;
use pgclone_proto::basebackup::Dialect;

fuzz_target!(|data: &[u8]| pgclone_fuzz::basebackup(data, Dialect::Options));
