//! Per-file checksums: the algorithms `--manifest-checksums` and `Checksum-Algorithm` name,
//! computed incrementally and shown in hex as the manifest prints them.

use std::fmt;
use std::str::FromStr;

use sha2::Digest;

use crate::manifest::ManifestError;

/// A per-file checksum algorithm, as `--manifest-checksums` and `Checksum-Algorithm` name it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChecksumAlgorithm {
    /// No checksum.
    None,
    /// CRC-32C (the default).
    Crc32c,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl ChecksumAlgorithm {
    /// Every algorithm, in the order pg_basebackup lists them.
    pub const ALL: [Self; 6] = [
        Self::None,
        Self::Crc32c,
        Self::Sha224,
        Self::Sha256,
        Self::Sha384,
        Self::Sha512,
    ];

    /// The name as the manifest prints it (`CRC32C`, `SHA256`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Crc32c => "CRC32C",
            Self::Sha224 => "SHA224",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChecksumAlgorithm {
    type Err = ManifestError;

    /// Parses a name case-insensitively, as PostgreSQL does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ManifestError::UnknownAlgorithm(s.chars().take(64).collect()))
    }
}

/// A file checksum computed incrementally: [`Checksum::new`], [`Checksum::update`] with the
/// bytes in order, [`Checksum::finish`]. Also counts the bytes fed ([`Checksum::bytes`]).
#[derive(Clone)]
pub struct Checksum {
    state: State,
    bytes: u64,
}

#[derive(Clone)]
enum State {
    None,
    Crc32c(u32),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checksum")
            .field("algorithm", &self.algorithm())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Checksum {
    /// A checksum for `algorithm`: `NONE`, `CRC32C`, `SHA224`, `SHA256`, `SHA384` or `SHA512`,
    /// in any case.
    pub fn new(algorithm: &str) -> Result<Self, ManifestError> {
        Ok(Self::with_algorithm(algorithm.parse()?))
    }

    /// A checksum for an already parsed algorithm.
    pub fn with_algorithm(algorithm: ChecksumAlgorithm) -> Self {
        let state = match algorithm {
            ChecksumAlgorithm::None => State::None,
            ChecksumAlgorithm::Crc32c => State::Crc32c(0),
            ChecksumAlgorithm::Sha224 => State::Sha224(sha2::Sha224::new()),
            ChecksumAlgorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            ChecksumAlgorithm::Sha384 => State::Sha384(sha2::Sha384::new()),
            ChecksumAlgorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
        };
        Self { state, bytes: 0 }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        match self.state {
            State::None => ChecksumAlgorithm::None,
            State::Crc32c(_) => ChecksumAlgorithm::Crc32c,
            State::Sha224(_) => ChecksumAlgorithm::Sha224,
            State::Sha256(_) => ChecksumAlgorithm::Sha256,
            State::Sha384(_) => ChecksumAlgorithm::Sha384,
            State::Sha512(_) => ChecksumAlgorithm::Sha512,
        }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        match &mut self.state {
            State::None => {}
            State::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            State::Sha224(h) => h.update(data),
            State::Sha256(h) => h.update(data),
            State::Sha384(h) => h.update(data),
            State::Sha512(h) => h.update(data),
        }
    }

    /// How many bytes were fed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest in lowercase hex, exactly as the manifest prints it; `None` for NONE.
    ///
    /// CRC-32C is shown as the 4 bytes of the `uint32` in memory order, as the server and
    /// pg_verifybackup do (on x86 and ARM: little-endian, so CRC32C(`"15\n"`) = 0x2247748a is
    /// `8a744722`).
    pub fn finish(self) -> Option<String> {
        match self.state {
            State::None => None,
            State::Crc32c(crc) => Some(hex(&crc.to_ne_bytes())),
            State::Sha224(h) => Some(hex(&h.finalize())),
            State::Sha256(h) => Some(hex(&h.finalize())),
            State::Sha384(h) => Some(hex(&h.finalize())),
            State::Sha512(h) => Some(hex(&h.finalize())),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}
