//! The `INCREMENTAL.<relfile>` members of an incremental base backup (17+): a push decoder for
//! one member's bytes, and the rule that turns the prior version of the file plus the member
//! into the file as the primary had it.
//!
//! # Format (PostgreSQL 17 and 18 write and read it the same way)
//! All integers are 4 bytes in the server's native byte order (no conversion is done by the
//! server or by `pg_combinebackup`); the decoder learns the order from the magic number.
//! 1. magic `0xd3ae1f0d`;
//! 2. block count `N` (at most [`RELSEG_SIZE`]);
//! 3. truncation block length: the segment's length in blocks as the server read it, raised to
//!    the segment-relative limit block when the WAL summaries record a truncation in the range
//!    (the file may have shrunk after the backup started; replay redoes that). Servers before
//!    the February 2026 minor releases (17.8, 18.2) could send more than [`RELSEG_SIZE`] for a
//!    segment of a relation truncated in the range; the fixed servers send [`RELSEG_SIZE`]
//!    there, and the decoder caps it the same way (where `pg_combinebackup` refuses the file);
//! 4. `N` block numbers relative to the segment; the server sorts them, so they are strictly
//!    increasing here, each below [`RELSEG_SIZE`];
//! 5. when `N > 0`, zeros up to the next multiple of [`BLCKSZ`] (nothing when `N == 0`: an
//!    empty member is 12 bytes long). The padding's contents are not checked, as
//!    `pg_combinebackup` does not check them;
//! 6. `N` blocks of [`BLCKSZ`] bytes, in the order of the numbers.
//!
//! The header does not state the block size: a member is decoded with [`BLCKSZ`] = 8192, and
//! when the tar member's size is known ([`IncrementalDecoder::with_member_size`]) a server built
//! with another block size is refused at the header ([`IncrementalError::LengthMismatch`]).
//!
//! # Reconstruction ([`Header::plan`])
//! As `pg_combinebackup` (`reconstruct.c`) rebuilds the file from the member and the prior full
//! version of the file:
//! - the result is `max(truncation_block_length, highest sent block + 1)` blocks long;
//! - a sent block comes from the member;
//! - an unsent block below the truncation block length comes from the prior file, if the prior
//!   file has that whole block (a partial last block counts as absent); otherwise it is zeros
//!   (`pg_combinebackup` presumes such blocks were zero-filled by a file extension that wrote
//!   no WAL);
//! - an unsent block at or above the truncation block length is zeros: the prior file's
//!   contents there are never used;
//! - when no prior file exists `pg_combinebackup` fails. [`Header::plan`] refuses the same
//!   case unless no block of the result would come from the prior file (every block below the
//!   truncation block length was sent), in which case the result does not depend on it.
//!
//! [`Header::plan_limited`] narrows the prior blocks that stand to those below the segment's
//! limit block from the WAL summaries ([`crate::relfile::Limits`]), where `pg_combinebackup`
//! would take stale blocks of a fork truncated and re-extended without WAL in the range.
//!
//! Nothing here touches files: `pgclone`'s in-place writer carries out the plan.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// PostgreSQL's page size (`BLCKSZ`), the only one accepted.
pub const BLCKSZ: usize = 8192;

/// Blocks in a 1 GB relation segment at [`BLCKSZ`] (`RELSEG_SIZE`): the cap on the block count,
/// on the truncation block length and on every block number.
pub const RELSEG_SIZE: u32 = 131_072;

/// The first four bytes of every incremental member.
pub const INCREMENTAL_MAGIC: u32 = 0xd3ae_1f0d;

/// The prefix of an incremental member's file name.
pub const INCREMENTAL_PREFIX: &str = "INCREMENTAL.";

/// Magic, block count, truncation block length.
const FIXED_LEN: usize = 12;

/// The byte order of the server that wrote a member (its native order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Little-endian (x86-64, AArch64...).
    Little,
    /// Big-endian (s390x...).
    Big,
}

impl ByteOrder {
    fn read(self, b: [u8; 4]) -> u32 {
        match self {
            Self::Little => u32::from_le_bytes(b),
            Self::Big => u32::from_be_bytes(b),
        }
    }
}

