//! The well-known clients `ambit-bench` runs beside its own: iperf3 (bulk TCP, 1 and 8
//! streams), sockperf over TCP (ping-pong latency; ping-pong at a fixed message rate for the
//! proxies' CPU per 1 000 round trips) and h2load (HTTP/1.1 and HTTP/2 request rates). Their
//! servers run inside the bench's server pods; each tool's output is parsed here, and a tool
//! that is missing or reports failures fails the run (a figure from a broken run is no figure).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

pub const IPERF_PORT: u16 = 5201;
pub const SOCKPERF_PORT: u16 = 11111;

/// The Debian packages the tools come from, by binary.
const TOOLS: [(&str, &str); 3] = [("iperf3", "iperf3"), ("sockperf", "sockperf"), ("h2load", "nghttp2-client")];

/// Fails naming the package of every missing tool.
pub fn check_installed() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| {
            !Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        bail!("missing benchmark tools; install the Debian packages: apt-get install {}", missing.join(" "));
    }
    Ok(())
}

/// The iperf3 and sockperf servers of one pod; killed on drop.
pub struct Servers {
    children: Vec<Child>,
}

impl Servers {
    pub fn start(netns: &str) -> anyhow::Result<Servers> {
        let spawn = |args: &[&str]| -> anyhow::Result<Child> {
            Command::new("ip")
                .args(["netns", "exec", netns])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {args:?} in {netns}"))
        };
        let children = vec![
            spawn(&["iperf3", "-s", "-p", &IPERF_PORT.to_string()])?,
            spawn(&["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", &SOCKPERF_PORT.to_string()])?,
        ];
        let servers = Servers { children };
        // Ready when both ports listen in the pod (a client started earlier fails the run).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listening = Command::new("ip")
                .args(["netns", "exec", netns, "ss", "-Hltn"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let port_listens = |p: u16| listening.lines().any(|l| l.contains(&format!(":{p} ")));
            if port_listens(IPERF_PORT) && port_listens(SOCKPERF_PORT) {
                return Ok(servers);
            }
            if std::time::Instant::now() > deadline {
                bail!("iperf3 and sockperf servers in {netns} are not listening after 10 s");
            }
            #[allow(clippy::disallowed_methods)] // the bench's own blocking thread, not a runtime worker
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_in(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .with_context(|| format!("running {args:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{args:?} failed ({}): {}{}", out.status, stdout, String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout)
}

/// iperf3 bulk TCP: received Gbit/s over `seconds` with `streams` parallel streams.
pub fn iperf3(netns: &str, ip: &str, streams: u32, seconds: f64) -> anyhow::Result<f64> {
    let secs = format!("{}", seconds.ceil() as u64);
    let text = run_in(
        netns,
        &["iperf3", "-c", ip, "-p", &IPERF_PORT.to_string(), "-t", &secs, "-P", &streams.to_string(), "-J"],
    )?;
    parse_iperf3(&text)
}

pub fn parse_iperf3(text: &str) -> anyhow::Result<f64> {
    let v: Value = serde_json::from_str(text).context("iperf3 JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// sockperf over TCP with 1 KiB messages: with `mps`, `under-load` at that message rate (the
/// server answers every 100th; the proxies' CPU per message), else `ping-pong` as fast as it
/// goes (full round-trip latency). Returns the messages sent and percentiles in µs.
pub fn sockperf(netns: &str, ip: &str, seconds: f64, mps: Option<u32>) -> anyhow::Result<Value> {
    let secs = format!("{}", seconds.ceil() as u64);
    let port = SOCKPERF_PORT.to_string();
    let mode = if mps.is_some() { "under-load" } else { "ping-pong" };
    let mut args = vec!["sockperf", mode, "--tcp", "-i", ip, "-p", &port, "-t", &secs, "-m", "1024", "--full-rtt"];
    let rate;
    if let Some(m) = mps {
        rate = m.to_string();
        args.extend(["--mps", &rate]);
    }
    parse_sockperf(&run_in(netns, &args)?)
}

pub fn parse_sockperf(text: &str) -> anyhow::Result<Value> {
    let value_after = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.trim_start_matches([' ', '=']).split(|c: char| c == ';' || c.is_whitespace()).next()?.parse().ok()
    };
    let mut out = serde_json::Map::new();
    for line in text.lines() {
        if line.contains("[Total Run]") {
            if let Some(n) = value_after(line, "SentMessages=") {
                out.insert("sent".into(), json!(n));
            }
        }
        if line.contains("[Valid Duration]") {
            if let Some(n) = value_after(line, "ReceivedMessages=") {
                out.insert("round_trips".into(), json!(n));
            }
        }
        if line.contains("dropped messages") {
            let dropped = value_after(line, "dropped messages =").unwrap_or(0.0);
            if dropped > 0.0 {
                bail!("sockperf dropped {dropped} messages");
            }
        }
        for (key, name) in [
            ("percentile 50.000 =", "p50_us"),
            ("percentile 90.000 =", "p90_us"),
            ("percentile 99.000 =", "p99_us"),
            ("<MAX> observation =", "max_us"),
        ] {
            if line.contains(key) {
                if let Some(v) = value_after(line, key) {
                    out.insert(name.into(), json!(v));
                }
            }
        }
    }
    if !out.contains_key("p99_us") || !out.contains_key("sent") {
        bail!("sockperf printed no statistics: {text}");
    }
    Ok(Value::Object(out))
}

/// h2load for `seconds` over 16 connections (HTTP/2: 10 streams each); requests/s.
pub fn h2load(netns: &str, url: &str, seconds: f64, http1: bool) -> anyhow::Result<f64> {
    let secs = format!("{}", seconds.ceil() as u64);
    let mut args = vec!["h2load", "-D", &secs, "--warm-up-time", "1", "-c", "16", "-t", "1"];
    if http1 {
        args.push("--h1");
    } else {
        args.extend(["-m", "10"]);
    }
    args.push(url);
    parse_h2load(&run_in(netns, &args)?)
}

pub fn parse_h2load(text: &str) -> anyhow::Result<f64> {
    let requests =
        text.lines().find(|l| l.trim_start().starts_with("requests:")).context("h2load: no requests line")?;
    let count = |word: &str| -> Option<u64> {
        let parts: Vec<&str> = requests.split(',').collect();
        parts.iter().find(|p| p.trim().ends_with(word))?.split_whitespace().find_map(|w| w.parse().ok())
    };
    let (succeeded, failed, errored) = (count("succeeded"), count("failed"), count("errored"));
    // Requests that timed out are failures too (older h2load prints no timeout count).
    let timed_out = count("timeout").unwrap_or(0);
    if succeeded.unwrap_or(0) == 0 || failed.unwrap_or(1) > 0 || errored.unwrap_or(1) > 0 || timed_out > 0 {
        bail!("h2load: {}", requests.trim());
    }
    let finished = text.lines().find(|l| l.starts_with("finished in")).context("h2load: no summary")?;
    finished
        .split(',')
        .find(|p| p.trim().ends_with("req/s"))
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("h2load: no rate in {finished:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sockperf() {
        let text = "sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=47301; ReceivedMessages=47300\n\
            sockperf: [Valid Duration] RunTime=0.550 sec; SentMessages=26497; ReceivedMessages=26497\n\
            sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0\n\
            sockperf: ---> <MAX> observation = 6022.240\n\
            sockperf: ---> percentile 99.000 =   36.774\n\
            sockperf: ---> percentile 90.000 =   19.418\n\
            sockperf: ---> percentile 50.000 =   17.365\n";
        let v = parse_sockperf(text).expect("parses");
        assert_eq!(v["sent"], json!(47301.0));
        assert_eq!(v["round_trips"], json!(26497.0));
        assert_eq!(v["p99_us"], json!(36.774));
        assert_eq!(v["p50_us"], json!(17.365));
        assert!(parse_sockperf("sockperf: no server").is_err());
    }

    #[test]
    fn parses_h2load_and_refuses_failures() {
        let ok = "finished in 5.00s, 12345.60 req/s, 1.23MB/s\nrequests: 61728 total, 61728 started, 61728 done, 61728 succeeded, 0 failed, 0 errored, 0 timeout\n";
        assert_eq!(parse_h2load(ok).expect("parses"), 12345.6);
        let failed = ok.replace("61728 succeeded, 0 failed", "61000 succeeded, 728 failed");
        assert!(parse_h2load(&failed).is_err());
        let timed_out = ok.replace("0 errored, 0 timeout", "0 errored, 3 timeout");
        assert!(parse_h2load(&timed_out).is_err());
    }

    #[test]
    fn parses_iperf3() {
        let ok = r#"{"end": {"sum_received": {"bits_per_second": 4.5e9}}}"#;
        assert_eq!(parse_iperf3(ok).expect("parses"), 4.5);
        assert!(parse_iperf3(r#"{"error": "unable to connect"}"#).is_err());
    }
}
