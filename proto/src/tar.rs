//! A push-based splitter for the tar streams PostgreSQL sends: bytes in, members out.
//!
//! Feed each chunk of an archive to [`TarSplitter::handle_data`] (chunks need not line up with
//! tar blocks) and drain [`TarSplitter::poll_event`]; call [`TarSplitter::finish`] when the
//! archive ends. Member contents come out as zero-copy slices of the input chunks.
//!
//! Headers are parsed with the `tar` crate's [`tar::Header`] and their checksums verified.
//! The server writes plain ustar headers: no pax or GNU long-name extensions. A member of any
//! other type is reported as [`MemberKind::Other`] with its contents, so the consumer's policy
//! decides (pgclone rejects it). This module does not judge paths or touch the file system.
//!
//! Both terminated archives (two zero blocks, 15+) and unterminated ones (10–14) are accepted.

use std::collections::VecDeque;

use bytes::Bytes;
use tar::{EntryType, Header};

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// Largest member accepted (1 TiB); PostgreSQL's files are at most a few GB.
pub const MAX_MEMBER_SIZE: u64 = 1 << 40;

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A regular file (`0` or NUL).
    File,
    /// A directory (`5`).
    Directory,
    /// A symbolic link (`2`).
    Symlink,
    /// Anything else (hard link, device, FIFO, pax header...), with its type byte.
    Other(u8),
}

/// A member header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The name as in the archive (PostgreSQL adds a trailing `/` to directories and links).
    pub name: Vec<u8>,
    /// Type.
    pub kind: MemberKind,
    /// Permission bits as sent (`mode & 07777`).
    pub mode: u32,
    /// Size of the contents in bytes.
    pub size: u64,
    /// Link target, for symlinks (and hard links).
    pub link_name: Option<Vec<u8>>,
    /// The header block as received, for writers that pass members through unchanged.
    pub raw_header: Bytes,
}

/// A tar stream that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// Header checksum mismatch: the stream is corrupt or not a tar.
    #[error(
        "tar header checksum mismatch at offset {offset} (stored {stored}, computed {computed})"
    )]
    Checksum {
        /// Byte offset of the header in the archive.
        offset: u64,
        /// What the header says.
        stored: u32,
        /// What the bytes sum to.
        computed: u32,
    },
    /// A header field that does not parse.
    #[error("invalid tar header at offset {offset}: {problem}")]
    BadHeader {
        /// Byte offset of the header in the archive.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// A member larger than [`MAX_MEMBER_SIZE`].
    #[error("tar member {name:?} claims {size} bytes, more than the {MAX_MEMBER_SIZE} accepted")]
    TooLarge {
        /// Member name.
        name: String,
        /// Claimed size.
        size: u64,
    },
    /// The archive ended inside a header or a member.
    #[error("tar archive ends in the middle of {0}")]
    Truncated(&'static str),
    /// Non-zero bytes after the end-of-archive marker.
    #[error("data after the end of the tar archive")]
    DataAfterEnd,
}

/// What the splitter reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarEvent {
    /// A member starts.
    Member(Member),
    /// Contents of the current member.
    Data(Bytes),
    /// The current member's contents are complete.
    MemberEnd,
}

#[derive(Debug)]
enum State {
    /// Collecting a header block.
    Header,
    /// In a member's contents, this many bytes left.
    Data(u64),
    /// In the zero padding after a member, this many bytes left.
    Padding(u64),
    /// Saw one zero block; the next must be zero too.
    OneZeroBlock,
    /// Saw the end-of-archive marker.
    End,
}

/// Splits a tar stream into members. See the module docs for the call order.
#[derive(Debug)]
pub struct TarSplitter {
    state: State,
    header: Box<[u8; BLOCK]>,
    header_fill: usize,
    offset: u64,
    events: VecDeque<TarEvent>,
}

