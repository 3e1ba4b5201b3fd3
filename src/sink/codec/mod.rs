//! Compression of archives written by the client, and decompression of archives the server
//! compressed (for plain format).
//!
//! Crates: flate2 with its zlib-rs backend (pure Rust, zlib-ng speed) for gzip, run on every
//! core by [`pgzip`]; zstd (libzstd, with its own multithreading) for zstd; lz4 (liblz4, which
//! has the high-compression levels 2–12 that pg_basebackup accepts) for LZ4.

pub mod pgzip;
pub mod spec;

use std::io::{self, Read, Write};

pub use spec::{ClientSpec, Compression, Method};

/// A compressing (or pass-through) writer that must be finished to complete its output.
pub trait ArchiveWriter: Write + Send {
    /// Writes the end of the compressed stream and flushes.
    fn finish(self: Box<Self>) -> io::Result<()>;

    /// Writes several buffers in order (one `writev` where the output is a plain file).
    fn write_batch(&mut self, bufs: &[bytes::Bytes]) -> io::Result<()> {
        bufs.iter().try_for_each(|b| self.write_all(b))
    }
}

/// Writes every buffer, in order, with as few `writev` calls as the kernel allows.
pub fn write_all_vectored<W: Write + ?Sized>(out: &mut W, bufs: &[bytes::Bytes]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = out.write_vectored(rest)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

struct Plain<W: Write + Send>(W);

impl<W: Write + Send> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Send> ArchiveWriter for Plain<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }

    fn write_batch(&mut self, bufs: &[bytes::Bytes]) -> io::Result<()> {
        write_all_vectored(&mut self.0, bufs)
    }
}

impl<W: Write + Send> ArchiveWriter for pgzip::ParallelGzWriter<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        Self::finish(*self).map(drop)
    }
}

impl<W: Write + Send> ArchiveWriter for zstd::stream::write::Encoder<'static, W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        (*self).finish()?.flush()
    }
}

impl<W: Write + Send> ArchiveWriter for lz4::Encoder<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let (mut w, result) = (*self).finish();
        result?;
        w.flush()
    }
}

/// Threads to compress with: one per core.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A writer compressing into `out` as `spec` says.
pub fn writer<W: Write + Send + 'static>(
    spec: ClientSpec,
    out: W,
) -> io::Result<Box<dyn ArchiveWriter>> {
    Ok(match spec.method {
        Method::None => Box::new(Plain(out)),
        Method::Gzip => {
            let level = spec.level.filter(|l| *l > 0).map_or(6, |l| l as u32);
            Box::new(pgzip::ParallelGzWriter::new(out, level, cores()))
        }
        Method::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, spec.level.unwrap_or(3))?;
            let workers = spec.workers.map_or(cores() as u32, |w| w.max(0) as u32);
            if workers > 0 {
                enc.multithread(workers)?;
                // Smaller jobs keep fewer megabytes in flight per worker (libzstd sizes them
                // from the window otherwise: 8 MiB at level 3).
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(1 << 20))?;
            }
            if spec.long {
                enc.long_distance_matching(true)?;
            }
            Box::new(enc)
        }
        Method::Lz4 => {
            let level = spec.level.unwrap_or(0).max(0) as u32;
            Box::new(lz4::EncoderBuilder::new().level(level).build(out)?)
        }
    })
}

/// A reader decompressing `input` (an archive the server compressed with `method`).
pub fn reader<'a, R: Read + 'a>(method: Method, input: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match method {
        Method::None => Box::new(input),
        Method::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Method::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        Method::Lz4 => Box::new(lz4::Decoder::new(input)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips() {
        let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 97) as u8).collect();
        for method in [Method::None, Method::Gzip, Method::Lz4, Method::Zstd] {
            for level in [None, Some(1)] {
                let spec = ClientSpec {
                    method,
                    level: level.filter(|_| method != Method::None),
                    ..ClientSpec::NONE
                };
                let (tx, rx) = std::sync::mpsc::channel();
                struct Collect(Vec<u8>, std::sync::mpsc::Sender<Vec<u8>>);
                impl Write for Collect {
                    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                        self.0.extend_from_slice(b);
                        Ok(b.len())
                    }
                    fn flush(&mut self) -> io::Result<()> {
                        let _ = self.1.send(std::mem::take(&mut self.0));
                        Ok(())
                    }
                }
                let mut w = writer(spec, Collect(Vec::new(), tx)).expect("writer");
                w.write_all(&input).expect("write");
                w.finish().expect("finish");
                let compressed: Vec<u8> = rx.try_iter().flatten().collect();
                let mut out = Vec::new();
                reader(method, &compressed[..])
                    .expect("reader")
                    .read_to_end(&mut out)
                    .expect("read");
                assert_eq!(out.len(), input.len(), "{method:?} {level:?}");
                assert_eq!(out, input, "{method:?} {level:?}");
            }
        }
    }
}
