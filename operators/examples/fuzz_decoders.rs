//! A fuzz harness for the decoders, for stable Rust (cargo-fuzz needs nightly).
//!
//! Inputs are built by structure-aware mutation: realistic Telegraf JSON and line-protocol
//! messages whose parts are now and then swapped for hostile ones (wrong types, NaN/Inf, huge
//! or negative numbers, invalid UTF-8, lone surrogates), then mutated at the byte level
//! (flips, token insertions, deep nesting, long strings, truncation, splicing, giant messages).
//! Every input must keep the promise of `operators::decode::check_contract`; inputs that break
//! it are saved to `--save` and make the run exit with status 1.
//!
//! ```text
//! cargo run -p dragonflow-operators --release --example fuzz_decoders -- \
//!     [--decoder json|influx|all] [--inputs N] [--seed S] [--save DIR] [--slow-ms MS] [--replay FILE|DIR]
//! ```
//!
//! `--inputs` counts per decoder (default 1 000 000); the same seed gives the same inputs.
//! Inputs slower than `--slow-ms` (default 250) are saved as `slow-…` but do not fail the run.
//! `--replay` runs the given files (the `--decoder` format, default both) instead of fuzzing
//! and prints what they produced, with the first reject reasons.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use operators::decode::{check_contract, decode, Broken, Collected, Format, TimestampUnit, MAX_MESSAGE_BYTES};

/// Arrival time handed to the decoders (line protocol uses it for lines without a timestamp).
const ARRIVAL_NS: i64 = 1_700_000_000_000_000_000;
const PROGRESS_EVERY: u64 = 100_000;
/// At most this many findings per decoder are written to disk (all are counted).
const MAX_SAVED: usize = 200;
/// At most this many findings per decoder are described on stdout.
const MAX_PRINTED: u64 = 20;

struct Args {
    formats: Vec<Format>,
    inputs: u64,
    seed: u64,
    save: PathBuf,
    replay: Option<PathBuf>,
    /// Inputs taking longer than this are saved as `slow-…` (not a violation: timing on a
    /// shared machine is noisy, but a super-linear parser shows up here).
    slow: Duration,
}

const USAGE: &str =
    "usage: fuzz_decoders [--decoder json|influx|all] [--inputs N] [--seed S] [--save DIR] [--slow-ms MS] [--replay PATH]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        formats: vec![Format::Json, Format::Influx],
        inputs: 1_000_000,
        seed: 1,
        save: Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/findings"),
        replay: None,
        slow: Duration::from_millis(250),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--decoder" => {
                args.formats = match value.as_str() {
                    "json" => vec![Format::Json],
                    "influx" => vec![Format::Influx],
                    "all" => vec![Format::Json, Format::Influx],
                    other => return Err(format!("--decoder: expected json, influx or all, got '{other}'")),
                }
            }
            "--inputs" => {
                args.inputs = value.replace('_', "").parse().map_err(|e| format!("--inputs '{value}': {e}"))?
            }
            "--seed" => args.seed = value.parse().map_err(|e| format!("--seed '{value}': {e}"))?,
            "--save" => args.save = value.into(),
            "--replay" => args.replay = Some(value.into()),
            "--slow-ms" => {
                args.slow = Duration::from_millis(value.parse().map_err(|e| format!("--slow-ms '{value}': {e}"))?)
            }
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    Ok(args)
}

thread_local! {
    /// Where the last panic happened, recorded by the quiet panic hook.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Panics are caught and counted; the default hook would print each one.
    std::panic::set_hook(Box::new(|info| {
        PANIC_AT.with(|p| *p.borrow_mut() = info.location().map(|l| l.to_string()));
    }));
    let broken = match &args.replay {
        Some(path) => replay(&args.formats, path),
        None => args.formats.iter().map(|&f| fuzz(f, &args)).sum(),
    };
    if broken > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn name(format: Format) -> &'static str {
    match format {
        Format::Json => "json",
        Format::Influx => "influx",
    }
}

fn describe(e: &Broken) -> String {
    match e {
        Broken::Panic(_) => format!("{e} at {}", PANIC_AT.with(|p| p.borrow().clone()).unwrap_or_default()),
        Broken::Violation(_) => e.to_string(),
    }
}

