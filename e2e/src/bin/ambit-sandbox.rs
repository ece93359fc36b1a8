//! `ambit-sandbox`: an ambient mesh on this host — nodes and pods as network namespaces, the
//! real controller and ztunnels, sample apps. `up <dir>` starts it and returns, leaving it
//! running; the other commands act on the running sandbox; `down` removes everything.

use std::path::PathBuf;
use std::process::ExitCode;

use ambit_e2e::sandbox::{bin_dir, down_prefix, Options, Sandbox};
use clap::Parser;

#[derive(Parser)]
#[command(name = "ambit-sandbox", about = "A local ambient mesh made of network namespaces")]
struct Cli {
    /// Where the sandbox keeps its state, manifests and logs.
    #[arg(long, env = "AMBIT_SANDBOX_DIR", default_value = "/run/ambit/sandbox", global = true)]
    dir: PathBuf,
    /// Name prefix of everything the sandbox creates (namespaces, hosts files); one sandbox per
    /// prefix on a host.
    #[arg(long, env = "AMBIT_SANDBOX_PREFIX", default_value = "ambitsb", global = true)]
    prefix: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Starts nodes, controller and ztunnels, applies every manifest in <dir>, waits until
    /// ready and prints what runs where.
    Up {
        manifests: PathBuf,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
    },
    /// Stops and removes everything (also what a crashed run left).
    Down,
    /// What runs where.
    Status,
    /// Runs a command in a pod: `exec <pod> -- <cmd>…` (`world`: in the outside world, a
    /// client outside the cluster).
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Prints one of the controller's admin pages (`/debug/waypoints`: Gateway and Service
    /// statuses; `/debug/routes`: route statuses; `/debug/rejected`, `/debug/config_dump`).
    Debug { path: String },
    /// Prints a component's log: `controller`, `ztunnel-node-1`, `pod-<ns>-<name>`.
    Logs { component: String },
    /// Prints a node's ztunnel metrics (`istio_tcp_*` series).
    Metrics { node: String },
    /// Applies a manifest file or directory to the running sandbox.
    Apply { file: PathBuf },
    /// Deletes what a manifest file describes.
    Delete { file: PathBuf },
}

fn opts(cli: &Cli, nodes: usize) -> Options {
    Options {
        prefix: cli.prefix.clone(),
        root: cli.dir.clone(),
        nodes,
        bin_dir: bin_dir(),
        verbose: true,
        controller_flags: Vec::new(),
        ztunnel_flags: Vec::new(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-sandbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Up { manifests, nodes } => {
            let nodes = *nodes;
            // Ctrl-C while starting: take down what was started.
            let (dir, prefix) = (cli.dir.clone(), cli.prefix.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                if let Ok(rt) = rt {
                    if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                        eprintln!("\ninterrupted: removing the sandbox");
                        down_prefix(&prefix, &dir);
                        std::process::exit(130);
                    }
                }
            });
            eprintln!("starting the sandbox ({nodes} nodes)");
            let mut sb = Sandbox::up(opts(&cli, nodes))?;
            eprintln!("applying {}", manifests.display());
            if let Err(e) = sb.apply(manifests) {
                sb.down();
                return Err(e.into());
            }
            sb.keep = true;
            println!("{}", sb.status());
            println!(
                "logs: {}/logs; try: ambit-sandbox exec <pod> -- ambit-sample get http://<service>:<port>/",
                cli.dir.display()
            );
        }
        Cmd::Down => {
            match Sandbox::open(opts(&cli, 0)) {
                Ok(mut sb) => sb.down(),
                Err(_) => down_prefix(&cli.prefix, &cli.dir),
            }
            let left = ambit_e2e::sandbox::leftovers(&cli.prefix);
            anyhow::ensure!(left.is_empty(), "left behind: {left:?}");
            eprintln!("sandbox removed");
        }
        Cmd::Status => print!("{}", Sandbox::open(opts(&cli, 0))?.status()),
        Cmd::Exec { pod, cmd } => {
            let sb = Sandbox::open(opts(&cli, 0))?;
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let out = if pod == "world" { sb.exec_world(&args)? } else { sb.exec(pod, &args)? };
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            anyhow::ensure!(out.status.success(), "command failed ({})", out.status);
        }
        Cmd::Debug { path } => {
            let sb = Sandbox::open(opts(&cli, 0))?;
            let response = sb
                .get_in_node("node-1", 15014, path)
                .ok_or_else(|| anyhow::anyhow!("the controller's admin port did not answer"))?;
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{path}: {}", head.lines().next().unwrap_or(""));
            println!("{body}");
        }
        Cmd::Metrics { node } => {
            let sb = Sandbox::open(opts(&cli, 0))?;
            let text = sb
                .get_in_node(node, 15020, "/metrics")
                .ok_or_else(|| anyhow::anyhow!("no metrics from {node}'s ztunnel"))?;
            for line in text.lines().filter(|l| l.starts_with("istio_tcp_")) {
                println!("{line}");
            }
        }
        Cmd::Logs { component } => print!("{}", Sandbox::open(opts(&cli, 0))?.log(component)),
        Cmd::Apply { file } => {
            let mut sb = Sandbox::open(opts(&cli, 0))?;
            sb.apply(file)?;
            print!("{}", sb.status());
        }
        Cmd::Delete { file } => {
            let mut sb = Sandbox::open(opts(&cli, 0))?;
            sb.delete(file)?;
            print!("{}", sb.status());
        }
    }
    Ok(())
}
