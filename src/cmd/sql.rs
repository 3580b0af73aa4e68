//! `dragonflow sql --lake DIR "QUERY"`

use std::path::PathBuf;

use clap::Args;
use sinks::sql::{format_batches, lake_context, query, OutputFormat};

#[derive(Args)]
pub struct SqlArgs {
    /// The lake's directory.
    #[arg(long, default_value = "lake")]
    pub lake: PathBuf,
    /// Output format: table, csv or json.
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
    /// The query (read-only: SELECT, WITH, EXPLAIN, SHOW…).
    pub query: String,
}

pub fn run(args: SqlArgs) -> anyhow::Result<()> {
    let text = run_query(&args.lake, &args.query, args.format)?;
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

/// Runs one read-only query over a lake and formats the answer.
pub fn run_query(lake: &std::path::Path, sql: &str, format: OutputFormat) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let ctx = lake_context(lake).await?;
        let batches = query(&ctx, sql).await?;
        Ok(format_batches(&batches, format)?)
    })
}
