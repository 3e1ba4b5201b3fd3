//! A checked cursor over bytes from the server: every read that could run past the end returns
//! [`ProtocolError::Truncated`] instead of panicking.

use crate::error::ProtocolError;

/// Reads big-endian integers and C strings from a byte slice, naming the structure in errors.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, which holds a `what` (used in error messages).
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    /// Takes exactly `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Truncated(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated string, without its NUL.
    pub(crate) fn cstr(&mut self) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::Truncated(self.what))?;
        let s = self.take(end)?;
        self.take(1)?;
        Ok(s)
    }

    /// A NUL-terminated string decoded as UTF-8 (lossily: server text is shown, not trusted).
    pub(crate) fn string(&mut self) -> Result<String, ProtocolError> {
        Ok(String::from_utf8_lossy(self.cstr()?).into_owned())
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails if anything is left.
    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingData(self.what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads_are_errors_not_panics() {
        let mut r = Reader::new(&[0, 1, 2], "thing");
        assert_eq!(r.i32(), Err(ProtocolError::Truncated("thing")));
        assert_eq!(r.i16().ok(), Some(1));
        assert_eq!(r.u64(), Err(ProtocolError::Truncated("thing")));
        assert_eq!(r.finish(), Err(ProtocolError::TrailingData("thing")));
        assert_eq!(r.u8().ok(), Some(2));
        assert_eq!(r.finish(), Ok(()));
        let mut r = Reader::new(b"abc", "s");
        assert_eq!(r.cstr(), Err(ProtocolError::Truncated("s")));
        let mut r = Reader::new(b"abc\0d", "s");
        assert_eq!(r.cstr().ok(), Some(&b"abc"[..]));
        assert_eq!(r.rest(), b"d");
    }
}
