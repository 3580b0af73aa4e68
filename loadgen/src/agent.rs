//! The metric dynamics of one virtual agent: what its VM is doing, tick by tick.
//!
//! Every quantity follows a mean-reverting random walk (an Ornstein–Uhlenbeck process, stepped
//! exactly so that the tick interval does not change its statistics) around a per-agent baseline.
//! Now and then an agent enters a *busy phase* of a few minutes (about 10 % of agents at any
//! time) in which CPU, memory, disk and network activity are pulled towards high targets.
//!
//! Values are kept self-consistent by construction: the cpu shares are integers in millionths
//! of a percent that sum to exactly 100, memory and disk are whole pages that add up to their
//! totals, and the diskio and net counters only ever grow by non-negative integer steps.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::encode::FieldWriter;

/// Millionths per unit: gauges are written with six decimals.
const MICRO: f64 = 1e6;
const PAGE: u64 = 4096;
const GIB: u64 = 1 << 30;

/// Mean length of a busy phase, s (phases last 2–6 minutes).
const BUSY_MIN_S: f64 = 120.0;
const BUSY_MAX_S: f64 = 360.0;
/// Share of agents busy at any one time.
const BUSY_SHARE: f64 = 0.1;
/// Mean time between busy phases, s, so that `BUSY_SHARE` of the time is busy.
const IDLE_MEAN_S: f64 = (BUSY_MIN_S + BUSY_MAX_S) / 2.0 * (1.0 - BUSY_SHARE) / BUSY_SHARE;

/// The CPU states besides idle, in this order.
const CPU_STATES: usize = 9;
const USER: usize = 0;
const SYSTEM: usize = 1;
const IOWAIT: usize = 2;
const IRQ: usize = 3;
const SOFTIRQ: usize = 4;
const NICE: usize = 5;
const STEAL: usize = 6;
const GUEST: usize = 7;
const GUEST_NICE: usize = 8;

/// One step of a mean-reverting walk with time constant `tau`: `x' = mu + (x - mu)·a + std·s·z`,
/// where `std` is the walk's stationary standard deviation.
#[derive(Clone, Copy, Debug)]
struct Ou {
    a: f64,
    s: f64,
}

impl Ou {
    fn new(dt: f64, tau: f64) -> Self {
        let a = (-dt / tau).exp();
        Ou { a, s: (1.0 - a * a).max(0.0).sqrt() }
    }

    #[inline]
    fn step(self, x: f64, mu: f64, std: f64, z: f64) -> f64 {
        mu + (x - mu) * self.a + std * self.s * z
    }
}

/// What every agent's step shares for one tick of `dt` seconds, computed once per tick.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    dt: f64,
    cpu: Ou,
    mem: Ou,
    cache: Ou,
    disk: Ou,
    io: Ou,
    net: Ou,
    /// Probability that an idle agent starts a busy phase during this tick.
    p_busy: f64,
}

impl Step {
    /// The coefficients for a tick `dt` seconds after the previous one (0 = no change).
    pub(crate) fn new(dt: f64) -> Self {
        let dt = dt.max(0.0);
        Step {
            dt,
            cpu: Ou::new(dt, 30.0),
            mem: Ou::new(dt, 120.0),
            cache: Ou::new(dt, 600.0),
            disk: Ou::new(dt, 3600.0),
            io: Ou::new(dt, 20.0),
            net: Ou::new(dt, 15.0),
            p_busy: 1.0 - (-dt / IDLE_MEAN_S).exp(),
        }
    }
}

/// An approximately standard normal number from one draw (sum of four 16-bit uniforms).
#[inline]
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let r: u64 = rng.random();
    let sum = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
    // Four uniforms on [0, 1): mean 2, variance 1/3.
    (sum as f64 / 65536.0 - 2.0) * 3f64.sqrt()
}

/// A number whose logarithm is uniform on `[ln lo, ln hi)`.
fn log_uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    (rng.random_range(lo.ln()..hi.ln())).exp()
}

/// Rounds a non-negative amount down to whole pages.
#[inline]
fn pages(bytes: f64) -> u64 {
    (bytes.max(0.0) as u64) / PAGE * PAGE
}

/// Adds `n` events with probability `p` (capped at 1), `n` in `1..=max`.
#[inline]
fn rare(rng: &mut ChaCha8Rng, p: f64, max: u64) -> u64 {
    if rng.random::<f64>() < p {
        rng.random_range(1..=max)
    } else {
        0
    }
}

