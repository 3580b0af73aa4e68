//! The file source: JSON lines or line protocol, plain or gzip, for replay and backfill.
//!
//! Every worker opens the file and takes the blocks of [`BLOCK_LINES`] lines whose number
//! modulo the worker count is its index, so decoding is spread over all workers while they
//! stay close together in event time (and few windows are open at once). Each worker's share
//! is one watermark partition. A reject's position is its line number (1-based).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use flate2::read::MultiGzDecoder;
use operators::ingest::Ingest;
use operators::model::Origin;
use operators::time::Watermarks;

use super::{wall_ns, ReadStatus, Reader};

/// Lines per block dealt to one worker.
pub const BLOCK_LINES: u64 = 1024;

pub struct FileReader {
    input: Box<dyn BufRead>,
    line: Vec<u8>,
    line_no: u64,
    worker: u64,
    peers: u64,
    slot: Option<usize>,
    origin: Origin,
    done: bool,
    /// A stop ends the reading at once; a drain reads on to the end of the file.
    control: Option<Arc<crate::control::JobControl>>,
}

impl FileReader {
    pub fn open(path: &Path, worker: usize, peers: usize) -> std::io::Result<FileReader> {
        let file = File::open(path)?;
        let input: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(file)))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, file))
        };
        let source: Arc<str> = path.display().to_string().into();
        Ok(FileReader {
            input,
            line: Vec::with_capacity(4096),
            line_no: 0,
            worker: worker as u64,
            peers: peers.max(1) as u64,
            slot: None,
            origin: Origin { source, partition: 0, position: 0 },
            done: false,
            control: None,
        })
    }

    /// Stops reading when `control` asks the job to stop.
    pub fn with_control(mut self, control: Arc<crate::control::JobControl>) -> FileReader {
        self.control = Some(control);
        self
    }
}

impl Reader for FileReader {
    fn read(&mut self, ingest: &mut Ingest, watermarks: &mut Watermarks, budget: usize, now: Instant) -> ReadStatus {
        let slot = *self.slot.get_or_insert_with(|| watermarks.add_partition(now));
        if self.done || self.control.as_ref().is_some_and(|c| c.stopping()) {
            return ReadStatus::Done;
        }
        let arrival = wall_ns();
        let mut taken = 0;
        while taken < budget {
            self.line.clear();
            match self.input.read_until(b'\n', &mut self.line) {
                Ok(0) => {
                    self.done = true;
                    watermarks.finish(slot);
                    return ReadStatus::Done;
                }
                Ok(_) => {}
                Err(e) => {
                    // A truncated gzip stream or an I/O error ends this file; what was read stays,
                    // and the error is kept as a reject so it is seen.
                    self.origin.position = self.line_no as i64 + 1;
                    let reason = format!("read error, rest of file skipped: {e}");
                    ingest.reject(&self.origin, Some(slot), None, reason, b"", arrival);
                    self.done = true;
                    watermarks.finish(slot);
                    return ReadStatus::Done;
                }
            }
            self.line_no += 1;
            if ((self.line_no - 1) / BLOCK_LINES) % self.peers != self.worker {
                continue;
            }
            let mut line = self.line.as_slice();
            while let [rest @ .., b'\n' | b'\r'] = line {
                line = rest;
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            taken += 1;
            self.origin.position = self.line_no as i64;
            ingest.message(line, &self.origin, slot, watermarks, arrival, now);
        }
        ReadStatus::Busy
    }
}
