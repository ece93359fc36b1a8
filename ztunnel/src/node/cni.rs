//! The CNI plugin: a mode of the ztunnel binary that a container runtime runs for every pod
//! sandbox, chained after the pod network plugin (CNI spec 1.x: `CNI_COMMAND` and friends in
//! the environment, the network configuration with `prevResult` on stdin, the result or an
//! error object on stdout).
//!
//! ADD asks the node agent (Unix socket) to capture the pod and returns only once capture is
//! in place (or the pod is found to be outside the mesh), passing `prevResult` through; DEL
//! releases it; CHECK verifies it; VERSION, STATUS and GC answer as the spec says. Nothing
//! here panics on bad input: every failure is a CNI error with its spec code.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Where the agent listens unless the network configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/ambit/cni.sock";
/// How long ADD waits for the agent (the agent itself bounds the capture).
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Error codes from the CNI specification.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific (≥ 100): the agent refused or failed the capture.
    pub const CAPTURE_FAILED: u32 = 100;
}

/// What the plugin asks the agent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniRequest {
    pub command: CniCommand,
    pub container_id: String,
    pub netns: String,
    pub pod_name: String,
    pub pod_namespace: String,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniResponse {
    pub ok: bool,
    /// The pod's traffic is captured.
    pub captured: bool,
    #[serde(default)]
    pub error: Option<String>,
}

impl CniResponse {
    pub fn ok(captured: bool) -> Self {
        CniResponse { ok: true, captured, error: None }
    }

    pub fn error(e: impl Into<String>) -> Self {
        CniResponse { ok: false, captured: false, error: Some(e.into()) }
    }
}

/// A CNI error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: &str, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.to_owned(), details: details.into() }
    }
}

/// The plugin's input: the environment and stdin, as the runtime passes them.
pub struct Invocation {
    pub env: HashMap<String, OsString>,
    pub stdin: Vec<u8>,
}

/// The plugin's answer: what goes to stdout, and the exit status.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub status: i32,
}

/// True when the process was started as a CNI plugin.
pub fn invoked_as_plugin() -> bool {
    std::env::var_os("CNI_COMMAND").is_some()
}

/// Runs the plugin against the process's own environment and stdio; returns the exit code.
pub fn main() -> i32 {
    let env = std::env::vars_os()
        .filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v)))
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = Vec::new();
    let mut input = std::io::stdin().lock().take(1024 * 1024);
    if let Err(e) = input.read_to_end(&mut stdin) {
        let out =
            error_json("1.0.0", &CniError::new(code::DECODE, "cannot read the network configuration", e.to_string()));
        println!("{out}");
        return 1;
    }
    let outcome = run(&Invocation { env, stdin });
    if !outcome.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(outcome.stdout.as_bytes());
        let _ = out.write_all(b"\n");
    }
    outcome.status
}

fn error_json(version: &str, e: &CniError) -> String {
    serde_json::json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}).to_string()
}

/// The plugin, as a function of its inputs.
pub fn run(inv: &Invocation) -> Outcome {
    let command = inv.env.get("CNI_COMMAND").and_then(|c| c.to_str()).unwrap_or("");
    // VERSION may come with an empty or minimal config.
    if command == "VERSION" {
        let version = serde_json::from_slice::<Value>(&inv.stdin)
            .ok()
            .and_then(|c| c.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "1.1.0".into());
        return Outcome {
            stdout: serde_json::json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
            status: 0,
        };
    }
    let config: Value = match serde_json::from_slice(&inv.stdin) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return fail("1.0.0", CniError::new(code::DECODE, "network configuration is not a JSON object", "")),
        Err(e) => {
            return fail("1.0.0", CniError::new(code::DECODE, "network configuration is not valid JSON", e.to_string()))
        }
    };
    let version = config.get("cniVersion").and_then(Value::as_str).unwrap_or("").to_owned();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        let v = if version.is_empty() { "1.0.0" } else { version.as_str() };
        return fail(
            v,
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                "unsupported cniVersion",
                format!("{version:?}; supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ),
        );
    }
    match execute(command, &config, inv) {
        Ok(stdout) => Outcome { stdout, status: 0 },
        Err(e) => fail(&version, e),
    }
}

fn fail(version: &str, e: CniError) -> Outcome {
    Outcome { stdout: error_json(version, &e), status: 1 }
}

fn env<'a>(inv: &'a Invocation, name: &str) -> Result<&'a str, CniError> {
    match inv.env.get(name).map(|v| v.to_str()) {
        Some(Some(v)) if !v.is_empty() => Ok(v),
        Some(None) => Err(CniError::new(code::INVALID_ENV, "environment variable is not UTF-8", name)),
        _ => Err(CniError::new(code::INVALID_ENV, "required environment variable missing", name)),
    }
}

/// `CNI_ARGS`: `K=V;K=V`.
fn cni_args(inv: &Invocation) -> Result<HashMap<String, String>, CniError> {
    let Some(raw) = inv.env.get("CNI_ARGS") else { return Ok(HashMap::new()) };
    let raw = raw.to_str().ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_ARGS is not UTF-8", ""))?;
    raw.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_ARGS entry is not KEY=VALUE", pair))
        })
        .collect()
}

