#![no_main]
//! Arbitrary bytes as an archive member name (`plain::path::member_path`: an accepted name is
//! relative, without `..` or NUL) and as a tar stream (`TarSplitter`, whole and in chunks).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pgclone_fuzz::tar_path_policy(data));