/// Checks each file under `path` (or `path` itself); returns how many broke the promise.
fn replay(formats: &[Format], path: &Path) -> u64 {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => vec![path.to_path_buf()],
    };
    files.sort();
    let mut broken = 0;
    for file in files {
        let payload = match std::fs::read(&file) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                broken += 1;
                continue;
            }
        };
        for &format in formats {
            let start = Instant::now();
            let result = check_contract(format, &payload, TimestampUnit::Auto, ARRIVAL_NS);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let file = file.display();
            match result {
                Ok(t) => {
                    println!(
                        "{file} [{}]: {} metric(s), {} reject(s) in {ms:.1} ms",
                        name(format),
                        t.metrics,
                        t.rejects
                    );
                    print_rejects(format, &payload);
                }
                Err(e) => {
                    broken += 1;
                    println!("{file} [{}]: {} in {ms:.1} ms", name(format), describe(&e));
                }
            }
        }
    }
    broken
}

/// Prints the first few reject reasons for `payload`, cut short.
fn print_rejects(format: Format, payload: &[u8]) {
    let mut c = Collected::default();
    decode(format, payload, TimestampUnit::Auto, ARRIVAL_NS, &mut c);
    for (reason, _) in c.rejects.iter().take(3) {
        println!("    reject: {reason:.160}");
    }
}

#[derive(Default)]
struct Stats {
    inputs: u64,
    /// Inputs that produced at least one metric.
    decoded_inputs: u64,
    metrics: u64,
    rejects: u64,
    violations: u64,
    panics: u64,
    bytes: u64,
    slowest: (Duration, usize),
    /// Inputs slower than `--slow-ms`.
    slow: u64,
    /// Findings by kind (their description with names and numbers blanked), with a count and
    /// the hash of the first input of that kind.
    kinds: BTreeMap<String, (u64, u64)>,
}

impl Stats {
    fn line(&self, format: Format, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-9);
        format!(
            "{:<6} {:>10} inputs {:>9.0} inputs/s {:>7.1} MB/s | inputs decoded {:>9} metrics {:>10} rejects {:>10} | violations {} panics {} | slowest {:.1} ms ({} B), {} over the slow limit",
            name(format),
            self.inputs,
            self.inputs as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            self.decoded_inputs,
            self.metrics,
            self.rejects,
            self.violations,
            self.panics,
            self.slowest.0.as_secs_f64() * 1e3,
            self.slowest.1,
            self.slow,
        )
    }
}

/// Fuzzes one decoder; returns how many inputs broke the promise.
fn fuzz(format: Format, args: &Args) -> u64 {
    let mut rng = Rng::new(args.seed ^ (format as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut corpus = Corpus::default();
    let mut saved: HashSet<u64> = HashSet::new();
    let mut stats = Stats::default();
    let start = Instant::now();
    println!("{}: {} inputs, seed {}", name(format), args.inputs, args.seed);
    while stats.inputs < args.inputs {
        let input = next_input(format, &mut rng, &corpus);
        // Mostly the default unit; a fixed unit makes most timestamps of the other units invalid.
        let unit = if rng.one_in(5) {
            pick(&mut rng, &[TimestampUnit::S, TimestampUnit::Ms, TimestampUnit::Us, TimestampUnit::Ns])
        } else {
            TimestampUnit::Auto
        };
        let t = Instant::now();
        let result = check_contract(format, &input, unit, ARRIVAL_NS);
        let took = t.elapsed();
        if took > stats.slowest.0 {
            stats.slowest = (took, input.len());
        }
        if took > args.slow {
            stats.slow += 1;
            let hash = hash(&input);
            println!("  slow input {hash:016x} ({} B): {:.1} ms", input.len(), took.as_secs_f64() * 1e3);
            if stats.slow <= MAX_SAVED as u64 {
                save(&args.save, &format!("slow-{}", name(format)), hash, &input);
            }
        }
        stats.inputs += 1;
        stats.bytes += input.len() as u64;
        match result {
            Ok(tally) => {
                stats.metrics += tally.metrics;
                stats.rejects += tally.rejects;
                stats.decoded_inputs += u64::from(tally.metrics > 0);
            }
            Err(e) => {
                match e {
                    Broken::Panic(_) => stats.panics += 1,
                    Broken::Violation(_) => stats.violations += 1,
                }
                let hash = hash(&input);
                stats.kinds.entry(kind(&describe(&e))).or_insert((0, hash)).0 += 1;
                if stats.violations + stats.panics <= MAX_PRINTED {
                    println!("  finding {:016x} ({} B, {unit:?}): {}", hash, input.len(), describe(&e));
                }
                if saved.len() < MAX_SAVED && saved.insert(hash) {
                    save(&args.save, name(format), hash, &input);
                }
            }
        }
        corpus.keep(input);
        if stats.inputs % PROGRESS_EVERY == 0 {
            println!("{}", stats.line(format, start.elapsed()));
        }
    }
    println!("{} | done in {:.1} s", stats.line(format, start.elapsed()), start.elapsed().as_secs_f64());
    for (kind, (count, first)) in &stats.kinds {
        println!("  {count:>9} x {kind}  (first: {}-{first:016x}.bin)", name(format));
    }
    stats.violations + stats.panics
}

/// A finding's description with quoted names and numbers blanked, so findings group by kind.
fn kind(description: &str) -> String {
    let mut out = String::with_capacity(description.len());
    let mut quoted = false;
    for c in description.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push_str(if quoted { "'…" } else { "'" });
            }
            _ if quoted => {}
            '0'..='9' if out.ends_with('N') => {}
            '0'..='9' => out.push('N'),
            c => out.push(c),
        }
    }
    out
}

