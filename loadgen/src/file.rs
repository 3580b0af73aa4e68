//! The fleet into a file: one message per line (Telegraf JSON lines or line protocol), gzip
//! when the path ends in `.gz`, on a synthetic clock as fast as the disk takes it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::stats::ProgressClock;
use crate::{interval_ns, Fleet, FleetConfig, LoadgenError, Message, Stats};

/// Writes `ticks` ticks at `interval` starting at event time `start_ns` (synthetic clock, as fast as
/// possible) to `path`: JSON lines or line protocol, one metric = one message = one line, gzip when
/// the path ends in `.gz`. Messages held back for reordering are written at the end. Calls
/// `progress(&Stats)` about once a second.
pub fn write_file(
    cfg: FleetConfig,
    path: &Path,
    start_ns: i64,
    interval: Duration,
    ticks: u64,
    mut progress: impl FnMut(&Stats),
) -> Result<Stats, LoadgenError> {
    let step = interval_ns(interval)?;
    let io_err = |source| LoadgenError::Io { path: path.to_path_buf(), source };
    let mut sink = Sink::create(path).map_err(io_err)?;

    let mut fleet = Fleet::new(cfg);
    let mut stats = Stats::default();
    let mut clock = ProgressClock::new();
    let mut out = Vec::new();
    for t in 0..ticks {
        out.clear();
        let ts = start_ns.saturating_add((t as i64).saturating_mul(step));
        fleet.tick(ts, &mut out);
        write_lines(&mut sink, &out, &mut stats, &mut clock, &mut progress).map_err(io_err)?;
    }
    out.clear();
    fleet.drain_held(&mut out);
    write_lines(&mut sink, &out, &mut stats, &mut clock, &mut progress).map_err(io_err)?;
    sink.finish().map_err(io_err)?;
    stats.elapsed = clock.elapsed();
    Ok(stats)
}

fn write_lines(
    sink: &mut Sink,
    msgs: &[Message],
    stats: &mut Stats,
    clock: &mut ProgressClock,
    progress: &mut impl FnMut(&Stats),
) -> std::io::Result<()> {
    for msg in msgs {
        sink.write_all(&msg.payload)?;
        sink.write_all(b"\n")?;
        stats.record(msg);
        if clock.due() {
            stats.elapsed = clock.elapsed();
            progress(stats);
        }
    }
    Ok(())
}

/// The output file, compressed or not.
enum Sink {
    Plain(BufWriter<File>),
    Gzip(Box<GzEncoder<BufWriter<File>>>),
}

impl Sink {
    fn create(path: &Path) -> std::io::Result<Sink> {
        let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
        Ok(if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
            Sink::Gzip(Box::new(GzEncoder::new(file, Compression::fast())))
        } else {
            Sink::Plain(file)
        })
    }

    /// Flushes everything and, for gzip, writes the trailer (dropping would hide a failure).
    fn finish(self) -> std::io::Result<()> {
        let mut file = match self {
            Sink::Plain(f) => f,
            Sink::Gzip(gz) => gz.finish()?,
        };
        file.flush()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(f) => f.write(buf),
            Sink::Gzip(g) => g.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(f) => f.write_all(buf),
            Sink::Gzip(g) => g.write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(f) => f.flush(),
            Sink::Gzip(g) => g.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};

    use flate2::read::GzDecoder;
    use operators::decode::{decode, Collected, TimestampUnit};

    use super::*;
    use crate::Format;

    fn read_lines(path: &Path) -> Vec<String> {
        let file = File::open(path).unwrap();
        let reader: Box<dyn Read> =
            if path.extension().is_some_and(|e| e == "gz") { Box::new(GzDecoder::new(file)) } else { Box::new(file) };
        BufReader::new(reader).lines().map(|l| l.unwrap()).collect()
    }

    #[test]
    fn round_trip_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        for format in [Format::Json, Format::Influx] {
            for name in ["metrics.txt", "metrics.txt.gz"] {
                let path = dir.path().join(name);
                let cfg = FleetConfig {
                    agents: 12,
                    seed: 5,
                    format,
                    skew_ns: 1_000_000_000,
                    reorder: 0.1,
                    churn: 0.0,
                    first_vm: 0,
                };
                let mut calls = 0;
                let stats =
                    write_file(cfg.clone(), &path, 1_700_000_000_000_000_000, Duration::from_secs(2), 10, |_| {
                        calls += 1
                    })
                    .unwrap();
                assert_eq!(stats.messages, 12 * 6 * 10);
                assert_eq!(stats.by_measurement.len(), 6);
                assert!(stats.by_measurement.values().all(|&n| n == 12 * 10));
                let lines = read_lines(&path);
                assert_eq!(lines.len() as u64, stats.messages, "{name}");
                assert_eq!(lines.iter().map(|l| l.len() as u64).sum::<u64>(), stats.bytes);
                let mut c = Collected::default();
                for line in &lines {
                    decode(format, line.as_bytes(), TimestampUnit::Auto, 0, &mut c);
                }
                assert!(c.rejects.is_empty(), "{:?}", c.rejects.first());
                assert_eq!(c.metrics.len(), lines.len());

                // The file holds exactly what the fleet generates.
                let mut fleet = Fleet::new(cfg);
                let mut want = Vec::new();
                for t in 0..10 {
                    fleet.tick(1_700_000_000_000_000_000 + t * 2_000_000_000, &mut want);
                }
                fleet.drain_held(&mut want);
                let want: Vec<String> = want.iter().map(|m| String::from_utf8(m.payload.clone()).unwrap()).collect();
                assert_eq!(lines, want);
            }
        }
        let gz = std::fs::read(dir.path().join("metrics.txt.gz")).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
    }

    #[test]
    fn errors_name_the_path() {
        let err = write_file(
            FleetConfig::default(),
            Path::new("/nonexistent-dir/x.json"),
            0,
            Duration::from_secs(2),
            1,
            |_| {},
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent-dir/x.json"), "{text}");
        let err = write_file(FleetConfig::default(), Path::new("x"), 0, Duration::ZERO, 1, |_| {}).unwrap_err();
        assert!(err.to_string().contains("interval"), "{err}");
    }
}