/// The decoded header of one incremental member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The server's byte order, learned from the magic.
    pub byte_order: ByteOrder,
    /// The segment's length in blocks for reconstruction (see the module docs): prior blocks
    /// below it are kept unless sent, prior blocks at or beyond it are never used.
    pub truncation_block_length: u32,
    /// The numbers of the blocks the member carries, strictly increasing.
    pub blocks: Vec<u32>,
}

impl Header {
    /// Bytes before the first block: the fixed part and the block numbers, padded to a multiple
    /// of [`BLCKSZ`] when there are blocks.
    pub fn encoded_len(&self) -> u64 {
        header_len(self.blocks.len())
    }

    /// Bytes of the whole member: header and blocks.
    pub fn member_len(&self) -> u64 {
        self.encoded_len() + self.blocks.len() as u64 * BLCKSZ as u64
    }

    /// Blocks in the reconstructed file: the truncation block length, or one past the highest
    /// sent block if that is more.
    pub fn reconstructed_blocks(&self) -> u32 {
        let past_last = self.blocks.last().map_or(0, |b| b + 1);
        self.truncation_block_length.max(past_last)
    }

    /// Whether any block of the result comes from the prior file: some block below the
    /// truncation block length was not sent.
    pub fn needs_prior(&self) -> bool {
        self.needs_prior_below(self.truncation_block_length)
    }

    /// Whether some block below `end` was not sent.
    fn needs_prior_below(&self, end: u32) -> bool {
        let sent_below = self.blocks.iter().take_while(|&&b| b < end).count();
        sent_below < end as usize
    }

    /// How to turn the prior file (`prior_len` bytes, `None` when it does not exist) into the
    /// reconstructed one in place, by `pg_combinebackup`'s rule (see the module docs).
    pub fn plan(&self, prior_len: Option<u64>) -> Result<Plan, IncrementalError> {
        self.plan_limited(prior_len, None)
    }

    /// [`Self::plan`], with the segment's limit block from the WAL summaries when there is
    /// one (`limit_block`, relative to the segment): prior blocks are then kept only below
    /// `min(limit_block, truncation_block_length)`, and unsent blocks from there on are zeros.
    ///
    /// This is what the server's own comment on the truncation block length intends, and
    /// where it differs from `pg_combinebackup`: a fork truncated in the range and extended
    /// again without WAL (bulk extension leaves zero pages that no record touches) gets a
    /// truncation block length above the limit, and `pg_combinebackup` refills those blocks
    /// from the prior copy, bringing deleted rows back. With `None` the result is
    /// `pg_combinebackup`'s, byte for byte.
    pub fn plan_limited(
        &self,
        prior_len: Option<u64>,
        limit_block: Option<u32>,
    ) -> Result<Plan, IncrementalError> {
        let stands = self
            .truncation_block_length
            .min(limit_block.unwrap_or(u32::MAX));
        let keep_prior_blocks = match prior_len {
            Some(len) => {
                let whole = len / BLCKSZ as u64;
                u32::try_from(whole).unwrap_or(u32::MAX).min(stands)
            }
            None if self.needs_prior_below(stands) => {
                return Err(IncrementalError::NoPriorFile {
                    truncation_block_length: self.truncation_block_length,
                })
            }
            None => 0,
        };
        Ok(Plan {
            keep_prior_blocks,
            final_len: u64::from(self.reconstructed_blocks()) * BLCKSZ as u64,
        })
    }
}

/// How to reconstruct a file in place from its prior version and one member: cut the prior
/// file to `keep_prior_blocks` blocks (what lies beyond is never used, and cutting makes the
/// unsent blocks past it read as zeros), write every sent block at `number *` [`BLCKSZ`], then
/// set the length to `final_len`. Applying the same member twice gives the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Whole blocks of the prior file that stay (unless overwritten by a sent block).
    pub keep_prior_blocks: u32,
    /// Length of the reconstructed file in bytes.
    pub final_len: u64,
}

