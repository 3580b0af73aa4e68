//! `dragonflow ondemand AGENT [--measurement cpu,mem]`: "what is this VM doing now?" — calls a pull
//! agent at once, through the job server (`GET /agents/{key}/ondemand`) or directly (`--url`),
//! and shows its values with each call's latency. Nothing is written to the lake.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::client::{print_json, url, ServerArgs};

#[derive(Args)]
pub struct OndemandArgs {
    /// The agent's registry key (`ns/mcis/vm/csp`); the server looks up its pull_url.
    pub agent: String,
    /// Measurements to ask for, comma separated [default: cpu,cpufreq,mem,disk,diskio,net].
    #[arg(long, value_delimiter = ',')]
    pub measurement: Vec<String>,
    /// Call the agent at this URL directly (its pull_url), without the server.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// How long each call may take.
    #[arg(long = "call-timeout", default_value = "5s", value_parser = super::duration)]
    pub call_timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub fn run(args: OndemandArgs) -> anyhow::Result<()> {
    let answer: Value = match &args.url {
        Some(pull_url) => {
            let measurements = if args.measurement.is_empty() {
                pipelines::source::pull::PullConfig::default().measurements
            } else {
                args.measurement.clone()
            };
            let answers = pipelines::source::pull::fetch_now_blocking(pull_url, &measurements, args.call_timeout);
            pipelines::source::pull::ondemand_json(&args.agent, pull_url, answers)
        }
        None => {
            let list = (!args.measurement.is_empty()).then(|| args.measurement.join(","));
            let timeout = humantime::format_duration(args.call_timeout).to_string();
            let path = url::Query::new()
                .opt("measurement", list)
                .opt("timeout", Some(timeout))
                .on(&format!("{}/ondemand", url::path("/agents", &args.agent)));
            let client = args.server.connect(args.call_timeout + Duration::from_secs(10))?;
            serde_json::from_slice(&client.get(&path)?)?
        }
    };
    if args.server.json {
        print_json(answer.to_string().as_bytes());
    } else {
        print!("{}", render(&answer));
    }
    let failed = answer["results"].as_array().map_or(0, |r| r.iter().filter(|r| r["error"].is_string()).count());
    if failed > 0 {
        anyhow::bail!("{failed} call(s) failed");
    }
    Ok(())
}

/// One line per measurement: its latency and fields, or the error.
fn render(answer: &Value) -> String {
    let mut out =
        format!("{} ({})\n", answer["key"].as_str().unwrap_or("-"), answer["pull_url"].as_str().unwrap_or("-"));
    for r in answer["results"].as_array().into_iter().flatten() {
        let name = r["measurement"].as_str().unwrap_or("-");
        match r["error"].as_str() {
            Some(error) => out.push_str(&format!("  {name:<10} FAILED: {error}\n")),
            None => {
                let fields = r["metric"]["fields"]
                    .as_object()
                    .map(|f| f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let ms = r["latency_ms"].as_f64().unwrap_or(f64::NAN);
                out.push_str(&format!("  {name:<10} {ms:>7.1} ms  {fields}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_render_one_line_per_measurement() {
        let answer = json!({"key": "n/m/v/aws", "pull_url": "http://h/agents/v", "results": [
            {"measurement": "cpu", "latency_ms": 1.25, "metric": {"fields": {"usage_idle": 97.5}}},
            {"measurement": "mem", "error": "no answer within 2s"}
        ]});
        let text = render(&answer);
        assert!(text.starts_with("n/m/v/aws (http://h/agents/v)\n"), "{text}");
        assert!(
            text.contains("cpu            1.2 ms  usage_idle=97.5")
                || text.contains("cpu            1.3 ms  usage_idle=97.5"),
            "{text}"
        );
        assert!(text.contains("mem        FAILED: no answer within 2s"), "{text}");
    }
}
