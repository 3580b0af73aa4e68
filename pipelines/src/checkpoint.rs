//! Checkpoints of a Kafka job: consistent cuts agreed by the workers of a process, written to a
//! file before the offsets are committed to the consumer group.
//!
//! The sinks hold a timely capability until what they were given is durable, so the frontier
//! of their (empty) output stream is the *durable frontier* `F`: every window ending before `F`
//! is written by every sink of every worker. Worker 0 announces an epoch at a frontier it has
//! seen; every worker, once it sees that frontier too, computes where each of its partitions
//! resumes ([`operators::checkpoint::Tracker`]) and contributes; the last contributor writes
//! `checkpoint-p<process>.json` (temporary file, fsync, rename) and the workers then commit the
//! epoch's offsets to Kafka, so standard tools show the group's lag. A restarted job reads the
//! file, resumes each partition at its offset and skips what is already in the output.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use operators::checkpoint::{PartitionCheckpoint, Tracker};
use serde::{Deserialize, Serialize};

/// Version of the checkpoint file format.
const VERSION: u32 = 1;

/// The contents of a checkpoint file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub epoch: u64,
    /// Every window ending before this (ns since the epoch) is written by every sink.
    pub frontier: i64,
    /// When it was written (ms since the Unix epoch).
    pub written_ms: i64,
    pub partitions: Vec<PartitionCheckpoint>,
}

impl Checkpoint {
    /// The entry of one partition.
    pub fn partition(&self, source: &str, partition: i32) -> Option<&PartitionCheckpoint> {
        self.partitions.iter().find(|p| p.source == source && p.partition == partition)
    }
}

/// What a worker knows about one partition when the job ends.
#[derive(Clone, Debug)]
pub struct FinalPartition {
    pub source: String,
    pub partition: i32,
    pub next: i64,
    pub max_ts: Option<i64>,
    pub tracker: Tracker,
}

/// A worker's contribution to the checkpoint written when the job ends.
#[derive(Clone, Debug, Default)]
pub struct FinalContribution {
    /// Windows ending before this were closed on this worker when it stopped reading
    /// (`None`: it read nothing).
    pub closed_before: Option<i64>,
    pub partitions: Vec<FinalPartition>,
}

impl FinalContribution {
    /// Where each partition resumes given `frontier`.
    fn checkpoints(&mut self, frontier: i64) -> Vec<PartitionCheckpoint> {
        self.partitions
            .iter_mut()
            .map(|p| p.tracker.checkpoint(&p.source, p.partition, frontier, p.next, p.max_ts))
            .collect()
    }
}

#[derive(Default)]
struct State {
    /// The epoch being gathered: its number and frontier.
    announced: Option<(u64, i64)>,
    contributions: Vec<Option<Vec<PartitionCheckpoint>>>,
    /// The last epoch written, and its partitions.
    written: Option<Checkpoint>,
    last_announce: Option<Instant>,
    finals: Vec<Option<FinalContribution>>,
    error: Option<String>,
}

/// Shared by the workers of one process.
pub struct Coordinator {
    path: PathBuf,
    workers: usize,
    interval: Duration,
    restored: Option<Checkpoint>,
    state: Mutex<State>,
}

