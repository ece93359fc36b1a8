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

    /// Stops the capture and returns the pcap, once tcpdump has written every packet the
    /// kernel handed it: the file must stop growing before tcpdump is interrupted, and its
    /// closing counts must show nothing left unread or dropped. A capture that missed packets
    /// would make "the payload never crossed the link" pass vacuously, so it fails instead.
    pub fn stop(mut self) -> Vec<u8> {
        let size = |f: &PathBuf| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let started = std::time::Instant::now();
        let mut last = size(&self.file);
        let mut stable = 0;
        // Busy machines deschedule tcpdump for a while: wait for three quiet looks in a row.
        while stable < 3 && started.elapsed() < Duration::from_secs(10) {
            std::thread::park_timeout(Duration::from_millis(150));
            let now = size(&self.file);
            stable = if now == last { stable + 1 } else { 0 };
            last = now;
        }
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).output();
        let _ = self.child.wait();
        let summary = self.rest.join().unwrap_or_default();
        let count = |what: &str| summary.lines().find_map(|l| l.strip_suffix(what)?.trim().parse::<u64>().ok());
        let (captured, received, dropped) =
            (count(" packets captured"), count(" packets received by filter"), count(" packets dropped by kernel"));
        assert!(
            captured.is_some() && captured == received && dropped == Some(0),
            "the capture is incomplete (captured {captured:?}, received {received:?}, dropped {dropped:?}): \
             its verdict would mean nothing\n{summary}"
        );
        std::fs::read(&self.file).expect("reading the capture")
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