fn hash(input: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    input.hash(&mut h);
    h.finish()
}

fn save(dir: &Path, prefix: &str, hash: u64, input: &[u8]) {
    let path = dir.join(format!("{prefix}-{hash:016x}.bin"));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("cannot save {}: {e}", path.display());
    }
}

/// SplitMix64 (small, fast and reproducible from a seed), with a mood: while `calm`, the
/// generators build valid messages only.
struct Rng {
    state: u64,
    calm: bool,
}

impl Rng {
    fn new(seed: u64) -> Self {
        Rng { state: seed, calm: false }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    /// True with probability `1 / n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// Whether to swap a part for a hostile one: never while calm, else with probability `1 / n`.
    fn hostile(&mut self, n: usize) -> bool {
        !self.calm && self.one_in(n)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.below(items.len())]
}

/// Recent inputs, for splicing.
#[derive(Default)]
struct Corpus {
    items: Vec<Vec<u8>>,
    next: usize,
}

impl Corpus {
    const SIZE: usize = 256;

    fn keep(&mut self, input: Vec<u8>) {
        if input.len() > 64 << 10 {
            return;
        }
        if self.items.len() < Self::SIZE {
            self.items.push(input);
        } else {
            self.items[self.next] = input;
            self.next = (self.next + 1) % Self::SIZE;
        }
    }

