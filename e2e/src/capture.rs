//! Packet captures for tests that must show what crosses a link: `tcpdump` writing a pcap
//! inside a network namespace, and a byte search over what it caught.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A running `tcpdump` on one interface of one namespace.
pub struct Tcpdump {
    child: std::process::Child,
    file: PathBuf,
    rest: std::thread::JoinHandle<String>,
}

impl Tcpdump {
    /// Captures TCP on `iface` of namespace `netns` into `file` until stopped; returns once
    /// tcpdump is listening.
    pub fn start(netns: &str, iface: &str, file: PathBuf) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "--immediate-mode", "-i", iface, "-U", "-s", "0", "-w"])
            .arg(&file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump is needed (the README's test command installs it)");
        let mut err = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut line = String::new();
        err.read_line(&mut line).expect("tcpdump's first line");
        assert!(line.contains("listening"), "tcpdump did not start: {line}");
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Tcpdump { child, file, rest }
    }

    /// Stops the capture (after a moment for the last packets) and returns the pcap.
    pub fn stop(mut self) -> Vec<u8> {
        std::thread::park_timeout(Duration::from_millis(300));
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).output();
        let _ = self.child.wait();
        let _ = self.rest.join();
        std::fs::read(&self.file).expect("reading the capture")
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
