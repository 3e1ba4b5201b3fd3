//! The WAL of a `pgclone verify` run: for each range of the manifest, every segment present
//! with the segment size and a sane long page header. Nothing deeper is parsed.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use pgclone_proto::{Lsn, SegNo, TimelineId, WalSegSize};

use crate::error::os_text;
use crate::manifest::verify::{BackupCheck, Stop};
use crate::manifest::{Manifest, WalRange};

/// `XLP_LONG_HEADER` in `xlp_info`.
pub(super) const XLP_LONG_HEADER: u16 = 0x0002;
/// `sizeof(XLogLongPageHeaderData)` on 64-bit platforms.
const LONG_HEADER_LEN: usize = 40;

impl BackupCheck<'_> {
    /// Checks that the WAL of every range is present, by segment name, size and first page
    /// header.
    pub(super) fn check_wal(
        &mut self,
        manifest: &Manifest,
        wal_dir: &Path,
        shown: &str,
    ) -> Result<(), Stop> {
        if manifest.wal_ranges.is_empty() {
            return Ok(());
        }
        let mut seg_size = None;
        let mut odd: Option<(String, u64)> = None;
        for range in &manifest.wal_ranges {
            match derive_segment_size(wal_dir, range.timeline, range.start) {
                Ok(size) => {
                    seg_size = Some(size);
                    break;
                }
                Err(found) => {
                    if odd.is_none() {
                        odd = found;
                    }
                }
            }
        }
        let Some(seg_size) = seg_size else {
            let range = manifest.wal_ranges[0];
            return match odd {
                Some((name, len)) => self.report(format!(
                    "WAL file \"{shown}/{name}\" has size {len}, which is not the size of a WAL segment with that name (a power of two from 1 MB to 1 GB)"
                )),
                None => self.report(format!(
                    "WAL segment holding {} on timeline {} is missing from \"{shown}\"",
                    range.start, range.timeline
                )),
            };
        };
        let mut magic: Option<(u16, String)> = None;
        for range in &manifest.wal_ranges {
            let first = range.start.segment(seg_size);
            let last = if range.end > range.start {
                Lsn(range.end.0 - 1).segment(seg_size)
            } else {
                first
            };
            for segno in first.0..=last.0 {
                let segno = SegNo(segno);
                let name = segno.file_name(range.timeline, seg_size);
                let rel = format!("{shown}/{name}");
                let check = SegmentCheck {
                    path: wal_dir.join(&name),
                    rel: &rel,
                    range,
                    segno,
                    seg_size,
                    first_of_range: segno == first,
                    system_identifier: manifest.system_identifier,
                };
                match check.run() {
                    Ok(m) => match &magic {
                        None => magic = Some((m, rel.clone())),
                        Some((seen, other)) if *seen != m => {
                            let message = format!(
                                "WAL segment \"{rel}\" has page magic 0x{m:04X}, but \"{other}\" has 0x{seen:04X}"
                            );
                            self.report(message)?;
                        }
                        Some(_) => {}
                    },
                    Err(message) => self.report(message)?,
                }
            }
        }
        Ok(())
    }
}

/// The segment size: the size of the file holding `start` on `tli`, among the names that
/// position has for each possible size, that is a power of two from 1 MB to 1 GB and gives
/// that very name. Otherwise `Err` with the first such file that exists, if any.
fn derive_segment_size(
    wal_dir: &Path,
    tli: TimelineId,
    start: Lsn,
) -> Result<WalSegSize, Option<(String, u64)>> {
    let mut seen = HashSet::new();
    let mut first_found = None;
    for shift in 20..=30u32 {
        let Ok(candidate) = WalSegSize::from_bytes(1 << shift) else {
            continue;
        };
        let name = start.segment(candidate).file_name(tli, candidate);
        if !seen.insert(name.clone()) {
            continue;
        }
        let Ok(meta) = fs::metadata(wal_dir.join(&name)) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if let Ok(size) = WalSegSize::from_bytes(meta.len()) {
            if start.segment(size).file_name(tli, size) == name {
                return Ok(size);
            }
        }
        first_found.get_or_insert((name, meta.len()));
    }
    Err(first_found)
}

/// One WAL segment to check.
struct SegmentCheck<'a> {
    path: PathBuf,
    rel: &'a str,
    range: &'a WalRange,
    segno: SegNo,
    seg_size: WalSegSize,
    first_of_range: bool,
    system_identifier: Option<u64>,
}

impl SegmentCheck<'_> {
    /// Checks presence, size and the long page header; returns `xlp_magic`.
    fn run(&self) -> Result<u16, String> {
        let rel = self.rel;
        let range = self.range;
        let meta = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!(
                    "WAL segment \"{rel}\" is missing (needed for timeline {} from {} to {})",
                    range.timeline, range.start, range.end
                ))
            }
            Err(e) => return Err(format!("could not stat file \"{rel}\": {}", os_text(&e))),
        };
        if !meta.is_file() {
            return Err(format!("WAL segment \"{rel}\" is not a regular file"));
        }
        let want = u64::from(self.seg_size.bytes());
        if meta.len() != want {
            return Err(format!(
                "WAL segment \"{rel}\" has size {} but the WAL segment size is {want}",
                meta.len()
            ));
        }
        let mut header = [0u8; LONG_HEADER_LEN];
        File::open(&self.path)
            .and_then(|mut f| f.read_exact(&mut header))
            .map_err(|e| format!("could not read file \"{rel}\": {}", os_text(&e)))?;
        let bad =
            |what: String| format!("WAL segment \"{rel}\" has an invalid page header: {what}");
        let u16_at = |o: usize| u16::from_ne_bytes([header[o], header[o + 1]]);
        let u32_at =
            |o: usize| u32::from_ne_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[o..o + 8]);
            u64::from_ne_bytes(b)
        };
        let (magic, info, tli, pageaddr) = (u16_at(0), u16_at(2), u32_at(4), u64_at(8));
        let (sysid, seg_size) = (u64_at(24), u32_at(32));
        if info & XLP_LONG_HEADER == 0 {
            return Err(bad(format!("xlp_info 0x{info:04X} lacks XLP_LONG_HEADER")));
        }
        let seg_start = self.segno.start_lsn(self.seg_size);
        if pageaddr != seg_start.0 {
            return Err(bad(format!(
                "page address {} instead of {seg_start}",
                Lsn(pageaddr)
            )));
        }
        // The segment where a timeline starts begins with pages of the previous timeline.
        let tli_ok = if self.first_of_range {
            (1..=range.timeline.0).contains(&tli)
        } else {
            tli == range.timeline.0
        };
        if !tli_ok {
            return Err(bad(format!("timeline {tli} instead of {}", range.timeline)));
        }
        if seg_size != self.seg_size.bytes() {
            return Err(bad(format!(
                "segment size {seg_size} instead of {}",
                self.seg_size.bytes()
            )));
        }
        if let Some(want) = self.system_identifier {
            if sysid != want {
                return Err(bad(format!("system identifier {sysid} instead of {want}")));
            }
        }
        Ok(magic)
    }
}