    fn any(&self, rng: &mut Rng) -> Option<&[u8]> {
        (!self.items.is_empty()).then(|| &*self.items[rng.below(self.items.len())])
    }
}

fn next_input(format: Format, rng: &mut Rng, corpus: &Corpus) -> Vec<u8> {
    rng.calm = rng.one_in(2);
    let mut input = match format {
        Format::Json => json_message(rng),
        Format::Influx => influx_message(rng),
    };
    // A third stays as generated, so valid messages keep exercising the decoding path.
    let rounds = pick(rng, &[0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 5, 8]);
    for _ in 0..rounds {
        mutate(format, rng, &mut input, corpus);
    }
    if rng.one_in(20_000) {
        grow_past_limit(rng, &mut input);
    }
    input
}

// ---------------------------------------------------------------------------------------------
// Seed generation: realistic messages, with parts swapped for hostile ones now and then.

const MEASUREMENTS: &[&str] = &["cpu", "mem", "disk", "diskio", "net", "system", "processes", "swap", "kernel"];
const CSP: &[&str] = &["aws", "gcp", "azure", "alibaba", "tencent", "ibm", "openstack", "ncp"];
const OS: &[&str] = &["ubuntu", "centos", "windows", "rhel"];
const FIELD_NAMES: &[&str] = &[
    "usage_idle",
    "usage_user",
    "usage_system",
    "used_percent",
    "free",
    "total",
    "bytes_recv",
    "packets_sent",
    "uptime",
    "n_cpus",
    "load1",
    "io_time",
    "status",
];

/// JSON values of the wrong type or out of range, for any slot.
const JSON_HOSTILE: &[&[u8]] = &[
    b"NaN",
    b"-NaN",
    b"Infinity",
    b"-Infinity",
    b"inf",
    b"-1e309",
    b"1e400",
    b"1e-400",
    b"2.5e-324",
    b"1.7976931348623157e308",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"9223372036854775807",
    b"99999999999999999999999999",
    b"-1",
    b"-1700000000",
    b"-0",
    b"-0.0",
    b"0",
    b"1e19",
    b"9.3e18",
    b"7258118400",
    b"7258118400000000001",
    b"253402300800",
    b"32503680000000",
    b"1.5e17",
    b"99999999999",
    b"1700000000.9999999999",
    b"null",
    b"true",
    b"false",
    b"\"\"",
    b"\"1700000000\"",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"\\udfff\\ud800\"",
    b"\"\\ud83d\\ude00\"",
    b"\"\\uZZZZ\"",
    b"\"\\x41\"",
    b"\"\xff\xfe\"",
    b"\"\xc3\x28\"",
    b"\"\xed\xa0\x80\"",
    b"\"\xf4\x90\x80\x80\"",
    b"\"\xc0\xaf\"",
    b"\"\x00\x01\x1f\"",
    b"[]",
    b"[1,2]",
    b"[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]",
    b"{}",
    b"{\"a\":{\"b\":{\"c\":1}}}",
    b"{\"metrics\":[]}",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"0x10",
];

/// Tokens inserted anywhere in a JSON message.
const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\u0000",
    b"name",
    b"\"name\":",
    b"\"fields\":",
    b"\"tags\":",
    b"\"timestamp\":",
    b"\"metrics\":",
    b"\"metrics\":[]",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\x00",
    b" ",
    b"\n",
    b"\r\n",
    b"\t",
    b"\xef\xbb\xbf",
];

/// Line-protocol field values that are out of range, malformed or of the wrong type.
const LP_HOSTILE_VALUES: &[&[u8]] = &[
    b"NaN",
    b"nan",
    b"inf",
    b"-inf",
    b"+Inf",
    b"Infinity",
    b"1e400",
    b"-1e309",
    b"1e-400",
    b"9223372036854775807i",
    b"9223372036854775808i",
    b"-9223372036854775808i",
    b"-9223372036854775809i",
    b"18446744073709551615u",
    b"18446744073709551616u",
    b"-1u",
    b"1.5i",
    b"1x",
    b"0x10",
    b"\"unterminated",
    b"\"a\\\"",
    b"\"\xff\"",
    b"\"\"",
    b"",
    b"=",
    b"tru",
    b"yes",
    b"\"multi\nline\"",
];

/// Line-protocol timestamps that are negative, beyond the range or malformed.
const LP_HOSTILE_TIMESTAMPS: &[&[u8]] = &[
    b"-1",
    b"-9223372036854775808",
    b"9223372036854775807",
    b"9223372036854775808",
    b"99999999999999999999",
    b"7258118400000000001",
    b"1e18",
    b"1.5",
    b"0",
    b"-0",
    b"1700000000i",
    b"now",
];

/// Tokens inserted anywhere in a line-protocol message.
const LP_TOKENS: &[&[u8]] = &[
    b" ",
    b",",
    b"=",
    b"\"",
    b"\\",
    b"\\ ",
    b"\\,",
    b"\\=",
    b"\\\"",
    b"\n",
    b"\r\n",
    b"\r",
    b"#",
    b"# comment\n",
    b"i",
    b"u",
    b"t",
    b"F",
    b"\t",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"NaN",
    b"1e400",
    b"\xe2\x80\xa8",
    b"\xc2\x85",
    b"\xef\xbb\xbf",
];

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out.push(b'"');
}