/// The state of one agent's VM.
#[derive(Clone, Debug)]
pub(crate) struct AgentState {
    // busy phases
    busy_left_s: f64,
    busy_cpu: f64,
    busy_mem: f64,
    busy_net: f64,
    // cpu
    cpu_base: f64,
    /// Non-idle CPU, percent.
    cpu: f64,
    shares: [f64; CPU_STATES],
    /// The current non-idle states, millionths of a percent; idle is the rest of 100.
    cpu_micros: [u64; CPU_STATES],
    // cpufreq, MHz
    freq_base: f64,
    freq_boost: f64,
    freq_micros: u64,
    // mem, fractions of the total
    mem_total: u64,
    mem_base: f64,
    mem_used: f64,
    cache_base: f64,
    mem_cached: f64,
    mem_buffered: f64,
    mem_shared: f64,
    // disk
    disk_total: u64,
    disk_base: f64,
    disk_used: f64,
    // diskio: log rates (bytes/s), sizes (bytes/op), latencies (ms/op)
    rd_base: f64,
    wr_base: f64,
    rd_log: f64,
    wr_log: f64,
    rd_size: f64,
    wr_size: f64,
    rd_lat: f64,
    wr_lat: f64,
    /// read_bytes, write_bytes, iops_read, iops_write, read_time, write_time.
    io: [u64; 6],
    // net: log rates (bytes/s), packet sizes (bytes)
    rx_base: f64,
    tx_base: f64,
    rx_log: f64,
    tx_log: f64,
    rx_pkt: f64,
    tx_pkt: f64,
    /// bytes_recv, bytes_sent, packets_recv, packets_sent, err_in, err_out, drop_in, drop_out.
    net: [u64; 8],
}

/// The indices of [`AgentState::io`].
const READ_BYTES: usize = 0;
const WRITE_BYTES: usize = 1;
const IOPS_READ: usize = 2;
const IOPS_WRITE: usize = 3;
const READ_TIME: usize = 4;
const WRITE_TIME: usize = 5;

/// The indices of [`AgentState::net`].
const BYTES_RECV: usize = 0;
const BYTES_SENT: usize = 1;
const PACKETS_RECV: usize = 2;
const PACKETS_SENT: usize = 3;
const ERR_IN: usize = 4;
const ERR_OUT: usize = 5;
const DROP_IN: usize = 6;
const DROP_OUT: usize = 7;

