//! `-X fetch`: the server appends the WAL files to the base archive after everything else
//! (`global/pg_control` last, then `pg_wal/<segment>`). Walking the base archive's tar
//! headers (the contents are skipped, not copied) finds where the WAL begins. A
//! server-compressed archive is not watched: its members cannot be seen.

use bytes::Bytes;
use pgclone_proto::tar::{MemberKind, TarEvent, TarSplitter};

/// Watches one base archive for its first WAL file; starts at the archive's start.
#[derive(Debug, Default)]
pub struct FetchWatch {
    splitter: TarSplitter,
}

impl FetchWatch {
    /// Feeds archive bytes; true once a regular file under `pg_wal/` begins (its directory
    /// entries come earlier, with the data directory). A stream that does not parse as tar is
    /// never reported (the writer reports it).
    pub fn wal_begins(&mut self, data: &Bytes) -> bool {
        if self.splitter.handle_data(data.clone()).is_err() {
            return false;
        }
        let mut found = false;
        while let Some(event) = self.splitter.poll_event() {
            if let TarEvent::Member(m) = event {
                found |= m.kind == MemberKind::File && m.name.starts_with(b"pg_wal/");
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgclone_proto::tar::build_header;

    fn member(name: &str, kind: MemberKind, size: u64) -> Vec<u8> {
        let mut out = build_header(name, kind, 0o600, size, 0).as_bytes().to_vec();
        out.resize(out.len() + size.div_ceil(512) as usize * 512, 0);
        out
    }

    /// The `pg_wal/` directory entry and `pg_control` are not the WAL; the first segment is,
    /// even when its header arrives split across two pieces.
    #[test]
    fn spots_the_first_segment() {
        let mut w = FetchWatch::default();
        let mut head = member("pg_wal/", MemberKind::Directory, 0);
        head.extend(member("global/pg_control", MemberKind::File, 8192));
        assert!(!w.wal_begins(&Bytes::from(head)));
        let seg = member("pg_wal/000000010000000000000002", MemberKind::File, 1024);
        assert!(!w.wal_begins(&Bytes::copy_from_slice(&seg[..100])));
        assert!(w.wal_begins(&Bytes::copy_from_slice(&seg[100..])));
    }
}