impl Plan {
    /// Length in bytes to cut the prior file to before writing blocks.
    pub fn keep_len(&self) -> u64 {
        u64::from(self.keep_prior_blocks) * BLCKSZ as u64
    }
}

/// Header bytes for `n` blocks (see [`Header::encoded_len`]).
fn header_len(n: usize) -> u64 {
    let raw = (FIXED_LEN + 4 * n) as u64;
    if n == 0 {
        raw
    } else {
        raw.next_multiple_of(BLCKSZ as u64)
    }
}

/// An incremental member that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IncrementalError {
    /// The first four bytes are not the magic number in either byte order.
    #[error("bad incremental magic number 0x{found:08x} (expected 0x{INCREMENTAL_MAGIC:08x})")]
    BadMagic {
        /// The bytes read as little-endian.
        found: u32,
    },
    /// More blocks than a segment holds.
    #[error("block count {count} exceeds the segment size {RELSEG_SIZE}")]
    TooManyBlocks {
        /// What the header says.
        count: u32,
    },
    /// A block number at or beyond the segment size.
    #[error("block number {number} is not below the segment size {RELSEG_SIZE}")]
    BlockOutOfRange {
        /// The number.
        number: u32,
    },
    /// Block numbers not strictly increasing.
    #[error("block number {number} follows block number {previous}")]
    BlockOrder {
        /// The number before.
        previous: u32,
        /// The number that does not exceed it.
        number: u32,
    },
    /// The tar member's size is not what the header implies (another block size, or damage).
    #[error("the member holds {member_size} bytes but its header implies {expected}")]
    LengthMismatch {
        /// Size of the tar member.
        member_size: u64,
        /// Size implied by the header with 8 kB blocks.
        expected: u64,
    },
    /// The member ended early.
    #[error("the member ends after {received} bytes, in the middle of {what}")]
    Truncated {
        /// Bytes received.
        received: u64,
        /// What was being read.
        what: &'static str,
    },
    /// Bytes after the last block.
    #[error("bytes after the last block (at offset {offset})")]
    TrailingBytes {
        /// Offset of the first extra byte.
        offset: u64,
    },
    /// The prior version of the file is missing, and the result would need some of its blocks.
    #[error(
        "the file is missing, but blocks below its truncation block length \
         {truncation_block_length} were not sent and would have to come from it"
    )]
    NoPriorFile {
        /// The header's truncation block length.
        truncation_block_length: u32,
    },
}

/// What the decoder reports, in member order: the header, then each block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncrementalEvent {
    /// The header is complete.
    Header(Header),
    /// One whole block.
    Block {
        /// Its number relative to the segment.
        number: u32,
        /// Its [`BLCKSZ`] bytes.
        data: Bytes,
    },
}

#[derive(Debug)]
enum State {
    /// Collecting the fixed part.
    Fixed,
    /// Collecting the block numbers.
    Numbers {
        order: ByteOrder,
        count: usize,
        truncation_block_length: u32,
    },
    /// Skipping this many padding bytes, then the header is out.
    Padding(u64),
    /// Collecting block `next` of the header's list.
    Blocks { next: usize },
    /// Everything was read; nothing may follow.
    Done,
}

/// Decodes one incremental member pushed in chunks of any size; see the module docs.
#[derive(Debug)]
pub struct IncrementalDecoder {
    state: State,
    /// Bytes of the item being collected, when it spans chunks.
    partial: BytesMut,
    /// Block numbers, kept to label the blocks.
    blocks: Vec<u32>,
    /// The header, until it is handed out once the padding is skipped.
    header: Option<Header>,
    member_size: Option<u64>,
    received: u64,
    events: VecDeque<IncrementalEvent>,
}

impl Default for IncrementalDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl IncrementalDecoder {
    /// A decoder at the start of a member of unknown size.
    pub fn new() -> Self {
        Self {
            state: State::Fixed,
            partial: BytesMut::new(),
            blocks: Vec::new(),
            header: None,
            member_size: None,
            received: 0,
            events: VecDeque::new(),
        }
    }

    /// A decoder for a tar member of `size` bytes: the header must imply exactly that size.
    pub fn with_member_size(size: u64) -> Self {
        Self {
            member_size: Some(size),
            ..Self::new()
        }
    }