impl AgentState {
    /// A VM with `memory_gib` of memory, drawn from its stationary state (a random uptime, a
    /// random phase), so that the first tick already looks like a running fleet.
    pub(crate) fn new(windows: bool, memory_gib: u32, rng: &mut ChaCha8Rng) -> Self {
        let mut shares = if windows {
            [0.62, 0.30, 0.0, 0.03, 0.0, 0.0, 0.02, 0.0, 0.0]
        } else {
            [0.60, 0.22, 0.06, 0.01, 0.04, 0.02, 0.03, 0.0, 0.0]
        };
        for s in &mut shares {
            *s *= rng.random_range(0.5..1.5);
        }
        // A few Linux VMs run nested guests.
        if !windows && rng.random_bool(0.05) {
            shares[GUEST] = rng.random_range(0.02..0.10);
            shares[GUEST_NICE] = rng.random_range(0.0..0.02);
        }

        let busy = rng.random_bool(BUSY_SHARE);
        let cpu_base = 2.0 + 30.0 * rng.random::<f64>().powi(2);
        let freq_base = 100.0 * rng.random_range(21..=30) as f64;
        let mem_base = rng.random_range(0.15..0.55);
        let cache_base = rng.random_range(0.08..0.30);
        let disk_base = rng.random_range(0.15..0.75);
        let disk_gib = [30u64, 50, 64, 80, 100, 128, 200, 256, 500, 1024][rng.random_range(0..10)];
        let rd_base = log_uniform(rng, 20e3, 2e6).ln();
        let wr_base = log_uniform(rng, 50e3, 4e6).ln();
        let rx_base = log_uniform(rng, 5e3, 3e6).ln();
        let tx_base = rx_base + rng.random_range(0.3f64..3.0).ln();
        let mut a = AgentState {
            busy_left_s: if busy { rng.random_range(0.0..BUSY_MAX_S) } else { 0.0 },
            busy_cpu: rng.random_range(65.0..95.0),
            busy_mem: rng.random_range(0.70..0.90),
            busy_net: rng.random_range(5f64..20.0).ln(),
            cpu_base,
            cpu: cpu_base,
            shares,
            cpu_micros: [0; CPU_STATES],
            freq_base,
            freq_boost: (3500.0 - freq_base).min(rng.random_range(200.0..600.0)),
            freq_micros: 0,
            mem_total: u64::from(memory_gib.max(1)) * GIB,
            mem_base,
            mem_used: mem_base,
            cache_base,
            mem_cached: cache_base,
            mem_buffered: if windows { 0.0 } else { rng.random_range(0.005..0.04) },
            mem_shared: rng.random_range(0.002..0.03),
            disk_total: pages(disk_gib as f64 * GIB as f64 * 0.96),
            disk_base,
            disk_used: disk_base,
            rd_base,
            wr_base,
            rd_log: rd_base,
            wr_log: wr_base,
            rd_size: rng.random_range(16e3..128e3),
            wr_size: rng.random_range(8e3..64e3),
            rd_lat: rng.random_range(0.3..4.0),
            wr_lat: rng.random_range(0.5..6.0),
            io: [0; 6],
            rx_base,
            tx_base,
            rx_log: rx_base,
            tx_log: tx_base,
            rx_pkt: rng.random_range(300.0..1400.0),
            tx_pkt: rng.random_range(200.0..1400.0),
            net: [0; 8],
        };
        // Counters start where an uptime of an hour to three months has taken them.
        let uptime = log_uniform(rng, 3600.0, 90.0 * 86400.0);
        let grow = |rate_log: f64, rng: &mut ChaCha8Rng| rate_log.exp() * uptime * rng.random_range(0.5..1.5);
        let (rd, wr, rx, tx) = (grow(rd_base, rng), grow(wr_base, rng), grow(rx_base, rng), grow(tx_base, rng));
        a.io[READ_BYTES] = (rd / 512.0) as u64 * 512;
        a.io[WRITE_BYTES] = (wr / 512.0) as u64 * 512;
        a.io[IOPS_READ] = (rd / a.rd_size) as u64;
        a.io[IOPS_WRITE] = (wr / a.wr_size) as u64;
        a.io[READ_TIME] = (a.io[IOPS_READ] as f64 * a.rd_lat) as u64;
        a.io[WRITE_TIME] = (a.io[IOPS_WRITE] as f64 * a.wr_lat) as u64;
        a.net[BYTES_RECV] = rx as u64;
        a.net[BYTES_SENT] = tx as u64;
        a.net[PACKETS_RECV] = (rx / a.rx_pkt) as u64;
        a.net[PACKETS_SENT] = (tx / a.tx_pkt) as u64;
        a.net[ERR_IN] = (uptime * 1e-4 * rng.random::<f64>()) as u64;
        a.net[ERR_OUT] = (uptime * 5e-5 * rng.random::<f64>()) as u64;
        a.net[DROP_IN] = (uptime * 2e-3 * rng.random::<f64>()) as u64;
        a.net[DROP_OUT] = (uptime * 5e-4 * rng.random::<f64>()) as u64;
        if busy {
            a.cpu = a.busy_cpu;
            a.mem_used = a.busy_mem;
        }
        a.sample_cpu(rng);
        a
    }

    /// Whether the agent is in a busy phase.
    pub(crate) fn busy(&self) -> bool {
        self.busy_left_s > 0.0
    }

