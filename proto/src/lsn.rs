//! Units of the replication protocol: WAL positions, timelines, object ids, segment numbers and
//! the server's WAL segment size, each in its own newtype so that a signature says which it takes.

use std::fmt;
use std::str::FromStr;

use crate::error::ProtocolError;

/// A position in the write-ahead log (`XLogRecPtr`), printed the way PostgreSQL prints it:
/// `%X/%X` (for example `0/2000028`).
///
/// Parsing is lenient about zero padding (PostgreSQL 19 prints `0/0A000028`) and case.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position `0/0`.
    pub const INVALID: Self = Self(0);

    /// The number of the segment holding this position.
    pub fn segment(self, size: WalSegSize) -> SegNo {
        SegNo(self.0 / u64::from(size.bytes()))
    }

    /// Offset of this position inside its segment.
    pub fn segment_offset(self, size: WalSegSize) -> u64 {
        self.0 % u64::from(size.bytes())
    }

    /// This position rounded down to the start of its segment.
    pub fn segment_start(self, size: WalSegSize) -> Self {
        Self(self.0 - self.segment_offset(size))
    }

    /// This position moved forward by `n` bytes, or `None` on overflow.
    pub fn checked_add(self, n: u64) -> Option<Self> {
        self.0.checked_add(n).map(Self)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Lsn {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProtocolError::BadValue {
            what: "LSN",
            value: s.chars().take(64).collect(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let parse = |part: &str| -> Result<u64, ProtocolError> {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u64::from_str_radix(part, 16).map_err(|_| bad())
        };
        Ok(Self((parse(hi)? << 32) | parse(lo)?))
    }
}

/// A timeline id (`TimeLineID`). Valid timelines start at 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TimelineId {
    type Err = ProtocolError;

    /// Parses the decimal text the server sends (int4 on 10–15, int8 on 16+).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u64>() {
            Ok(v) if (1..=u64::from(u32::MAX)).contains(&v) => Ok(Self(v as u32)),
            _ => Err(ProtocolError::BadValue {
                what: "timeline",
                value: s.chars().take(64).collect(),
            }),
        }
    }
}

impl TimelineId {
    /// Name of this timeline's history file, `%08X.history`.
    pub fn history_file_name(self) -> String {
        format!("{:08X}.history", self.0)
    }
}

/// A PostgreSQL object id, here always a tablespace's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Oid {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u32>() {
            Ok(v) if v != 0 => Ok(Self(v)),
            _ => Err(ProtocolError::BadValue {
                what: "oid",
                value: s.chars().take(64).collect(),
            }),
        }
    }
}

/// A WAL segment number (`XLogSegNo`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegNo(pub u64);

impl SegNo {
    /// The segment's file name, `%08X%08X%08X` of timeline, high and low part, as PostgreSQL
    /// names it (`XLogFileName`).
    pub fn file_name(self, tli: TimelineId, size: WalSegSize) -> String {
        let per_id = size.segments_per_xlog_id();
        format!(
            "{:08X}{:08X}{:08X}",
            tli.0,
            self.0 / per_id,
            self.0 % per_id
        )
    }

    /// The first position of this segment.
    pub fn start_lsn(self, size: WalSegSize) -> Lsn {
        Lsn(self.0 * u64::from(size.bytes()))
    }
}

/// The server's WAL segment size: a power of two from 1 MB to 1 GB (`wal_segment_size`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WalSegSize(u32);

impl WalSegSize {
    /// PostgreSQL's default, 16 MB.
    pub const DEFAULT: Self = Self(16 * 1024 * 1024);

    /// Validates a size in bytes.
    pub fn from_bytes(bytes: u64) -> Result<Self, ProtocolError> {
        if bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes) {
            Ok(Self(bytes as u32))
        } else {
            Err(ProtocolError::BadValue {
                what: "WAL segment size (must be a power of two between 1 MB and 1 GB)",
                value: bytes.to_string(),
            })
        }
    }

    /// Parses the text of `SHOW wal_segment_size`, such as `16MB` or `1GB`.
    pub fn parse_show(text: &str) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError::BadValue {
            what: "wal_segment_size",
            value: text.chars().take(64).collect(),
        };
        // The setting's unit is bytes; SHOW prints it with a unit (`16MB`).
        let bytes = crate::guc::size(text, 1).ok_or_else(bad)?;
        Self::from_bytes(bytes)
    }

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }

    fn segments_per_xlog_id(self) -> u64 {
        0x1_0000_0000 / u64::from(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_and_rejects_garbage() {
        for (text, value) in [
            ("0/0", 0u64),
            ("0/2000028", 0x200_0028),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().expect("valid");
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("0/0A000028".parse::<Lsn>().ok(), Some(Lsn(0xA00_0028)));
        assert_eq!("0/a000028".parse::<Lsn>().ok(), Some(Lsn(0xA00_0028)));
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "123456789/AAAA5555",
            "0/G",
            "0/1/2",
            " 0/1",
            "+0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn segment_names_follow_xlogfilename() {
        let size = WalSegSize::DEFAULT;
        let lsn: Lsn = "0/4000028".parse().expect("valid");
        assert_eq!(lsn.segment(size), SegNo(4));
        assert_eq!(lsn.segment_start(size), Lsn(0x400_0000));
        assert_eq!(
            SegNo(4).file_name(TimelineId(1), size),
            "000000010000000000000004"
        );
        let lsn: Lsn = "1/FF000000".parse().expect("valid");
        assert_eq!(
            lsn.segment(size).file_name(TimelineId(0x1A), size),
            "0000001A00000001000000FF"
        );
        let big = WalSegSize::parse_show("1GB").expect("valid");
        assert_eq!(
            Lsn(0x5_4000_0000)
                .segment(big)
                .file_name(TimelineId(2), big),
            "000000020000000500000001"
        );
        assert_eq!(TimelineId(0x2A).history_file_name(), "0000002A.history");
    }

    #[test]
    fn wal_segment_size_parses_show_output() {
        assert_eq!(
            WalSegSize::parse_show("16MB").ok(),
            Some(WalSegSize::DEFAULT)
        );
        assert_eq!(
            WalSegSize::parse_show("1GB").map(WalSegSize::bytes).ok(),
            Some(1 << 30)
        );
        for bad in [
            "",
            "16",
            "3MB",
            "2GB",
            "512kB",
            "16 MB",
            "99999999999999999999MB",
        ] {
            assert!(WalSegSize::parse_show(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timeline_and_oid_parse_decimal() {
        assert_eq!("1".parse::<TimelineId>().ok(), Some(TimelineId(1)));
        assert!("0".parse::<TimelineId>().is_err());
        assert!("4294967296".parse::<TimelineId>().is_err());
        assert_eq!("16388".parse::<Oid>().ok(), Some(Oid(16388)));
        assert!("x".parse::<Oid>().is_err());
    }
}