    /// Feeds the next bytes of the member; events are queued for [`Self::poll_event`].
    pub fn handle_data(&mut self, mut data: Bytes) -> Result<(), IncrementalError> {
        while !data.is_empty() {
            if matches!(self.state, State::Done) {
                return Err(IncrementalError::TrailingBytes {
                    offset: self.received,
                });
            }
            if let State::Padding(left) = self.state {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                let _ = data.split_to(n);
                self.received += n as u64;
                self.state = State::Padding(left - n as u64);
                self.after_padding();
                continue;
            }
            let need = self.item_len();
            let Some(item) = self.collect(&mut data, need) else {
                continue;
            };
            self.item(item)?;
        }
        self.after_padding();
        Ok(())
    }

    /// The next decoded event, if any.
    pub fn poll_event(&mut self) -> Option<IncrementalEvent> {
        self.events.pop_front()
    }

    /// The member ended: it must have been complete.
    pub fn finish(&mut self) -> Result<(), IncrementalError> {
        self.after_padding();
        let what = match self.state {
            State::Done => return Ok(()),
            State::Fixed => "the header",
            State::Numbers { .. } => "the block numbers",
            State::Padding(_) => "the header padding",
            State::Blocks { .. } => "a block",
        };
        Err(IncrementalError::Truncated {
            received: self.received,
            what,
        })
    }

    /// Bytes of the item the current state collects.
    fn item_len(&self) -> usize {
        match self.state {
            State::Fixed => FIXED_LEN,
            State::Numbers { count, .. } => 4 * count,
            State::Blocks { .. } => BLCKSZ,
            State::Padding(_) | State::Done => 0,
        }
    }

    /// Takes bytes from `data` towards an item of `need` bytes; the item once complete. A whole
    /// item inside one chunk is sliced without copying.
    fn collect(&mut self, data: &mut Bytes, need: usize) -> Option<Bytes> {
        if self.partial.is_empty() && data.len() >= need {
            self.received += need as u64;
            return Some(data.split_to(need));
        }
        let n = (need - self.partial.len()).min(data.len());
        self.partial.extend_from_slice(&data.split_to(n));
        self.received += n as u64;
        (self.partial.len() == need).then(|| self.partial.split().freeze())
    }

    /// One complete item of the current state.
    fn item(&mut self, item: Bytes) -> Result<(), IncrementalError> {
        match self.state {
            State::Fixed => self.fixed(&item),
            State::Numbers {
                order,
                truncation_block_length,
                ..
            } => self.numbers(&item, order, truncation_block_length),
            State::Blocks { next } => {
                let number = self.blocks.get(next).copied().unwrap_or_default();
                self.events
                    .push_back(IncrementalEvent::Block { number, data: item });
                self.state = if next + 1 < self.blocks.len() {
                    State::Blocks { next: next + 1 }
                } else {
                    State::Done
                };
                Ok(())
            }
            State::Padding(_) | State::Done => Ok(()),
        }
    }

    /// Magic, block count and truncation block length, checked.
    fn fixed(&mut self, item: &[u8]) -> Result<(), IncrementalError> {
        let word = |i: usize| -> [u8; 4] {
            let mut w = [0u8; 4];
            if let Some(src) = item.get(i * 4..i * 4 + 4) {
                w.copy_from_slice(src);
            }
            w
        };
        let magic = word(0);
        let order = if u32::from_le_bytes(magic) == INCREMENTAL_MAGIC {
            ByteOrder::Little
        } else if u32::from_be_bytes(magic) == INCREMENTAL_MAGIC {
            ByteOrder::Big
        } else {
            return Err(IncrementalError::BadMagic {
                found: u32::from_le_bytes(magic),
            });
        };
        let count = order.read(word(1));
        if count > RELSEG_SIZE {
            return Err(IncrementalError::TooManyBlocks { count });
        }
        // Servers before 17.8 and 18.2 (upstream commit "Don't set the truncation block length
        // greater than RELSEG_SIZE") may send more for a segment of a relation truncated in the
        // range; the fix caps it at the segment size, as here.
        let truncation_block_length = order.read(word(2)).min(RELSEG_SIZE);
        let count = count as usize;
        self.check_member_size(count)?;
        self.state = State::Numbers {
            order,
            count,
            truncation_block_length,
        };
        if count == 0 {
            self.numbers(&[], order, truncation_block_length)?;
        }
        Ok(())
    }