    /// Advances the VM by one tick.
    pub(crate) fn step(&mut self, k: &Step, rng: &mut ChaCha8Rng) {
        let dt = k.dt;
        // Busy phases: end when their time is up; start at random, each with its own intensity.
        if self.busy() {
            self.busy_left_s -= dt;
        } else if rng.random::<f64>() < k.p_busy {
            self.busy_left_s = rng.random_range(BUSY_MIN_S..BUSY_MAX_S);
            self.busy_cpu = rng.random_range(65.0..95.0);
            self.busy_mem = rng.random_range(0.70..0.90);
            self.busy_net = rng.random_range(5f64..20.0).ln();
        }
        let busy = self.busy();

        let (cpu_mu, cpu_std) = if busy { (self.busy_cpu, 6.0) } else { (self.cpu_base, 3.0 + 0.2 * self.cpu_base) };
        self.cpu = k.cpu.step(self.cpu, cpu_mu, cpu_std, normal(rng)).clamp(0.5, 99.5);
        self.sample_cpu(rng);

        let mem_mu = if busy { self.busy_mem } else { self.mem_base };
        self.mem_used = k.mem.step(self.mem_used, mem_mu, 0.02, normal(rng)).clamp(0.05, 0.95);
        self.mem_cached = k.cache.step(self.mem_cached, self.cache_base, 0.02, normal(rng)).clamp(0.005, 0.5);

        self.disk_used = k.disk.step(self.disk_used, self.disk_base, 0.01, normal(rng)).clamp(0.01, 0.97);

        let io_boost = if busy { 1.5 } else { 0.0 };
        self.rd_log = k.io.step(self.rd_log, self.rd_base + io_boost, 0.6, normal(rng));
        self.wr_log = k.io.step(self.wr_log, self.wr_base + io_boost, 0.6, normal(rng));
        let rd = ((self.rd_log.exp() * dt) / 512.0) as u64 * 512;
        let wr = ((self.wr_log.exp() * dt) / 512.0) as u64 * 512;
        let rd_ops = if rd > 0 { ((rd as f64 / self.rd_size) as u64).max(1) } else { 0 };
        let wr_ops = if wr > 0 { ((wr as f64 / self.wr_size) as u64).max(1) } else { 0 };
        self.io[READ_BYTES] += rd;
        self.io[WRITE_BYTES] += wr;
        self.io[IOPS_READ] += rd_ops;
        self.io[IOPS_WRITE] += wr_ops;
        self.io[READ_TIME] += (rd_ops as f64 * self.rd_lat).round() as u64;
        self.io[WRITE_TIME] += (wr_ops as f64 * self.wr_lat).round() as u64;

        let net_boost = if busy { self.busy_net } else { 0.0 };
        self.rx_log = k.net.step(self.rx_log, self.rx_base + net_boost, 0.5, normal(rng));
        self.tx_log = k.net.step(self.tx_log, self.tx_base + net_boost, 0.5, normal(rng));
        let rx = self.rx_log.exp() * dt;
        let tx = self.tx_log.exp() * dt;
        self.net[BYTES_RECV] += rx as u64;
        self.net[BYTES_SENT] += tx as u64;
        self.net[PACKETS_RECV] += (rx / self.rx_pkt).round() as u64;
        self.net[PACKETS_SENT] += (tx / self.tx_pkt).round() as u64;
        self.net[ERR_IN] += rare(rng, 1e-4 * dt, 1);
        self.net[ERR_OUT] += rare(rng, 5e-5 * dt, 1);
        self.net[DROP_IN] += rare(rng, if busy { 0.02 } else { 0.001 } * dt, 4);
        self.net[DROP_OUT] += rare(rng, 5e-4 * dt, 2);
    }

    /// Splits the non-idle CPU into its states, with some jitter in the shares.
    fn sample_cpu(&mut self, rng: &mut ChaCha8Rng) {
        let jitter: [u64; 2] = [rng.random(), rng.random()];
        let mut shares = self.shares;
        for (i, s) in shares.iter_mut().enumerate() {
            let byte = (jitter[i / 8] >> ((i % 8) * 8)) & 0xff;
            *s *= 0.75 + 0.5 * byte as f64 / 255.0;
        }
        let total: f64 = shares.iter().sum();
        for (m, s) in self.cpu_micros.iter_mut().zip(shares) {
            *m = (self.cpu * s / total * MICRO).round() as u64;
        }
        let boost = self.freq_boost * (self.cpu / 100.0).sqrt() + 25.0 * normal(rng);
        let freq = (self.freq_base + boost).clamp(self.freq_base - 100.0, self.freq_base + self.freq_boost);
        self.freq_micros = (freq * 1000.0).round() as u64 * 1000; // kHz resolution
    }

    /// `cpu` (instance `cpu-total`): the eleven usage fields, in key order.
    pub(crate) fn write_cpu(&self, f: &mut FieldWriter<'_>) {
        let c = &self.cpu_micros;
        let busy: u64 = c.iter().sum();
        // Each state is at most its share of 99.5 %, rounded: the sum stays below 100 %.
        let idle = (100 * MICRO as u64).saturating_sub(busy);
        f.fixed("usage_guest", c[GUEST]);
        f.fixed("usage_guest_nice", c[GUEST_NICE]);
        f.fixed("usage_idle", idle);
        f.fixed("usage_iowait", c[IOWAIT]);
        f.fixed("usage_irq", c[IRQ]);
        f.fixed("usage_nice", c[NICE]);
        f.fixed("usage_softirq", c[SOFTIRQ]);
        f.fixed("usage_steal", c[STEAL]);
        f.fixed("usage_system", c[SYSTEM]);
        f.fixed("usage_user", c[USER]);
        f.fixed("usage_utilization", 100 * MICRO as u64 - idle);
    }