impl Coordinator {
    /// A coordinator writing to `dir` for `workers` local workers; `resume` reads the last
    /// checkpoint there, if any.
    pub fn new(
        dir: &Path,
        process: usize,
        workers: usize,
        interval: Duration,
        resume: bool,
    ) -> Result<Coordinator, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create checkpoint directory {}: {e}", dir.display()))?;
        let path = dir.join(format!("checkpoint-p{process}.json"));
        let restored = if resume { read(&path)? } else { None };
        let state = State {
            contributions: vec![None; workers],
            finals: vec![None; workers],
            written: restored.clone(),
            ..State::default()
        };
        Ok(Coordinator { path, workers, interval, restored, state: Mutex::new(state) })
    }

    /// The checkpoint the job resumed from.
    pub fn restored(&self) -> Option<&Checkpoint> {
        self.restored.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Worker 0: announces a new epoch at `frontier` when the last one is written, the interval
    /// has passed and the frontier moved.
    pub fn maybe_announce(&self, frontier: i64, now: Instant) {
        let mut s = self.lock();
        if s.announced.is_some() || s.last_announce.is_some_and(|t| now.duration_since(t) < self.interval) {
            return;
        }
        let (epoch, last) = s.written.as_ref().map_or((0, 0), |c| (c.epoch, c.frontier));
        // Before the first window closes the frontier means nothing yet.
        if frontier <= last.max(1) {
            return;
        }
        s.announced = Some((epoch + 1, frontier));
        s.last_announce = Some(now);
    }

    /// The epoch being gathered.
    pub fn announced(&self) -> Option<(u64, i64)> {
        self.lock().announced
    }

    /// The last epoch written.
    pub fn written_epoch(&self) -> u64 {
        self.lock().written.as_ref().map_or(0, |c| c.epoch)
    }

    /// Adds worker `index`'s partitions to `epoch`; the last contributor writes the file.
    pub fn contribute(&self, index: usize, epoch: u64, partitions: Vec<PartitionCheckpoint>) -> Result<(), String> {
        let mut s = self.lock();
        let Some((announced, frontier)) = s.announced else { return Ok(()) };
        if announced != epoch {
            return Ok(());
        }
        s.contributions[index % self.workers] = Some(partitions);
        // Workers that stopped reading contribute what they knew when they stopped.
        for i in 0..self.workers {
            if s.contributions[i].is_none() {
                if let Some(f) = s.finals[i].as_mut() {
                    s.contributions[i] = Some(f.checkpoints(frontier));
                }
            }
        }
        if s.contributions.iter().any(Option::is_none) {
            return Ok(());
        }
        let partitions = s.contributions.iter_mut().filter_map(Option::take).flatten().collect();
        let checkpoint = Checkpoint { version: VERSION, epoch, frontier, written_ms: now_ms(), partitions };
        s.announced = None;
        match write(&self.path, &checkpoint) {
            Ok(()) => {
                s.written = Some(checkpoint);
                Ok(())
            }
            Err(e) => {
                s.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Worker `index` stopped reading; what it knew is kept for [`Coordinator::write_final`].
    pub fn finish(&self, index: usize, contribution: FinalContribution) {
        self.lock().finals[index % self.workers] = Some(contribution);
    }

    /// Once every worker of this process stopped reading: the frontier [`Coordinator::write_final`]
    /// will write, before which windows are final. `None` while a worker still reads.
    pub fn final_frontier(&self) -> Option<i64> {
        let s = self.lock();
        if s.finals.iter().any(|f| f.is_none()) {
            return None;
        }
        let last = s.written.as_ref().map(|c| c.frontier);
        let closed = s.finals.iter().flatten().filter_map(|f| f.closed_before).min();
        Some(match (last, closed) {
            (Some(l), Some(c)) => l.max(c),
            (Some(l), None) => l,
            (None, Some(c)) => c,
            (None, None) => i64::MIN,
        })
    }

    /// After every sink finished: writes the checkpoint of the job's end and returns it.
    ///
    /// Windows are taken as durable only before the frontier every worker had closed when it
    /// stopped (and no earlier than the last checkpoint): those after it were emitted early
    /// because the job stopped, and are recomputed by the next run.
    pub fn write_final(&self) -> Result<Option<Checkpoint>, String> {
        let mut s = self.lock();
        let last = s.written.as_ref().map(|c| (c.epoch, c.frontier));
        let closed = s.finals.iter().flatten().filter_map(|f| f.closed_before).min();
        let frontier = match (last, closed) {
            (Some((_, l)), Some(c)) => l.max(c),
            (Some((_, l)), None) => l,
            (None, Some(c)) => c,
            (None, None) => return Ok(None),
        };
        let mut partitions: Vec<PartitionCheckpoint> =
            s.finals.iter_mut().flatten().flat_map(|f| f.checkpoints(frontier)).collect();
        // Partitions no worker read this time keep their entry from the last checkpoint.
        if let Some(w) = &s.written {
            for old in &w.partitions {
                if !partitions.iter().any(|p| p.source == old.source && p.partition == old.partition) {
                    partitions.push(old.clone());
                }
            }
        }
        let epoch = last.map_or(0, |(e, _)| e) + 1;
        let checkpoint = Checkpoint { version: VERSION, epoch, frontier, written_ms: now_ms(), partitions };
        write(&self.path, &checkpoint)?;
        s.written = Some(checkpoint.clone());
        Ok(Some(checkpoint))
    }

    /// The partitions of the last epoch written.
    pub fn written(&self) -> Option<Checkpoint> {
        self.lock().written.clone()
    }

    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Reads a checkpoint file; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Checkpoint>, String> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read checkpoint {}: {e}", path.display())),
    };
    let c: Checkpoint =
        serde_json::from_slice(&text).map_err(|e| format!("checkpoint {} is unreadable: {e}", path.display()))?;
    if c.version != VERSION {
        return Err(format!("checkpoint {} has version {}, expected {VERSION}", path.display(), c.version));
    }
    Ok(Some(c))
}

/// Writes atomically: a temporary file, synced, renamed over the old one, directory synced.
fn write(path: &Path, checkpoint: &Checkpoint) -> Result<(), String> {
    let err = |what: &str, e: std::io::Error| format!("cannot {what} checkpoint {}: {e}", path.display());
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(checkpoint).map_err(|e| format!("cannot encode checkpoint: {e}"))?;
    let mut f = File::create(&tmp).map_err(|e| err("create", e))?;
    f.write_all(&text).map_err(|e| err("write", e))?;
    f.sync_all().map_err(|e| err("sync", e))?;
    fs::rename(&tmp, path).map_err(|e| err("rename", e))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err("sync the directory of", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: i64) -> PartitionCheckpoint {
        PartitionCheckpoint {
            source: "t".into(),
            partition: offset as i32,
            offset,
            max_ts: None,
            replay_until: offset,
            late: vec![],
        }
    }

    #[test]
    fn epoch_is_written_when_every_worker_contributed() {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinator::new(dir.path(), 0, 2, Duration::ZERO, true).unwrap();
        let now = Instant::now();
        c.maybe_announce(100, now);
        assert_eq!(c.announced(), Some((1, 100)));
        c.contribute(0, 1, vec![part(1)]).unwrap();
        assert_eq!(c.written_epoch(), 0);
        c.contribute(1, 1, vec![part(2)]).unwrap();
        assert_eq!(c.written_epoch(), 1);
        // The frontier must move before the next epoch.
        c.maybe_announce(100, now);
        assert_eq!(c.announced(), None);
        let back = Coordinator::new(dir.path(), 0, 2, Duration::ZERO, true).unwrap();
        let r = back.restored().unwrap();
        assert_eq!((r.epoch, r.frontier, r.partitions.len()), (1, 100, 2));
    }
}
