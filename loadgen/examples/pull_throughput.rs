//! How many requests the pull-mode listener answers: `cargo run --release -p dragonflow-loadgen
//! --example pull_throughput [agents] [seconds] [concurrency]` (default 10 000 agents, 10 s, 64
//! requests in flight). The client runs in the same process and shares the cores, so the figure
//! is a lower bound of what the listener alone could do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loadgen::{AgentListener, FleetConfig, ListenerConfig, MEASUREMENTS};

#[tokio::main]
async fn main() {
    let mut args =
        std::env::args().skip(1).map(|a| a.parse::<u64>().expect("agents, seconds and concurrency are numbers"));
    let agents = args.next().unwrap_or(10_000) as usize;
    let seconds = args.next().unwrap_or(10);
    let concurrency = args.next().unwrap_or(64);
    let started = Instant::now();
    let listener = AgentListener::start(FleetConfig { agents, ..FleetConfig::default() }, ListenerConfig::default())
        .await
        .expect("listener starts");
    println!("{agents} agents ticked and serving in {:.3} s", started.elapsed().as_secs_f64());
    let base = listener.base_url().to_string();
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(concurrency as usize).build_http();
    let (ok, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (client, base, ok, bytes) = (client.clone(), base.clone(), ok.clone(), bytes.clone());
            tokio::spawn(async move {
                let mut i = w as usize;
                while Instant::now() < deadline {
                    let (vm, m) = (i / MEASUREMENTS.len() % agents.max(1), MEASUREMENTS[i % MEASUREMENTS.len()]);
                    let uri = format!("{base}/agents/vm-{vm}/metric/{m}").parse().expect("a valid URI");
                    let response = client.get(uri).await.expect("an answer");
                    assert!(response.status().is_success());
                    let body: Bytes = response.into_body().collect().await.expect("a body").to_bytes();
                    ok.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    i += concurrency as usize;
                }
            })
        })
        .collect();
    let begin = Instant::now();
    for w in workers {
        w.await.expect("a worker ends");
    }
    let secs = begin.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    println!(
        "{n} metric requests in {secs:.1} s with {concurrency} in flight: {:.0} requests/s, {:.1} MB/s \
         (10 000 agents × 6 measurements every 10 s need 6 000/s)",
        n as f64 / secs,
        bytes.load(Ordering::Relaxed) as f64 / secs / 1e6
    );
    listener.shutdown().await.expect("clean shutdown");
}
