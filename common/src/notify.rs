//! systemd readiness (`Type=notify`): once a server listens, it says `READY=1` on the socket
//! systemd names in `NOTIFY_SOCKET`; without that variable nothing is sent. The protocol is one
//! datagram on a Unix socket (a path, or an abstract name written with a leading `@`), so no
//! crate is needed.

use std::os::unix::net::UnixDatagram;

/// Tell the service manager the server is ready; errors are logged, not fatal (the server
/// runs either way, and systemd reports a unit that never got ready).
pub fn ready() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&target, b"READY=1\n") {
        tracing::warn!("systemd notification to {target:?} failed: {e}");
    }
}

fn send(target: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::SocketAddr;
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(target))?,
    };
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }
}