fn prev_ips(config: &Value) -> Result<Vec<IpAddr>, CniError> {
    let Some(prev) = config.get("prevResult") else { return Ok(Vec::new()) };
    let Some(ips) = prev.get("ips") else { return Ok(Vec::new()) };
    let ips = ips.as_array().ok_or_else(|| CniError::new(code::INVALID_CONFIG, "prevResult.ips is not a list", ""))?;
    ips.iter()
        .enumerate()
        .map(|(i, entry)| {
            let addr = entry.get("address").and_then(Value::as_str).ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "prevResult.ips entry has no address",
                    format!("prevResult.ips[{i}]"),
                )
            })?;
            addr.split('/').next().unwrap_or("").parse::<IpAddr>().map_err(|e| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "prevResult.ips address is not CIDR",
                    format!("prevResult.ips[{i}]: {addr}: {e}"),
                )
            })
        })
        .collect()
}

fn agent_socket(config: &Value) -> Result<PathBuf, CniError> {
    match config.get("agent_socket") {
        None => Ok(PathBuf::from(DEFAULT_AGENT_SOCKET)),
        Some(Value::String(s)) if !s.is_empty() => Ok(PathBuf::from(s)),
        Some(_) => Err(CniError::new(code::INVALID_CONFIG, "agent_socket must be a non-empty string", "")),
    }
}

/// The result ADD prints: the previous plugin's, unchanged (we add no interface or address).
fn pass_through(config: &Value, version: &str) -> String {
    match config.get("prevResult") {
        Some(prev) => {
            let mut prev = prev.clone();
            if let Some(obj) = prev.as_object_mut() {
                obj.insert("cniVersion".into(), Value::String(version.to_owned()));
            }
            prev.to_string()
        }
        None => serde_json::json!({"cniVersion": version}).to_string(),
    }
}

fn execute(command: &str, config: &Value, inv: &Invocation) -> Result<String, CniError> {
    let version = config.get("cniVersion").and_then(Value::as_str).unwrap_or("1.0.0");
    let socket = agent_socket(config)?;
    match command {
        "STATUS" => {
            return UnixStream::connect(&socket).map(|_| String::new()).map_err(|e| {
                CniError::new(
                    code::TRY_AGAIN_LATER,
                    "the node agent is not reachable",
                    format!("{}: {e}", socket.display()),
                )
            })
        }
        "GC" => return Ok(String::new()),
        "ADD" | "DEL" | "CHECK" => {}
        "" => return Err(CniError::new(code::INVALID_ENV, "required environment variable missing", "CNI_COMMAND")),
        other => return Err(CniError::new(code::INVALID_ENV, "unknown CNI_COMMAND", other)),
    }
    let container_id = env(inv, "CNI_CONTAINERID")?.to_owned();
    env(inv, "CNI_IFNAME")?;
    let args = cni_args(inv)?;
    let (Some(name), Some(namespace)) = (args.get("K8S_POD_NAME"), args.get("K8S_POD_NAMESPACE")) else {
        // Not a Kubernetes pod: nothing for the mesh to do.
        return Ok(if command == "ADD" { pass_through(config, version) } else { String::new() });
    };
    // Excluded namespaces (the mesh's own, the system's) never wait for an agent: a node whose
    // ztunnel is gone must still be able to start the next one.
    let excluded = config.get("exclude_namespaces").and_then(Value::as_array);
    if excluded.is_some_and(|l| l.iter().any(|n| n.as_str() == Some(namespace.as_str()))) {
        return Ok(if command == "ADD" { pass_through(config, version) } else { String::new() });
    }
    let cmd = match command {
        "ADD" => CniCommand::Add,
        "DEL" => CniCommand::Del,
        _ => CniCommand::Check,
    };
    // DEL may come without a namespace (the sandbox is already gone).
    let netns = match cmd {
        CniCommand::Del => inv.env.get("CNI_NETNS").and_then(|v| v.to_str()).unwrap_or("").to_owned(),
        _ => env(inv, "CNI_NETNS")?.to_owned(),
    };
    let request = CniRequest {
        command: cmd,
        container_id,
        netns,
        pod_name: name.clone(),
        pod_namespace: namespace.clone(),
        ips: prev_ips(config)?,
    };
    let response = match ask_agent(&socket, &request) {
        Ok(r) => r,
        // A missing agent cannot hold rules for a pod being deleted: DEL succeeds (the spec
        // asks DEL to succeed when there is nothing left to clean up).
        Err(_) if cmd == CniCommand::Del => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    if !response.ok {
        return Err(CniError::new(
            code::CAPTURE_FAILED,
            "the node agent could not capture the pod",
            response.error.unwrap_or_default(),
        ));
    }
    Ok(match cmd {
        CniCommand::Add => pass_through(config, version),
        _ => String::new(),
    })
}

fn ask_agent(socket: &PathBuf, request: &CniRequest) -> Result<CniResponse, CniError> {
    let unreachable = |e: std::io::Error| {
        CniError::new(code::TRY_AGAIN_LATER, "the node agent is not reachable", format!("{}: {e}", socket.display()))
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream.set_read_timeout(Some(AGENT_TIMEOUT)).map_err(unreachable)?;
    stream.set_write_timeout(Some(AGENT_TIMEOUT)).map_err(unreachable)?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| CniError::new(code::DECODE, "encoding the request", e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut reply = String::new();
    BufReader::new(stream.take(64 * 1024)).read_line(&mut reply).map_err(unreachable)?;
    serde_json::from_str(&reply)
        .map_err(|e| CniError::new(code::TRY_AGAIN_LATER, "the node agent answered nonsense", e.to_string()))
}

#[cfg(test)]
mod tests;