    /// With a known member size, refuses a header that implies another.
    fn check_member_size(&self, count: usize) -> Result<(), IncrementalError> {
        let expected = header_len(count) + count as u64 * BLCKSZ as u64;
        match self.member_size {
            Some(member_size) if member_size != expected => Err(IncrementalError::LengthMismatch {
                member_size,
                expected,
            }),
            _ => Ok(()),
        }
    }

    /// The block numbers, checked: each below the segment size, strictly increasing.
    fn numbers(
        &mut self,
        item: &[u8],
        order: ByteOrder,
        truncation_block_length: u32,
    ) -> Result<(), IncrementalError> {
        let mut blocks = Vec::with_capacity(item.len() / 4);
        for raw in item.chunks_exact(4) {
            let mut w = [0u8; 4];
            w.copy_from_slice(raw);
            let number = order.read(w);
            if number >= RELSEG_SIZE {
                return Err(IncrementalError::BlockOutOfRange { number });
            }
            if let Some(&previous) = blocks.last() {
                if number <= previous {
                    return Err(IncrementalError::BlockOrder { previous, number });
                }
            }
            blocks.push(number);
        }
        let padding = header_len(blocks.len()) - (FIXED_LEN + item.len()) as u64;
        self.header = Some(Header {
            byte_order: order,
            truncation_block_length,
            blocks: blocks.clone(),
        });
        self.blocks = blocks;
        self.state = State::Padding(padding);
        self.after_padding();
        Ok(())
    }

    /// Once the padding is skipped: hands out the header and moves on to the blocks.
    fn after_padding(&mut self) {
        if let State::Padding(0) = self.state {
            if let Some(h) = self.header.take() {
                self.events.push_back(IncrementalEvent::Header(h));
            }
            self.state = if self.blocks.is_empty() {
                State::Done
            } else {
                State::Blocks { next: 0 }
            };
        }
    }
}

