//! What a node holds that outlives its own tasks (its UDP socket, its
//! custody store, its shared state with the audit writer), and the signals
//! that say each one has been let go, so that a node stopped or crashed in
//! this process can be started again on the same address and data folder
//! at once.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::watch;

/// Held by whatever it stands for, and dropped with it: that drop is the
/// signal. Declared as the last field of its holder, it drops after the
/// holder's other fields.
#[derive(Debug)]
pub(super) struct Holding(#[allow(dead_code)] watch::Sender<()>);

/// Resolves once its [`Holding`] is dropped.
#[derive(Debug, Clone)]
pub(super) struct LetGo(watch::Receiver<()>);

/// A [`Holding`] and the signal of its drop.
pub(super) fn holding() -> (Holding, LetGo) {
    let (held, let_go) = watch::channel(());
    (Holding(held), LetGo(let_go))
}

impl LetGo {
    /// Returns once the holding is dropped (the value never changes, so
    /// `changed` fails exactly then).
    pub(super) async fn wait(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

/// The node's UDP socket as quinn sees it: the socket it wraps, and a
/// holding dropped right after it. quinn keeps the socket (and a poller
/// of it) in its endpoint driver and in every connection driver, each of
/// which may outlive the node's tasks for a drain period; the socket's
/// port is free once the last of them is gone.
#[derive(Debug)]
pub(super) struct ReleasingSocket {
    // Drops before `_held`: the port is free by the time it signals.
    inner: Arc<dyn AsyncUdpSocket>,
    _held: Holding,
}

impl ReleasingSocket {
    pub(super) fn wrap(inner: Arc<dyn AsyncUdpSocket>) -> (Arc<dyn AsyncUdpSocket>, LetGo) {
        let (held, let_go) = holding();
        (Arc::new(ReleasingSocket { inner, _held: held }), let_go)
    }
}

/// A poller of the wrapped socket that keeps the wrapper alive: the
/// wrapped socket's own poller holds the socket, so the wrapper must not
/// signal before every poller is gone.
#[derive(Debug)]
struct ReleasingPoller {
    // Drops before `_socket`.
    inner: Pin<Box<dyn UdpPoller>>,
    _socket: Arc<ReleasingSocket>,
}

impl UdpPoller for ReleasingPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.get_mut().inner.as_mut().poll_writable(cx)
    }
}

impl AsyncUdpSocket for ReleasingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(ReleasingPoller {
            inner: self.inner.clone().create_io_poller(),
            _socket: self,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