fn realistic_str(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => format!("ns-{:02}", rng.below(20)),
        1 => format!("mcis-{:03}", rng.below(100)),
        2 => format!("vm-{:04}", rng.below(10_000)),
        3 => pick(rng, CSP).into(),
        4 => pick(rng, OS).into(),
        5 => "vm \"quoted\" \\ back".into(),
        6 => "été/naïve/日本".into(),
        7 => "tab\there\nnewline".into(),
        8 => "a,b=c d".into(),
        9 => "/data/disk 1".into(),
        10 => "".into(),
        _ => "cpu-total".into(),
    }
}

fn json_number(rng: &mut Rng) -> Vec<u8> {
    match rng.below(7) {
        0 => format!("{:.3}", rng.below(100_000) as f64 / 1000.0),
        1 => format!("{}", rng.range(-1000, 1_000_000)),
        2 => format!("{}", rng.next()),
        3 => format!("{:e}", rng.below(1_000_000) as f64 * 1e3),
        4 => format!("-{}.{}", rng.below(100), rng.below(1000)),
        5 => "0".into(),
        _ => format!("{}", rng.next() as i64),
    }
    .into_bytes()
}

fn json_field_value(rng: &mut Rng) -> Vec<u8> {
    if rng.hostile(15) {
        return pick(rng, JSON_HOSTILE).to_vec();
    }
    match rng.below(8) {
        0..=3 => json_number(rng),
        4 => pick(rng, &[&b"true"[..], b"false"]).to_vec(),
        5 => {
            let mut v = Vec::new();
            push_json_str(&mut v, &realistic_str(rng));
            v
        }
        _ => format!("{}", rng.below(1 << 20)).into_bytes(),
    }
}

fn json_timestamp(rng: &mut Rng) -> Vec<u8> {
    let s = rng.range(1_600_000_000, 1_800_000_000);
    match rng.below(6) {
        0 | 1 => format!("{s}"),
        2 => format!("{}", s * 1000 + rng.range(0, 1000)),
        3 => format!("{}", s * 1_000_000 + rng.range(0, 1_000_000)),
        4 => format!("{}", s * 1_000_000_000 + rng.range(0, 1_000_000_000)),
        _ => format!("{s}.{}", rng.below(1_000_000)),
    }
    .into_bytes()
}

fn json_object(rng: &mut Rng, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
    let pretty = rng.one_in(10);
    let mut out = vec![b'{'];
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if pretty {
            out.extend_from_slice(b"\n  ");
        }
        out.extend_from_slice(&k);
        out.extend_from_slice(if pretty { b": " } else { b":" });
        out.extend_from_slice(&v);
    }
    if pretty {
        out.push(b'\n');
    }
    out.push(b'}');
    out
}

fn json_key(s: &str) -> Vec<u8> {
    let mut k = Vec::new();
    push_json_str(&mut k, s);
    k
}

fn json_tags(rng: &mut Rng) -> Vec<u8> {
    if rng.hostile(12) {
        return pick(rng, JSON_HOSTILE).to_vec();
    }
    let mut tags = Vec::new();
    for key in ["cspType", "host", "mcisId", "nsId", "osType", "vmId", "cpu", "path"] {
        if rng.below(4) > 0 {
            let v = match rng.below(20) {
                0 => json_number(rng),
                1 => b"true".to_vec(),
                2 if rng.hostile(1) => pick(rng, JSON_HOSTILE).to_vec(),
                _ => {
                    let mut v = Vec::new();
                    push_json_str(&mut v, &realistic_str(rng));
                    v
                }
            };
            tags.push((json_key(key), v));
        }
    }
    json_object(rng, tags)
}

fn json_fields(rng: &mut Rng) -> Vec<u8> {
    if rng.hostile(12) {
        return pick(rng, JSON_HOSTILE).to_vec();
    }
    let n = if rng.hostile(10) { 0 } else { pick(rng, &[1, 1, 2, 3, 4, 6, 8, 12]) };
    let fields = (0..n).map(|_| (json_key(pick(rng, FIELD_NAMES)), json_field_value(rng))).collect();
    json_object(rng, fields)
}

