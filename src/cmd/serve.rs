//! `dragonflow serve`: the job server (the `server` crate; docs/server.md), in the foreground until
//! it is stopped.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// Where to listen; loopback unless told otherwise.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Job specs and states, the agent registry, alarm rules and handlers, the token, and the default
    /// lake DIR/lake.
    #[arg(long, value_name = "DIR", default_value = "dragonflow-data")]
    pub data_dir: PathBuf,
    /// The bearer token's file [default: DIR/token]; generated (and printed once) when it does not exist.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The lake the query routes read [default: DIR/lake]; a job without a Parquet sink gets one here.
    #[arg(long, value_name = "DIR")]
    pub lake: Option<PathBuf>,
    /// Timely workers per job.
    #[arg(long, value_name = "N", default_value = "2", value_parser = workers)]
    pub workers: usize,
    /// Larger request bodies are refused with 413: bytes, or with a unit (512KiB, 1MiB).
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = byte_size)]
    pub max_body: usize,
    /// A POST /sql query running longer is cancelled and answered 504.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::duration)]
    pub sql_time_limit: std::time::Duration,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    server::serve(server::ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        token_file: args.token_file,
        lake: args.lake,
        workers: args.workers,
        max_body: args.max_body,
        sql_time_limit: args.sql_time_limit,
    })
}

fn workers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a number of workers, at least 1".to_string()),
    }
}

/// Parses a size in bytes: `1048576`, `512KiB`, `1MiB`, `1 GiB` (binary units, any case; `B` alone
/// allowed).
pub fn byte_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let expected = || format!("expected a size in bytes like 1048576, 512KiB or 1MiB, got {text:?}");
    let n: usize = digits.parse().map_err(|_| expected())?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(expected()),
    };
    n.checked_mul(scale).filter(|&b| b > 0).ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(byte_size("1048576"), Ok(1_048_576));
        assert_eq!(byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(byte_size("512 kib"), Ok(512 << 10));
        assert_eq!(byte_size("2GiB"), Ok(2 << 30));
        assert_eq!(byte_size("10B"), Ok(10));
        for bad in ["", "0", "MiB", "1.5MiB", "1MB", "-1", "99999999999999999999"] {
            assert!(byte_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn at_least_one_worker() {
        assert_eq!(workers("4"), Ok(4));
        assert!(workers("0").is_err());
        assert!(workers("x").is_err());
    }
}
