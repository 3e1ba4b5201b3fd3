//! gzip on every core: the input is cut into 256 KiB blocks, each compressed on a worker thread
//! into a gzip member of its own, and the members are written in order. Concatenated members
//! are one valid gzip file (RFC 1952 §2.2; gzip, GNU tar and PostgreSQL read them).
//!
//! Memory is bounded: at most `2 × workers + 1` blocks are in flight.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::write::GzEncoder;
use flate2::Compression;

const BLOCK: usize = 256 << 10;

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// A `Write` that gzips in parallel into `out`. Call [`Self::finish`] to write the last member.
pub struct ParallelGzWriter<W: Write> {
    out: W,
    block: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    next_seq: u64,
    next_write: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    max_in_flight: u64,
}

impl<W: Write> ParallelGzWriter<W> {
    /// A writer compressing at `level` (0–9) on `workers` threads.
    pub fn new(out: W, level: u32, workers: usize) -> Self {
        let workers = workers.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers);
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let handles = (0..workers)
            .map(|_| {
                let jobs = Arc::clone(&job_rx);
                let done = done_tx.clone();
                std::thread::spawn(move || loop {
                    let job = match jobs.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((seq, data)) = job else { return };
                    let mut enc =
                        GzEncoder::new(Vec::with_capacity(data.len() / 2), Compression::new(level));
                    let member = enc.write_all(&data).and_then(|()| enc.finish());
                    if done.send((seq, member)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Self {
            out,
            block: Vec::with_capacity(BLOCK),
            jobs: Some(job_tx),
            results: done_rx,
            workers: handles,
            next_seq: 0,
            next_write: 0,
            pending: BTreeMap::new(),
            max_in_flight: 2 * workers as u64 + 1,
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        while self.next_seq - self.next_write >= self.max_in_flight {
            self.receive_one()?;
        }
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))?;
        jobs.send((self.next_seq, data))
            .map_err(|_| io::Error::other("gzip worker threads stopped"))?;
        self.next_seq += 1;
        Ok(())
    }

    /// Waits for one finished member and writes out whatever is now in order.
    fn receive_one(&mut self) -> io::Result<()> {
        let (seq, member) = self
            .results
            .recv()
            .map_err(|_| io::Error::other("gzip worker threads stopped"))?;
        self.pending.insert(seq, member?);
        while let Some(member) = self.pending.remove(&self.next_write) {
            self.out.write_all(&member)?;
            self.next_write += 1;
        }
        Ok(())
    }

    /// Compresses what is left, writes every member, stops the workers; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() || self.next_seq == 0 {
            self.submit()?;
        }
        while self.next_write < self.next_seq {
            self.receive_one()?;
        }
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block
            .extend_from_slice(buf.get(..n).unwrap_or_default());
        if self.block.len() == BLOCK {
            self.submit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn members_decompress_to_the_input_in_order() {
        let input: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7919) as u8)
            .collect();
        let mut w = ParallelGzWriter::new(Vec::new(), 6, 3);
        for chunk in input.chunks(33_333) {
            w.write_all(chunk).expect("write");
        }
        let gz = w.finish().expect("finish");
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out, input);
    }

    #[test]
    fn empty_input_is_a_valid_gzip_file() {
        let gz = ParallelGzWriter::new(Vec::new(), 6, 2)
            .finish()
            .expect("finish");
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .expect("gunzip");
        assert!(out.is_empty());
    }
}