fn json_metric(rng: &mut Rng) -> Vec<u8> {
    let name = if rng.hostile(12) {
        pick(rng, JSON_HOSTILE).to_vec()
    } else {
        json_key(if rng.one_in(20) { "cpu \"x\" \\ é" } else { pick(rng, MEASUREMENTS) })
    };
    let timestamp = if rng.hostile(8) { pick(rng, JSON_HOSTILE).to_vec() } else { json_timestamp(rng) };
    let mut entries = vec![
        (json_key("fields"), json_fields(rng)),
        (json_key("name"), name),
        (json_key("tags"), json_tags(rng)),
        (json_key("timestamp"), timestamp),
    ];
    // Telegraf writes the keys sorted; others may not, and may drop or repeat one.
    if rng.one_in(4) {
        for i in (1..entries.len()).rev() {
            entries.swap(i, rng.below(i + 1));
        }
    }
    if rng.hostile(15) {
        entries.remove(rng.below(entries.len()));
    }
    if rng.hostile(30) {
        let i = rng.below(entries.len());
        entries.push(entries[i].clone());
    }
    if rng.hostile(20) {
        entries
            .push((json_key(pick(rng, &["extra", "metrics", "\\u006eame", "tags"])), pick(rng, JSON_HOSTILE).to_vec()));
    }
    json_object(rng, entries)
}

fn json_message(rng: &mut Rng) -> Vec<u8> {
    // The last choice is a whole hostile message, which a calm generator does not make.
    let choice = rng.below(if rng.calm { 19 } else { 20 });
    match choice {
        0..=10 => json_metric(rng),
        11..=18 => {
            let mut out = b"{\"metrics\":[".to_vec();
            let n = if rng.hostile(8) { 0 } else { pick(rng, &[1, 2, 3, 5, 8, 20, 100]) };
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&json_metric(rng));
            }
            out.extend_from_slice(b"]}");
            out
        }
        _ => {
            let whole: &[&[u8]] = &[
                b"",
                b" \n\t ",
                b"[]",
                b"{}",
                b"null",
                b"\"cpu\"",
                b"1700000000",
                b"{\"metrics\":[]}",
                b"{\"metrics\":{}}",
                b"{\"metrics\":null}",
                b"{\"metrics\":[[]]}",
                b"{\"metrics\":[{\"metrics\":[]}]}",
                b"[\"cpu\",{},{\"v\":1},1700000000,null]",
                b"[null,null,null,null,[]]",
                b"\xef\xbb\xbf{\"name\":\"cpu\",\"fields\":{\"v\":1},\"timestamp\":1700000000}",
                b"{\"name\":\"cpu\",\"fields\":{\"v\":1},\"timestamp\":1700000000}{\"name\":\"cpu\"}",
                b"{\"name\":\"cpu\",\"fields\":{\"v\":1},\"timestamp\":1700000000}\n{\"name\":\"mem\",\"fields\":{\"v\":1},\"timestamp\":1700000000}",
            ];
            pick(rng, whole).to_vec()
        }
    }
}

