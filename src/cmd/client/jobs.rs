//! `dragonflow submit JOB.toml`, `dragonflow jobs`, `dragonflow job ID`, `dragonflow stop ID`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hyper::Method;

use super::http::JSON;
use super::render::Json;
use super::{print_json, print_list, print_record, url, ServerArgs, DEFAULT_TIMEOUT};

/// A graceful stop closes windows, flushes sinks and writes a checkpoint before the server answers.
const STOP_TIMEOUT: Duration = Duration::from_secs(600);

/// The columns of `dragonflow jobs`.
const JOB_COLUMNS: &[&str] = &["id", "name", "state", "started_at", "records_in", "records_per_s", "watermark"];

#[derive(Args)]
pub struct SubmitArgs {
    /// The job spec: TOML, or JSON when the file ends in .json.
    pub spec: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct JobArgs {
    /// The job's id (as `submit` printed it).
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct StopArgs {
    /// The job's id.
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The content type the server reads a spec file as.
pub fn spec_content_type(path: &Path) -> &'static str {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        "application/json"
    } else {
        "application/toml"
    }
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let text = std::fs::read(&args.spec).with_context(|| format!("reading {}", args.spec.display()))?;
    let client = args.server.connect(DEFAULT_TIMEOUT)?;
    let bytes = client.call(Method::POST, "/jobs", Some((text, spec_content_type(&args.spec))), JSON)?;
    if args.server.json {
        print_json(&bytes);
        return Ok(());
    }
    let answer = super::http::json(&bytes)?;
    match answer.get("id") {
        Some(Json::String(id)) => println!("{id}"),
        Some(other) => println!("{}", super::render::record(other, &[], super::render::LIST).trim_end()),
        None => print_json(&bytes),
    }
    Ok(())
}

pub fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let bytes = args.server.connect(DEFAULT_TIMEOUT)?.get("/jobs")?;
    print_list(&args.server, &bytes, JOB_COLUMNS, "no jobs")
}

pub fn job(args: JobArgs) -> anyhow::Result<()> {
    let bytes = args.server.connect(DEFAULT_TIMEOUT)?.get(&url::path("/jobs", &args.id))?;
    // The spec is long; `--json` shows it.
    print_record(&args.server, &bytes, &["spec"])
}

pub fn stop(args: StopArgs) -> anyhow::Result<()> {
    let client = args.server.connect(STOP_TIMEOUT)?;
    if !args.server.json {
        eprintln!("stopping job {} (a running job closes its windows, flushes and checkpoints first)…", args.id);
    }
    let bytes = client.call(Method::DELETE, &url::path("/jobs", &args.id), None, JSON)?;
    if bytes.is_empty() {
        println!("job {} stopped", args.id);
        return Ok(());
    }
    if !args.server.json {
        let answer = super::http::json(&bytes)?;
        if matches!(answer.get("removed"), Some(Json::Bool(true))) {
            let state = answer.get("state").and_then(Json::as_str).unwrap_or("ended");
            println!("job {} had already ended ({state}); the server has forgotten it", args.id);
            return Ok(());
        }
    }
    print_record(&args.server, &bytes, &["spec", "removed"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_content_type_follows_the_extension() {
        assert_eq!(spec_content_type(Path::new("job.toml")), "application/toml");
        assert_eq!(spec_content_type(Path::new("job.JSON")), "application/json");
        assert_eq!(spec_content_type(Path::new("job")), "application/toml");
    }
}
