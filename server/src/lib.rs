//! The job server (`dragonflow serve`, docs/server.md): pipeline jobs as a long-running service
//! with a REST API over HTTP.
//!
//! - [`Server`]: the state behind the API — the jobs it runs ([`jobs`]), the agent registry file
//!   its jobs read ([`agents`]), the alarm rules and handlers applied to every job ([`alarms`]),
//!   all kept under the data directory, and the lake the query routes read ([`queries`]).
//! - [`router`]: the HTTP routes, built from one route table ([`api::routes`]) that the OpenAPI
//!   document is generated from too, with bearer authentication, a body limit, JSON errors and a
//!   JSON log line per request.
//! - [`serve`]: binds, serves until SIGINT/SIGTERM, then stops every job gracefully.
//!
//! ```no_run
//! let config = server::ServerConfig { data_dir: "/var/lib/dragonflow".into(), ..Default::default() };
//! server::serve(config).unwrap();
//! ```

pub mod agents;
pub mod alarms;
pub mod api;
pub mod jobs;
mod log;
mod prometheus;
pub mod queries;
mod store;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use pipelines::alarms::LiveAlarms;

pub use api::{openapi, router, routes, Route};

/// How the server runs (the flags of `dragonflow serve`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Job specs and states, the agent registry, alarm rules and handlers, the token, and the
    /// default lake.
    pub data_dir: PathBuf,
    /// The bearer token's file; default `DATA_DIR/token`. Generated when it does not exist.
    pub token_file: Option<PathBuf>,
    /// The lake the query routes read and jobs without a Parquet sink write; default `DATA_DIR/lake`.
    pub lake: Option<PathBuf>,
    /// Timely workers per job.
    pub workers: usize,
    /// Larger request bodies are refused with 413.
    pub max_body: usize,
    /// A `POST /sql` query running longer is cancelled and answered 504.
    pub sql_time_limit: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            data_dir: PathBuf::from("dragonflow-data"),
            token_file: None,
            lake: None,
            workers: 2,
            max_body: 1 << 20,
            sql_time_limit: queries::SQL_TIME_LIMIT,
        }
    }
}

/// Everything the routes work on.
pub struct Server {
    config: ServerConfig,
    data_dir: PathBuf,
    lake: PathBuf,
    token: String,
    token_generated: bool,
    jobs: jobs::Jobs,
    agents: agents::Registry,
    alarms: alarms::AlarmStore,
}

impl Server {
    /// Opens (or creates) the data directory: reads or generates the token, loads the alarm rules
    /// and handlers, creates the registry file, and restarts every job whose persisted state is
    /// `starting` or `running`.
    pub fn open(config: ServerConfig) -> anyhow::Result<Arc<Server>> {
        store::create_private_dir(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&config.data_dir)
            .with_context(|| format!("cannot resolve the data directory {}", config.data_dir.display()))?;
        let lake = match &config.lake {
            Some(l) => absolute(l)?,
            None => data_dir.join("lake"),
        };
        if lake.to_str().is_none() {
            anyhow::bail!("the lake path {} is not valid UTF-8", lake.display());
        }
        std::fs::create_dir_all(&lake).with_context(|| format!("cannot create the lake {}", lake.display()))?;
        let token_file = config.token_file.clone().unwrap_or_else(|| data_dir.join("token"));
        let (token, token_generated) = store::read_or_create_token(&token_file)?;

        let live = LiveAlarms::new();
        let alarms = alarms::AlarmStore::open(&data_dir.join("alarms"), live.clone())?;
        let agents = agents::Registry::open(&data_dir.join("registry.json"))?;
        let defaults = jobs::SpecDefaults { lake: lake.clone(), registry: agents.path().to_path_buf() };
        let jobs = jobs::Jobs::open(&data_dir.join("jobs"), defaults, config.workers.max(1), live)?;
        let server = Arc::new(Server { config, data_dir, lake, token, token_generated, jobs, agents, alarms });
        jobs::start_rate_sampler(Arc::downgrade(&server));
        Ok(server)
    }

    /// The bearer token every route but `/healthz` needs.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether this start generated the token (it is printed then).
    pub fn token_generated(&self) -> bool {
        self.token_generated
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The lake the query routes read.
    pub fn lake(&self) -> &Path {
        &self.lake
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn jobs(&self) -> &jobs::Jobs {
        &self.jobs
    }

    /// Stops every running job gracefully (windows closed, sinks flushed, checkpoints written,
    /// offsets committed) and waits for them. Their persisted state stays `running`, so the next
    /// start resumes them.
    pub fn shutdown(&self) {
        self.jobs.shutdown();
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir().context("cannot read the working directory")?.join(path))
}

/// Runs the server until SIGINT or SIGTERM, then stops every job gracefully and returns.
///
/// Prints one line with the URL (and, on first start, the generated token) on stdout.
pub fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dragonflow-server")
        .build()
        .context("cannot start the server's runtime")?;
    let listen = config.listen;
    let server = Server::open(config)?;
    let served = runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let url = format!("http://{}", listener.local_addr().unwrap_or(listen));
        if server.token_generated() {
            println!("dragonflow: serving on {url}; token (also in the token file): {}", server.token());
        } else {
            println!("dragonflow: serving on {url}");
        }
        log::event("info", "listening", serde_json::json!({"url": url, "data_dir": server.data_dir()}));
        axum::serve(listener, router(server.clone()))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the HTTP server failed")
    });
    log::event("info", "stopping jobs", serde_json::json!({}));
    server.shutdown();
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    log::event("info", "stopped", serde_json::json!({}));
    served
}

/// Resolves at the first SIGINT or SIGTERM; a second one exits the process at once (jobs then
/// resume from their last checkpoint at the next start).
async fn shutdown_signal() {
    signal().await;
    log::event("info", "stopping: jobs are stopped gracefully (signal again to exit at once)", serde_json::json!({}));
    tokio::spawn(async {
        signal().await;
        log::event("info", "exiting now", serde_json::json!({}));
        std::process::exit(130);
    });
}

async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