fn lp_escape(out: &mut Vec<u8>, s: &str, specials: &[char]) {
    for c in s.chars() {
        if specials.contains(&c) {
            out.push(b'\\');
        }
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
}

fn lp_field_value(rng: &mut Rng) -> Vec<u8> {
    if rng.hostile(15) {
        return pick(rng, LP_HOSTILE_VALUES).to_vec();
    }
    match rng.below(9) {
        0..=2 => format!("{:.3}", rng.below(100_000) as f64 / 1000.0).into_bytes(),
        3 => format!("{:e}", rng.range(-1_000_000, 1_000_000) as f64 * 1e-3).into_bytes(),
        4 => format!("{}i", rng.next() as i64).into_bytes(),
        5 => format!("{}u", rng.next()).into_bytes(),
        6 => pick(rng, &["t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"]).as_bytes().to_vec(),
        7 => {
            let mut v = vec![b'"'];
            lp_escape(&mut v, &realistic_str(rng).replace('\n', " "), &['"', '\\']);
            v.push(b'"');
            v
        }
        _ => format!("{}", rng.range(-100, 100_000)).into_bytes(),
    }
}

fn influx_line(rng: &mut Rng) -> Vec<u8> {
    let mut line = Vec::new();
    match rng.below(20) {
        0 => line.extend_from_slice(b"cpu\\ load\\,x"),
        1 if rng.hostile(3) => {
            line.extend_from_slice(pick(rng, &[&b""[..], b"#x", b"\"q\"", b"\xff", b"cpu\xf0\x9f\x93\x88", b"\\"]))
        }
        _ => line.extend_from_slice(pick(rng, MEASUREMENTS).as_bytes()),
    }
    for key in ["cspType", "host", "mcisId", "nsId", "osType", "vmId", "cpu", "path"] {
        if rng.below(3) == 0 {
            continue;
        }
        line.push(b',');
        if rng.hostile(40) {
            line.extend_from_slice(pick(rng, &[&b"=v"[..], b"k=", b"k", b"k=v=w", b"k\\", b"\xff=v"]));
            continue;
        }
        line.extend_from_slice(key.as_bytes());
        line.push(b'=');
        let v = realistic_str(rng).replace(['\n', '\t'], "_");
        lp_escape(&mut line, if v.is_empty() { "x" } else { &v }, &[',', '=', ' ']);
    }
    line.push(b' ');
    let n = if rng.hostile(10) { 0 } else { pick(rng, &[1, 1, 1, 2, 3, 5, 8]) };
    for i in 0..n {
        if i > 0 {
            line.push(b',');
        }
        lp_escape(&mut line, pick(rng, FIELD_NAMES), &[',', '=', ' ']);
        line.push(b'=');
        line.extend_from_slice(&lp_field_value(rng));
    }
    match rng.below(10) {
        0 | 1 => {}
        2 if rng.hostile(1) => {
            line.push(b' ');
            line.extend_from_slice(pick(rng, LP_HOSTILE_TIMESTAMPS));
        }
        3 => line.extend_from_slice(format!(" {}", rng.range(1_600_000_000, 1_800_000_000)).as_bytes()),
        _ => line.extend_from_slice(format!(" {}", rng.range(1_600_000_000, 1_800_000_000) * 1_000_000_000).as_bytes()),
    }
    line
}

fn influx_message(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let n = if rng.hostile(20) { 0 } else { pick(rng, &[1, 1, 1, 2, 3, 5, 10, 50]) };
    for i in 0..n {
        if i > 0 {
            out.extend_from_slice(if rng.one_in(5) { b"\r\n" } else { b"\n" });
        }
        match rng.below(25) {
            0 => out.extend_from_slice(b"# a comment line"),
            1 => out.extend_from_slice(pick(rng, &[&b""[..], b"   ", b"\t", b"\r"])),
            _ => out.extend_from_slice(&influx_line(rng)),
        }
    }
    if rng.one_in(3) {
        out.push(b'\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Mutation.

/// A position to mutate at: anywhere, or (half the time) just after a structural byte, where
/// a token changes the meaning rather than only the spelling.
fn position(rng: &mut Rng, input: &[u8]) -> usize {
    if input.is_empty() {
        return 0;
    }
    let at = rng.below(input.len() + 1);
    if rng.one_in(2) {
        let structural = |b: &u8| matches!(b, b':' | b',' | b'=' | b' ' | b'[' | b'{' | b'"' | b'\n');
        if let Some(i) = input[at..].iter().position(structural) {
            return at + i + 1;
        }
    }
    at
}

/// The spans of digit runs (with a leading minus sign), at most 64 of them.
fn numbers(input: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < input.len() && spans.len() < 64 {
        if input[i].is_ascii_digit() {
            let start = if i > 0 && input[i - 1] == b'-' { i - 1 } else { i };
            let mut end = i;
            while end < input.len() && (input[end].is_ascii_digit() || input[end] == b'.') {
                end += 1;
            }
            spans.push((start, end));
            i = end;
        } else {
            i += 1;
        }
    }
    spans
}

fn mutate(format: Format, rng: &mut Rng, input: &mut Vec<u8>, corpus: &Corpus) {
    let (tokens, hostile) = match format {
        Format::Json => (JSON_TOKENS, JSON_HOSTILE),
        Format::Influx => (LP_TOKENS, LP_HOSTILE_VALUES),
    };
    match rng.below(20) {
        // Bit flip.
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        // Random byte.
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = rng.next() as u8;
        }
        // Token or hostile value.
        2 | 3 => {
            let at = position(rng, input);
            input.splice(at..at, pick(rng, tokens).iter().copied());
        }
        4 | 5 => {
            let at = position(rng, input);
            input.splice(at..at, pick(rng, hostile).iter().copied());
        }
        // A number replaced by a hostile one, or by a huge, negative or far-future one.
        6 | 7 => {
            let spans = numbers(input);
            if !spans.is_empty() {
                let (a, b) = spans[rng.below(spans.len())];
                let with: Vec<u8> = match rng.below(4) {
                    0 => pick(rng, hostile).to_vec(),
                    1 => format!("-{}", rng.next() >> rng.below(64)).into_bytes(),
                    2 => format!("{}", u64::MAX - rng.below(1000) as u64).into_bytes(),
                    _ => format!("{}{}", rng.next(), "9".repeat(rng.below(400))).into_bytes(),
                };
                input.splice(a..b, with);
            }
        }
        // Deletion of a range.
        8 if !input.is_empty() => {
            let a = rng.below(input.len());
            let b = (a + 1 + rng.below(16)).min(input.len());
            input.drain(a..b);
        }
        // Duplication of a range.
        9 if !input.is_empty() => {
            let a = rng.below(input.len());
            let b = (a + 1 + rng.below(64)).min(input.len());
            let copy = input[a..b].to_vec();
            let at = rng.below(input.len() + 1);
            input.splice(at..at, copy);
        }
        // Truncation.
        10 if !input.is_empty() => input.truncate(rng.below(input.len())),
        // Splice with another input.
        11 => {
            if let Some(other) = corpus.any(rng) {
                let head = rng.below(input.len() + 1);
                let tail = rng.below(other.len() + 1);
                input.truncate(head);
                input.extend_from_slice(&other[tail..]);
            }
        }
        // Deep nesting.
        12 => {
            let depth = pick(rng, &[15, 16, 17, 32, 127, 128, 129, 1000, 5000]);
            let at = position(rng, input);
            let (open, close): (&[u8], &[u8]) = match rng.below(3) {
                0 => (b"[", b"]"),
                1 => (b"{\"a\":", b"}"),
                _ => (b"[{\"k\":[", b"]}]"),
            };
            let mut nest = open.repeat(depth);
            if rng.one_in(2) {
                nest.extend_from_slice(b"1");
                nest.extend_from_slice(&close.repeat(depth));
            }
            input.splice(at..at, nest);
        }
        // A long string or a long run of one byte.
        13 => {
            let len = if rng.one_in(64) { 1 << 20 } else { pick(rng, &[64, 255, 256, 1000, 4096, 65_536]) };
            let byte = pick(rng, &[b'a', b'\\', b' ', b'"', b'0', b'9', 0xff, b',', b'\n']);
            let at = position(rng, input);
            input.splice(at..at, std::iter::repeat_n(byte, len));
        }
        // Many copies of the message (a big batch or many lines), usually within the limit.
        14 if !input.is_empty() && input.len() < 64 << 10 => {
            let budget = if rng.one_in(16) { 256 << 10 } else { 16 << 10 };
            let copies = rng.below(budget / input.len() + 1);
            let original = input.clone();
            for _ in 0..copies {
                input.extend_from_slice(if format == Format::Influx { b"\n" } else { b"," });
                input.extend_from_slice(&original);
            }
        }
        _ => {
            let at = position(rng, input);
            input.splice(at..at, pick(rng, tokens).iter().copied());
        }
    }
}

/// Makes `input` larger than the decoders accept, or just within it.
fn grow_past_limit(rng: &mut Rng, input: &mut Vec<u8>) {
    let target = match rng.below(3) {
        0 => MAX_MESSAGE_BYTES,
        1 => MAX_MESSAGE_BYTES + 1,
        _ => MAX_MESSAGE_BYTES + rng.below(1 << 20),
    };
    let unit = if input.is_empty() { vec![b' '] } else { input.clone() };
    while input.len() < target {
        let take = (target - input.len()).min(unit.len());
        input.extend_from_slice(&unit[..take]);
    }
}
