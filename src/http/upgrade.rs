//! A client connection that leaves HTTP after a 101 (WebSocket): how the
//! HTTP/1 server hands it to the tunnel the proxy opens.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::net::stream::ClientIo;

/// The client side of an upgrade, in the request's extensions: resolves to
/// the connection (and bytes the client sent past its request) once the
/// 101 has been written. (Extensions must be `Clone`; the first taker
/// gets the connection.)
#[derive(Clone)]
pub struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<Handoff>>>>);

/// A connection handed over after a 101, with the client's bytes read past
/// its request.
pub type Handoff = (ClientIo, Bytes);

impl ClientUpgrade {
    /// The side the tunnel waits on; the server sends the connection on
    /// `handoff` once the 101 is written.
    pub fn new(handoff: oneshot::Receiver<Handoff>) -> ClientUpgrade {
        ClientUpgrade(Arc::new(Mutex::new(Some(handoff))))
    }

    /// The upgraded connection, or `None` if the 101 could not be sent.
    pub async fn connection(self) -> Option<Handoff> {
        let receiver = self.0.lock().ok()?.take()?;
        receiver.await.ok()
    }
}