impl Default for TarSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl TarSplitter {
    /// A splitter at the start of an archive.
    pub fn new() -> Self {
        Self {
            state: State::Header,
            header: Box::new([0; BLOCK]),
            header_fill: 0,
            offset: 0,
            events: VecDeque::new(),
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<TarEvent> {
        self.events.pop_front()
    }

    /// Bytes of the archive consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Feeds the next chunk of the archive.
    pub fn handle_data(&mut self, mut data: Bytes) -> Result<(), TarError> {
        while !data.is_empty() {
            match self.state {
                State::Header | State::OneZeroBlock => {
                    let want = BLOCK - self.header_fill;
                    let n = want.min(data.len());
                    let chunk = data.split_to(n);
                    if let Some(dst) = self.header.get_mut(self.header_fill..self.header_fill + n) {
                        dst.copy_from_slice(&chunk);
                    }
                    self.header_fill += n;
                    self.offset += n as u64;
                    if self.header_fill == BLOCK {
                        self.header_fill = 0;
                        self.on_block()?;
                    }
                }
                State::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    let chunk = data.split_to(n);
                    self.offset += n as u64;
                    self.events.push_back(TarEvent::Data(chunk));
                    let left = left - n as u64;
                    if left == 0 {
                        self.events.push_back(TarEvent::MemberEnd);
                        self.state = padding_after(self.offset);
                    } else {
                        self.state = State::Data(left);
                    }
                }
                State::Padding(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    let _ = data.split_to(n);
                    self.offset += n as u64;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Header
                    } else {
                        State::Padding(left)
                    };
                }
                State::End => {
                    if data.iter().any(|&b| b != 0) {
                        return Err(TarError::DataAfterEnd);
                    }
                    self.offset += data.len() as u64;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Declares the end of the archive: fails if it stopped inside a header or member.
    pub fn finish(&mut self) -> Result<(), TarError> {
        match self.state {
            State::Header if self.header_fill == 0 => Ok(()),
            State::Header => Err(TarError::Truncated("a header")),
            State::Data(_) => Err(TarError::Truncated("a member's contents")),
            // Some writers stop after the contents without padding; PostgreSQL pads.
            State::Padding(_) => Err(TarError::Truncated("a member's padding")),
            State::OneZeroBlock | State::End => Ok(()),
        }
    }

    fn on_block(&mut self) -> Result<(), TarError> {
        let block = &*self.header;
        let header_offset = self.offset - BLOCK as u64;
        if block.iter().all(|&b| b == 0) {
            self.state = match self.state {
                State::Header => State::OneZeroBlock,
                _ => State::End,
            };
            return Ok(());
        }
        if matches!(self.state, State::OneZeroBlock) {
            return Err(TarError::BadHeader {
                offset: header_offset,
                problem: "a single zero block followed by data".into(),
            });
        }
        let member = parse_header(block, header_offset)?;
        let size = member.size;
        self.events.push_back(TarEvent::Member(member));
        if size == 0 {
            self.events.push_back(TarEvent::MemberEnd);
            self.state = State::Header;
        } else {
            self.state = State::Data(size);
        }
        Ok(())
    }
}

fn padding_after(offset: u64) -> State {
    let rem = offset % BLOCK as u64;
    if rem == 0 {
        State::Header
    } else {
        State::Padding(BLOCK as u64 - rem)
    }
}

/// The checksum of a header block: the unsigned sum of its bytes with the checksum field taken
/// as eight spaces.
pub fn header_checksum(block: &[u8; BLOCK]) -> u32 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum()
}

fn parse_header(block: &[u8; BLOCK], offset: u64) -> Result<Member, TarError> {
    let mut header = Header::new_old();
    header.as_mut_bytes().copy_from_slice(block);
    let bad = |problem: String| TarError::BadHeader { offset, problem };
    let stored = header.cksum().map_err(|e| bad(e.to_string()))?;
    let computed = header_checksum(block);
    if stored != computed {
        return Err(TarError::Checksum {
            offset,
            stored,
            computed,
        });
    }
    let name = header.path_bytes().into_owned();
    if name.is_empty() {
        return Err(bad("empty member name".into()));
    }
    let size = header.entry_size().map_err(|e| bad(e.to_string()))?;
    if size > MAX_MEMBER_SIZE {
        return Err(TarError::TooLarge {
            name: String::from_utf8_lossy(&name).into_owned(),
            size,
        });
    }
    let mode = header.mode().map_err(|e| bad(e.to_string()))? & 0o7777;
    let kind = match header.entry_type() {
        EntryType::Regular | EntryType::Continuous => MemberKind::File,
        EntryType::Directory => MemberKind::Directory,
        EntryType::Symlink => MemberKind::Symlink,
        other => MemberKind::Other(other.as_byte()),
    };
    let link_name = header.link_name_bytes().map(|l| l.into_owned());
    Ok(Member {
        name,
        kind,
        mode,
        size,
        link_name,
        raw_header: Bytes::copy_from_slice(block),
    })
}

/// Builds a ustar header the way PostgreSQL's `tarCreateHeader` does (owner `postgres`),
/// for files pgclone adds to archives and for tests.
pub fn build_header(name: &str, kind: MemberKind, mode: u32, size: u64, mtime: u64) -> Header {
    let mut h = Header::new_ustar();
    // The name is copied as is, like tarCreateHeader does (PostgreSQL's limit is 99 bytes;
    // longer names are cut): no validation, so tests can build hostile archives too.
    let field = &mut h.as_old_mut().name;
    let n = name.len().min(field.len() - 1);
    field.fill(0);
    if let (Some(dst), Some(src)) = (field.get_mut(..n), name.as_bytes().get(..n)) {
        dst.copy_from_slice(src);
    }
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    let _ = h.set_username("postgres");
    let _ = h.set_groupname("postgres");
    h.set_entry_type(match kind {
        MemberKind::File => EntryType::Regular,
        MemberKind::Directory => EntryType::Directory,
        MemberKind::Symlink => EntryType::Symlink,
        MemberKind::Other(b) => EntryType::new(b),
    });
    h.set_cksum();
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{tar, terminate, TarMember};

    fn archive(members: &[TarMember<'_>], terminated: bool) -> Vec<u8> {
        let mut out = tar(members, 0o600);
        if terminated {
            terminate(&mut out);
        }
        out
    }

    fn split(chunks: &[&[u8]]) -> Result<Vec<TarEvent>, TarError> {
        let mut t = TarSplitter::new();
        let mut events = Vec::new();
        for c in chunks {
            t.handle_data(Bytes::copy_from_slice(c))?;
            while let Some(e) = t.poll_event() {
                events.push(e);
            }
        }
        t.finish()?;
        // Merge adjacent data events so that results compare across chunkings.
        let mut merged: Vec<TarEvent> = Vec::new();
        for e in events {
            match (merged.last_mut(), e) {
                (Some(TarEvent::Data(prev)), TarEvent::Data(d)) => {
                    let mut v = prev.to_vec();
                    v.extend_from_slice(&d);
                    *prev = Bytes::from(v);
                }
                (_, e) => merged.push(e),
            }
        }
        Ok(merged)
    }

    #[test]
    fn splits_members_at_any_chunking() {
        let big = vec![7u8; 1500];
        for terminated in [false, true] {
            let bytes = archive(
                &[
                    (
                        "backup_label",
                        MemberKind::File,
                        b"START WAL LOCATION",
                        None,
                    ),
                    ("global/", MemberKind::Directory, b"", None),
                    ("base/1/1259", MemberKind::File, &big, None),
                    (
                        "pg_tblspc/16388/",
                        MemberKind::Symlink,
                        b"",
                        Some("/srv/ts"),
                    ),
                    ("empty", MemberKind::File, b"", None),
                ],
                terminated,
            );
            let whole = split(&[&bytes]).expect("whole");
            assert_eq!(whole.len(), 3 + 2 + 3 + 2 + 2);
            let TarEvent::Member(m) = &whole[8] else {
                panic!("expected member")
            };
            assert_eq!(m.kind, MemberKind::Symlink);
            assert_eq!(m.link_name.as_deref(), Some(&b"/srv/ts"[..]));
            assert_eq!(whole[6], TarEvent::Data(Bytes::from(big.clone())));
            for cut in 0..=bytes.len() {
                let (a, b) = bytes.split_at(cut);
                assert_eq!(split(&[a, b]).as_ref(), Ok(&whole), "cut at {cut}");
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(split(&singles).as_ref(), Ok(&whole));
        }
    }

    #[test]
    fn rejects_corrupt_and_truncated_archives() {
        let bytes = archive(&[("a", MemberKind::File, b"hello", None)], false);
        let mut corrupt = bytes.clone();
        corrupt[0] = b'b';
        assert!(matches!(split(&[&corrupt]), Err(TarError::Checksum { .. })));
        assert_eq!(
            split(&[&bytes[..100]]),
            Err(TarError::Truncated("a header"))
        );
        assert_eq!(
            split(&[&bytes[..514]]),
            Err(TarError::Truncated("a member's contents"))
        );
        let mut after_end = archive(&[], true);
        after_end.extend_from_slice(&bytes);
        assert_eq!(split(&[&after_end]), Err(TarError::DataAfterEnd));
        let mut huge = build_header("a", MemberKind::File, 0o600, 0, 0);
        huge.set_size(MAX_MEMBER_SIZE + 1);
        huge.set_cksum();
        assert!(matches!(
            split(&[huge.as_bytes()]),
            Err(TarError::TooLarge { .. })
        ));
    }

    #[test]
    fn reports_other_member_types() {
        let bytes = archive(&[("fifo", MemberKind::Other(b'6'), b"", None)], true);
        let events = split(&[&bytes]).expect("parses");
        assert!(matches!(
            &events[0],
            TarEvent::Member(Member {
                kind: MemberKind::Other(b'6'),
                ..
            })
        ));
    }
}
