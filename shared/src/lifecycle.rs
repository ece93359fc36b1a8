//! Daemon process lifecycle shared by ztunnel, waypoint and controller: waiting for a
//! shutdown signal and checks every daemon's configuration needs.

use std::net::SocketAddr;

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Two endpoints configured on the same address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{first} and {second} are both {addr}; each endpoint needs its own address")]
pub struct AddressClash {
    pub first: &'static str,
    pub second: &'static str,
    pub addr: SocketAddr,
}

/// Checks that named listen addresses are pairwise distinct (port 0, "any free port", excepted).
pub fn distinct_addresses(endpoints: &[(&'static str, SocketAddr)]) -> Result<(), AddressClash> {
    for (i, (first, a)) in endpoints.iter().enumerate() {
        for (second, b) in &endpoints[i + 1..] {
            if a == b && a.port() != 0 {
                return Err(AddressClash { first, second, addr: *a });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashing_addresses_are_named() {
        let a: SocketAddr = "0.0.0.0:15021".parse().unwrap();
        let b: SocketAddr = "0.0.0.0:15020".parse().unwrap();
        assert!(distinct_addresses(&[("--a", a), ("--b", b)]).is_ok());
        let err = distinct_addresses(&[("--a", a), ("--b", b), ("--c", a)]).unwrap_err();
        assert_eq!(err.to_string(), "--a and --c are both 0.0.0.0:15021; each endpoint needs its own address");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(distinct_addresses(&[("--a", any), ("--b", any)]).is_ok());
    }
}