/// The relation file an `INCREMENTAL.` file name stands for: `INCREMENTAL.16384.1` gives
/// `16384.1`. `None` unless the rest looks like a relation segment file
/// (`<digits>[_fsm|_vm|_init][.<digits>]`), the only files the server sends incrementally.
pub fn relation_file_name(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix(INCREMENTAL_PREFIX)?;
    let (stem, segment) = match rest.split_once('.') {
        Some((stem, seg)) => (stem, Some(seg)),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let number = ["_fsm", "_vm", "_init"]
        .iter()
        .find_map(|fork| stem.strip_suffix(fork))
        .unwrap_or(stem);
    (digits(number) && segment.is_none_or(digits)).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::incremental_member;

    fn decode_split(bytes: &[u8], at: usize) -> Result<Vec<IncrementalEvent>, IncrementalError> {
        let mut d = IncrementalDecoder::with_member_size(bytes.len() as u64);
        let mut events = Vec::new();
        for part in [&bytes[..at], &bytes[at..]] {
            d.handle_data(Bytes::copy_from_slice(part))?;
            while let Some(e) = d.poll_event() {
                events.push(e);
            }
        }
        d.finish()?;
        Ok(events)
    }

    fn block(fill: u8) -> Vec<u8> {
        vec![fill; BLCKSZ]
    }

    #[test]
    fn decodes_at_every_split_point() {
        let blocks = [(0u32, block(1)), (7, block(2)), (9, block(3))];
        let bytes = incremental_member(5, &blocks);
        assert_eq!(bytes.len(), BLCKSZ + 3 * BLCKSZ);
        let want_header = Header {
            byte_order: ByteOrder::Little,
            truncation_block_length: 5,
            blocks: vec![0, 7, 9],
        };
        for at in 0..=bytes.len() {
            let events = decode_split(&bytes, at).expect("decodes");
            assert_eq!(events.len(), 4, "split at {at}");
            assert_eq!(events[0], IncrementalEvent::Header(want_header.clone()));
            for (e, (n, data)) in events[1..].iter().zip(&blocks) {
                assert_eq!(
                    *e,
                    IncrementalEvent::Block {
                        number: *n,
                        data: Bytes::copy_from_slice(data)
                    },
                    "split at {at}"
                );
            }
        }
    }

    #[test]
    fn empty_member_is_twelve_bytes_and_may_come_byte_by_byte() {
        let bytes = incremental_member(3, &[]);
        assert_eq!(bytes.len(), 12);
        let mut d = IncrementalDecoder::new();
        for b in &bytes {
            d.handle_data(Bytes::copy_from_slice(&[*b])).expect("byte");
        }
        d.finish().expect("complete");
        let Some(IncrementalEvent::Header(h)) = d.poll_event() else {
            panic!("header")
        };
        assert_eq!((h.truncation_block_length, h.blocks.len()), (3, 0));
        assert_eq!(h.member_len(), 12);
        assert_eq!(d.poll_event(), None);
    }

    #[test]
    fn learns_big_endian_from_the_magic() {
        let mut bytes = Vec::new();
        for w in [INCREMENTAL_MAGIC, 1, 4, 2] {
            bytes.extend_from_slice(&w.to_be_bytes());
        }
        bytes.resize(BLCKSZ, 0);
        bytes.extend_from_slice(&block(9));
        let events = decode_split(&bytes, 100).expect("decodes");
        let IncrementalEvent::Header(h) = &events[0] else {
            panic!("header")
        };
        assert_eq!(h.byte_order, ByteOrder::Big);
        assert_eq!((h.truncation_block_length, h.blocks.clone()), (4, vec![2]));
    }

    fn header_words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn refuses_malformed_headers() {
        let m = INCREMENTAL_MAGIC;
        let cases = [
            (header_words(&[1, 0, 0]), "BadMagic"),
            (header_words(&[m, RELSEG_SIZE + 1, 0]), "TooManyBlocks"),
            (header_words(&[m, 1, 0, RELSEG_SIZE]), "BlockOutOfRange"),
            (header_words(&[m, 2, 0, 5, 5]), "BlockOrder"),
            (header_words(&[m, 2, 0, 5, 4]), "BlockOrder"),
        ];
        for (bytes, want) in cases {
            let mut d = IncrementalDecoder::new();
            let err = d.handle_data(Bytes::from(bytes)).expect_err(want);
            assert!(format!("{err:?}").starts_with(want), "{want}: {err:?}");
        }
    }

    #[test]
    fn caps_the_truncation_block_length_at_the_segment_size() {
        let bytes = header_words(&[INCREMENTAL_MAGIC, 0, RELSEG_SIZE + 5]);
        let events = decode_split(&bytes, 3).expect("decodes");
        let IncrementalEvent::Header(h) = &events[0] else {
            panic!("header")
        };
        assert_eq!(h.truncation_block_length, RELSEG_SIZE);
    }

    #[test]
    fn refuses_truncated_and_trailing_bytes_and_wrong_sizes() {
        let bytes = incremental_member(2, &[(1, block(4))]);
        for cut in [0, 5, 12, 13, BLCKSZ, bytes.len() - 1] {
            let mut d = IncrementalDecoder::new();
            d.handle_data(Bytes::copy_from_slice(&bytes[..cut]))
                .expect("prefix");
            assert!(
                matches!(d.finish(), Err(IncrementalError::Truncated { .. })),
                "cut {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        let mut d = IncrementalDecoder::new();
        assert_eq!(
            d.handle_data(Bytes::from(long)),
            Err(IncrementalError::TrailingBytes {
                offset: bytes.len() as u64
            })
        );
        let mut d = IncrementalDecoder::with_member_size(bytes.len() as u64 * 2);
        assert!(matches!(
            d.handle_data(Bytes::from(bytes)),
            Err(IncrementalError::LengthMismatch { .. })
        ));
    }

    fn header(tbl: u32, blocks: &[u32]) -> Header {
        Header {
            byte_order: ByteOrder::Little,
            truncation_block_length: tbl,
            blocks: blocks.to_vec(),
        }
    }

    #[test]
    fn reconstructed_length_is_the_truncation_length_or_past_the_last_block() {
        assert_eq!(header(10, &[2, 3]).reconstructed_blocks(), 10);
        assert_eq!(header(10, &[2, 12]).reconstructed_blocks(), 13);
        assert_eq!(header(0, &[]).reconstructed_blocks(), 0);
        let b = BLCKSZ as u64;
        // Prior longer than the truncation length: cut to it.
        assert_eq!(
            header(4, &[1]).plan(Some(9 * b)),
            Ok(Plan {
                keep_prior_blocks: 4,
                final_len: 4 * b
            })
        );
        // Prior shorter, with a partial last block that does not count.
        assert_eq!(
            header(6, &[7]).plan(Some(2 * b + 100)),
            Ok(Plan {
                keep_prior_blocks: 2,
                final_len: 8 * b
            })
        );
    }

    #[test]
    fn a_missing_prior_file_is_refused_unless_nothing_comes_from_it() {
        assert!(!header(0, &[]).needs_prior());
        assert!(!header(2, &[0, 1, 5]).needs_prior());
        assert!(header(2, &[1, 5]).needs_prior());
        assert_eq!(
            header(2, &[1]).plan(None),
            Err(IncrementalError::NoPriorFile {
                truncation_block_length: 2
            })
        );
        assert_eq!(
            header(2, &[0, 1, 3]).plan(None),
            Ok(Plan {
                keep_prior_blocks: 0,
                final_len: 4 * BLCKSZ as u64
            })
        );
    }

    #[test]
    fn a_limit_block_narrows_the_prior_blocks_that_stand() {
        let b = BLCKSZ as u64;
        // Truncated to 3 in the range, re-extended to 10 blocks, block 8 written since.
        let h = header(10, &[8]);
        assert_eq!(
            h.plan_limited(Some(20 * b), Some(3)),
            Ok(Plan {
                keep_prior_blocks: 3,
                final_len: 10 * b
            })
        );
        // Without a limit: pg_combinebackup's rule, prior blocks up to 10 stand.
        assert_eq!(h.plan_limited(Some(20 * b), None), h.plan(Some(20 * b)));
        assert_eq!(h.plan(Some(20 * b)).map(|p| p.keep_prior_blocks), Ok(10));
        // A limit above the truncation block length or the prior length changes nothing.
        assert_eq!(h.plan_limited(Some(20 * b), Some(15)), h.plan(Some(20 * b)));
        assert_eq!(h.plan_limited(Some(2 * b), Some(3)), h.plan(Some(2 * b)));
        // Limit 0: nothing of the prior file stands, so it need not exist.
        assert_eq!(
            h.plan_limited(None, Some(0)),
            Ok(Plan {
                keep_prior_blocks: 0,
                final_len: 10 * b
            })
        );
        // Every block below the limit was sent: no prior file is needed either.
        assert_eq!(
            header(10, &[0, 1, 8]).plan_limited(None, Some(2)),
            Ok(Plan {
                keep_prior_blocks: 0,
                final_len: 10 * b
            })
        );
        assert!(header(10, &[0, 8]).plan_limited(None, Some(2)).is_err());
    }

    #[test]
    fn only_relation_files_are_incremental() {
        for (name, want) in [
            ("INCREMENTAL.16384", Some("16384")),
            ("INCREMENTAL.16384.2", Some("16384.2")),
            ("INCREMENTAL.16384_vm", Some("16384_vm")),
            ("INCREMENTAL.1259_fsm.1", Some("1259_fsm.1")),
            ("INCREMENTAL.pg_control", None),
            ("INCREMENTAL.", None),
            ("INCREMENTAL.12.", None),
            ("INCREMENTAL.12_x", None),
            ("16384", None),
        ] {
            assert_eq!(relation_file_name(name), want, "{name}");
        }
    }
}