    /// `cpufreq`: the current frequency in MHz.
    pub(crate) fn write_cpufreq(&self, f: &mut FieldWriter<'_>) {
        f.fixed("cur_freq", self.freq_micros);
    }

    /// `mem`: used + free + buffered + cached == total, in whole pages.
    pub(crate) fn write_mem(&self, f: &mut FieldWriter<'_>) {
        let total = self.mem_total;
        let t = total as f64;
        let used = pages(self.mem_used * t);
        let buffered = pages(self.mem_buffered * t);
        // The page cache gives way when used memory grows.
        let cached = pages((self.mem_cached * t).min(0.98 * t - (used + buffered) as f64));
        let free = total - used - buffered - cached;
        let shared = pages(self.mem_shared * t).min(used);
        f.int("buffered", buffered);
        f.int("cached", cached);
        f.int("free", free);
        f.int("shared", shared);
        f.int("total", total);
        f.int("used", used);
        f.fixed("used_percent", percent_micros(used, total));
    }

    /// `disk` (path `/`): used + free == total.
    pub(crate) fn write_disk(&self, f: &mut FieldWriter<'_>) {
        let total = self.disk_total;
        let used = pages(self.disk_used * total as f64).min(total);
        f.int("free", total - used);
        f.int("total", total);
        f.int("used", used);
        f.fixed("used_percent", percent_micros(used, total));
    }

    /// `diskio` (name `sda`): cumulative counters.
    pub(crate) fn write_diskio(&self, f: &mut FieldWriter<'_>) {
        f.int("iops_read", self.io[IOPS_READ]);
        f.int("iops_write", self.io[IOPS_WRITE]);
        f.int("read_bytes", self.io[READ_BYTES]);
        f.int("read_time", self.io[READ_TIME]);
        f.int("write_bytes", self.io[WRITE_BYTES]);
        f.int("write_time", self.io[WRITE_TIME]);
    }

    /// `net` (interface `eth0`): cumulative counters.
    pub(crate) fn write_net(&self, f: &mut FieldWriter<'_>) {
        let n = &self.net;
        f.int("bytes_recv", n[BYTES_RECV]);
        f.int("bytes_sent", n[BYTES_SENT]);
        f.int("drop_in", n[DROP_IN]);
        f.int("drop_out", n[DROP_OUT]);
        f.int("err_in", n[ERR_IN]);
        f.int("err_out", n[ERR_OUT]);
        f.int("packets_recv", n[PACKETS_RECV]);
        f.int("packets_sent", n[PACKETS_SENT]);
    }
}

/// `part / total * 100` in millionths of a percent, rounded.
fn percent_micros(part: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    ((part as u128 * 100_000_000 + total as u128 / 2) / total as u128) as u64
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn busy_phases_cover_about_a_tenth_of_the_time() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut agents: Vec<AgentState> = (0..300).map(|i| AgentState::new(i % 5 == 0, 8, &mut rng)).collect();
        let step = Step::new(2.0);
        let (mut busy, mut total) = (0usize, 0usize);
        let mut cpu_busy = 0.0;
        let mut cpu_idle = 0.0;
        for _ in 0..1200 {
            for a in &mut agents {
                a.step(&step, &mut rng);
                total += 1;
                if a.busy() {
                    busy += 1;
                    cpu_busy += a.cpu;
                } else {
                    cpu_idle += a.cpu;
                }
            }
        }
        let share = busy as f64 / total as f64;
        assert!((0.06..0.14).contains(&share), "busy share {share}");
        let (mean_busy, mean_idle) = (cpu_busy / busy as f64, cpu_idle / (total - busy) as f64);
        assert!(mean_busy > 55.0 && mean_idle < 25.0, "cpu busy {mean_busy}, idle {mean_idle}");
    }

    #[test]
    fn a_zero_step_changes_nothing_but_jitter() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut a = AgentState::new(false, 4, &mut rng);
        let (io, net) = (a.io, a.net);
        a.step(&Step::new(0.0), &mut rng);
        assert_eq!((io, net), (a.io, a.net));
    }

    #[test]
    fn percent_rounding() {
        assert_eq!(percent_micros(1, 3), 33_333_333);
        assert_eq!(percent_micros(2, 3), 66_666_667);
        assert_eq!(percent_micros(5, 5), 100_000_000);
        assert_eq!(percent_micros(0, 0), 0);
    }
}
