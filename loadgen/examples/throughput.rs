//! How fast the fleet generates messages, without any output: `cargo run --release -p
//! dragonflow-loadgen --example throughput [agents] [ticks]` (default 10 000 agents, 10 ticks =
//! 600 000 messages), for both wire formats.

use std::time::Instant;

use loadgen::{Fleet, FleetConfig, Format};

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("agents and ticks are numbers"));
    let agents = args.next().unwrap_or(10_000) as usize;
    let ticks = args.next().unwrap_or(10);
    for format in [Format::Json, Format::Influx] {
        let started = Instant::now();
        let mut fleet = Fleet::new(FleetConfig { agents, format, ..FleetConfig::default() });
        let built = started.elapsed();
        let (mut messages, mut bytes) = (0u64, 0u64);
        let mut out = Vec::new();
        for t in 0..ticks {
            out.clear();
            fleet.tick(1_700_000_000_000_000_000 + t as i64 * 2_000_000_000, &mut out);
            messages += out.len() as u64;
            bytes += out.iter().map(|m| m.payload.len() as u64).sum::<u64>();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{format:?}: {agents} agents, {messages} messages, {:.1} MB in {secs:.3} s (fleet built in {:.3} s): \
             {:.0} msg/s, {:.0} B/msg",
            bytes as f64 / 1e6,
            built.as_secs_f64(),
            messages as f64 / secs,
            bytes as f64 / messages as f64,
        );
    }
}
