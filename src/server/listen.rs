//! Options of listening sockets.

use tokio::net::TcpListener;

/// How long the kernel holds a connection whose client has sent nothing
/// before handing it over anyway: one SYN-ACK retransmission, as nginx's
/// `deferred` and HAProxy's `defer-accept` ask for.
#[cfg(target_os = "linux")]
const DEFER_SECONDS: libc::c_int = 1;

/// Has the kernel hand over a connection only once its client's first bytes
/// have arrived (`TCP_DEFER_ACCEPT`), for protocols where the client speaks
/// first (HTTP, TLS). The accept and the first read then take one wake-up
/// of the gateway instead of two, which counts when every request comes on
/// a new connection, and a client that connects and says nothing costs no
/// connection state until the kernel gives up waiting. Best effort: where
/// the kernel refuses, connections are handed over as soon as established.
#[cfg(target_os = "linux")]
pub fn defer_accept(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let value = DEFER_SECONDS;
    // SAFETY: the descriptor is the listener's own and open for the call;
    // the option's value is a c_int, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "TCP_DEFER_ACCEPT refused; accepting connections at once");
    }
}

/// Elsewhere connections are handed over as soon as they are established.
#[cfg(not(target_os = "linux"))]
pub fn defer_accept(_: &TcpListener) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn deferred_seconds(listener: &TcpListener) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as in defer_accept, with room for the c_int answer.
        let rc = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        value
    }

    #[tokio::test]
    async fn a_silent_connection_is_handed_over_once_it_speaks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(deferred_seconds(&listener), 0);
        defer_accept(&listener);
        // The kernel keeps the value in SYN-ACK retransmissions and answers
        // it back in seconds, rounded up.
        assert!(deferred_seconds(&listener) >= DEFER_SECONDS);

        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(early.is_err(), "handed over before the client spoke");
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
        assert!(accepted.is_ok(), "not handed over once the client spoke");
    }
}
