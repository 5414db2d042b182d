//! The client library used by the CLI, the tests and the benches: connect
//! to one's own nation's node with a principal certificate, publish, and
//! subscribe.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, VarInt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot};

use crate::envelope::MessageId;
use crate::identity::{claimed_identity, Identity, IdentityError, TrustStore};
use crate::label::Nation;
use crate::pki::{self, address_host, PkiError, PkiLayout};
use crate::policy::Policy;
use crate::stream::{read_frame, FrameReader, StreamError};
use crate::tls::{self, TlsError};
use crate::wire::{self, close, Delivery, Frame, WireError};

/// Deliveries buffered in the client before it stops reading; past that,
/// QUIC flow control pushes back on the node.
const DELIVERY_BUFFER: usize = 1024;
/// Requests queued for the writer task.
const REQUEST_BUFFER: usize = 1024;
/// The most requests written at once.
const WRITE_BATCH: usize = 256;

/// Why a client could not connect, or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A certificate, key or CA file could not be read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A certificate is not usable: it names no valid identity.
    #[error("the client certificate is not usable: {0}")]
    Identity(#[from] IdentityError),
    /// The client certificate is a node's: only principals connect as clients.
    #[error("the client certificate belongs to the node of {0}, not to a principal")]
    NotAPrincipal(Nation),
    /// The principal is not in the network file, and the overrides do not say
    /// everything needed without it.
    #[error("principal `{0}` is not in the network file; pass --cert, --key, --ca and --node to connect without it")]
    UnknownPrincipal(String),
    /// The node address did not resolve to a socket address.
    #[error("cannot resolve node address `{0}`")]
    Address(String),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The QUIC/TLS connection to the node could not be made.
    #[error("cannot connect to {nation}'s node at {addr} (a principal connects only to its own nation's node): {}", escape_text(.cause))]
    Connect {
        /// The nation whose node was dialed.
        nation: Nation,
        /// The node's address.
        addr: SocketAddr,
        /// Why the connection failed.
        cause: String,
    },
    /// The node closed the connection; the reason it gave.
    #[error("the node closed the connection: {}", escape_text(.0))]
    Closed(String),
    /// The node refused a request.
    #[error("refused ({}): {}", escape_text(.code), escape_text(.message))]
    Refused {
        /// The node's stable reason code.
        code: String,
        /// The node's sentence for people.
        message: String,
    },
    /// The node sent something unexpected, or a frame could not be encoded or
    /// decoded.
    #[error("protocol error: {}", escape_text(.0))]
    Protocol(String),
    /// The payload is larger than [`wire::MAX_PAYLOAD`]; its size in bytes.
    #[error("the payload is {0} bytes; the limit is {max} bytes (1 MiB)", max = wire::MAX_PAYLOAD)]
    PayloadTooLarge(usize),
}

impl From<WireError> for ClientError {
    fn from(err: WireError) -> Self {
        ClientError::Protocol(err.to_string())
    }
}

/// Where and as whom to connect.
pub struct ClientOptions {
    /// The node's address.
    pub node: SocketAddr,
    /// The name the node's certificate must be valid for (its address host).
    pub server_name: String,
    /// The principal's certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The principal's private key.
    pub key: PrivateKeyDer<'static>,
    /// The CA of the principal's own nation, which issued the node's
    /// certificate.
    pub ca: CertificateDer<'static>,
}

/// Paths that override what the network file and certs folder say.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// The node's address (`host:port`).
    pub node: Option<String>,
    /// The principal's certificate file (PEM).
    pub cert: Option<PathBuf>,
    /// The principal's private key file (PEM).
    pub key: Option<PathBuf>,
    /// The CA certificate file (PEM) of the principal's nation.
    pub ca: Option<PathBuf>,
}

impl Clone for ClientOptions {
    fn clone(&self) -> Self {
        ClientOptions {
            node: self.node,
            server_name: self.server_name.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl ClientOptions {
    /// Finds the node, certificate, key and CA of `principal`: from the
    /// overrides where given, else from the network file and certs folder.
    /// `policy` is only needed for what the overrides leave out.
    pub fn for_principal(
        principal: &str,
        policy: Option<&Policy>,
        layout: &PkiLayout,
        overrides: &Overrides,
    ) -> Result<ClientOptions, ClientError> {
        let known = policy.and_then(|p| p.principal(principal));
        let need = || known.ok_or_else(|| ClientError::UnknownPrincipal(principal.to_owned()));
        let (default_cert, default_key) = match known {
            Some(p) => layout.cert_and_key(&Identity::Principal {
                nation: p.nation,
                name: p.name.clone(),
            }),
            None => (PathBuf::new(), PathBuf::new()),
        };
        let cert_path = match &overrides.cert {
            Some(path) => path.clone(),
            None => need().map(|_| default_cert)?,
        };
        let key_path = match &overrides.key {
            Some(path) => path.clone(),
            None => need().map(|_| default_key)?,
        };
        let cert = pki::read_cert(&cert_path)?;
        let nation = match claimed_identity(&cert)? {
            Identity::Principal { nation, .. } => nation,
            Identity::Node(nation) => return Err(ClientError::NotAPrincipal(nation)),
        };
        let ca_path = match &overrides.ca {
            Some(path) => path.clone(),
            None => layout.ca_cert(nation),
        };
        let address = match &overrides.node {
            Some(address) => address.clone(),
            None => {
                need()?;
                policy
                    .and_then(|p| p.nation(nation))
                    .map(|n| n.address.clone())
                    .ok_or_else(|| ClientError::UnknownPrincipal(principal.to_owned()))?
            }
        };
        Self::from_files(&address, &cert_path, &key_path, &ca_path)
    }

    /// Options from a node address (`host:port`) and certificate, key and CA
    /// files (PEM).
    pub fn from_files(
        address: &str,
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> Result<ClientOptions, ClientError> {
        use std::net::ToSocketAddrs;
        let node = address
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| ClientError::Address(address.to_owned()))?;
        Ok(ClientOptions {
            node,
            server_name: address_host(address).to_owned(),
            cert_chain: vec![pki::read_cert(cert)?],
            key: pki::read_key(key)?,
            ca: pki::read_cert(ca)?,
        })
    }
}

/// A delivered message, and where it stands in a durable subscription if
/// it came through one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The message.
    pub delivery: Delivery,
    /// Its durable subscription and sequence number there, to acknowledge
    /// ([`Client::ack`]); `None` for a plain subscription's.
    pub durable: Option<Cursor>,
}

/// A message's place in a durable subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The subscription's name.
    pub name: String,
    /// The message's sequence number in it: ascending, never reused.
    pub seq: u64,
}

/// Requests awaiting a reply; `None` once the connection's reader has
/// stopped, so no new request can wait for a reply that will never come.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Frame>>>>>;

/// A connected principal.
pub struct Client {
    endpoint: Endpoint,
    connection: Connection,
    nation: Nation,
    principal: String,
    requests: mpsc::Sender<Bytes>,
    /// Writes `requests` to the stream; told to finish it by `close`.
    writer: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    pending: Pending,
    next_request: AtomicU64,
    deliveries: tokio::sync::Mutex<(mpsc::Receiver<Received>, Vec<Received>)>,
    unawaited: Arc<Unawaited>,
}

/// Replies to publishes nobody waits for (`publish_unawaited`).
#[derive(Default)]
struct Unawaited {
    acked: AtomicU64,
    refused: AtomicU64,
}

/// The request id of publishes whose replies are only counted.
const UNAWAITED: u64 = 0;

fn closed_reason(err: &quinn::ConnectionError) -> String {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        other => other.to_string(),
    }
}

impl Client {
    /// Connects to the node, says `Hello` and waits for its `Welcome`.
    pub async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        let nation = match claimed_identity(options.cert_chain.first().ok_or(IdentityError::NoCertificate)?)?
        {
            Identity::Principal { nation, .. } => nation,
            Identity::Node(nation) => return Err(ClientError::NotAPrincipal(nation)),
        };
        let trust = TrustStore::new(&BTreeMap::from([(nation, options.ca.clone())]), &[])?;
        let config = tls::client_config(&trust, options.cert_chain, options.key, Identity::Node(nation))?;
        let addr = options.node;
        let connect_error = |cause: String| ClientError::Connect { nation, addr, cause };
        let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .map_err(|_| connect_error("bad local address".into()))?;
        let endpoint = Endpoint::client(bind).map_err(|err| connect_error(err.to_string()))?;
        let connection = endpoint
            .connect_with(config, addr, &options.server_name)
            .map_err(|err| connect_error(err.to_string()))?
            .await
            .map_err(|err| connect_error(closed_reason(&err)))?;
        let lost = |err: quinn::ConnectionError| ClientError::Closed(closed_reason(&err));
        let (mut send, mut recv) = connection.open_bi().await.map_err(lost)?;
        let hello = Frame::Hello {
            version: wire::PROTOCOL_VERSION,
        };
        crate::stream::write_frame(&mut send, &hello)
            .await
            .map_err(|err| stream_error(&connection, err))?;
        let principal = match read_frame(&mut recv).await {
            Ok(Some(Frame::Welcome { principal, .. })) => principal,
            Ok(other) => return Err(ClientError::Protocol(format!("expected Welcome, got {other:?}"))),
            Err(err) => return Err(stream_error(&connection, err)),
        };

        let (requests, mut outbox) = mpsc::channel::<Bytes>(REQUEST_BUFFER);
        let (finish, mut finishing) = oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                let finish = tokio::select! {
                    count = outbox.recv_many(&mut batch, WRITE_BATCH) => {
                        if count == 0 {
                            // Dropped without `close`: the connection is
                            // going, nothing more to say.
                            return;
                        }
                        false
                    }
                    _ = &mut finishing => {
                        while let Ok(frame) = outbox.try_recv() {
                            batch.push(frame);
                        }
                        true
                    }
                };
                if crate::stream::write_all(&mut send, &mut batch).await.is_err() {
                    return;
                }
                batch.clear();
                if finish {
                    // What was written reaches the node before the
                    // connection goes: the node sees the client end its
                    // session.
                    if send.finish().is_ok() {
                        let _ = send.stopped().await;
                    }
                    return;
                }
            }
        });
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let unawaited = Arc::<Unawaited>::default();
        let (delivered, deliveries) = mpsc::channel(DELIVERY_BUFFER);
        tokio::spawn(read_replies(recv, pending.clone(), unawaited.clone(), delivered));
        Ok(Client {
            endpoint,
            connection,
            nation,
            principal,
            requests,
            writer: Some((finish, writer)),
            pending,
            next_request: AtomicU64::new(UNAWAITED + 1),
            deliveries: tokio::sync::Mutex::new((deliveries, Vec::new())),
            unawaited,
        })
    }

    /// The principal's nation.
    pub fn nation(&self) -> Nation {
        self.nation
    }

    /// The principal's name, as the node admitted it.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    async fn request(&self, make: impl FnOnce(u64) -> Frame) -> Result<Frame, ClientError> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let frame = Bytes::from(wire::encode(&make(request))?);
        let (reply, answer) = oneshot::channel();
        match self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            Some(pending) => pending.insert(request, reply),
            None => return Err(self.closed()),
        };
        if self.requests.send(frame).await.is_err() {
            return Err(self.closed());
        }
        match answer.await {
            Ok(Frame::Refused { code, message, .. }) => Err(ClientError::Refused { code, message }),
            Ok(frame) => Ok(frame),
            Err(_) => Err(self.closed()),
        }
    }

    fn closed(&self) -> ClientError {
        match self.connection.close_reason() {
            Some(err) => ClientError::Closed(closed_reason(&err)),
            None => ClientError::Closed("the connection ended".into()),
        }
    }

    /// Publishes and waits for the node's acknowledgement, which comes only
    /// after the message has been routed.
    pub async fn publish(
        &self,
        topic: &str,
        marking: &str,
        payload: Vec<u8>,
    ) -> Result<MessageId, ClientError> {
        let reply = self
            .request(|request| Frame::Publish {
                request,
                topic: topic.to_owned(),
                marking: marking.to_owned(),
                payload,
            })
            .await?;
        match reply {
            Frame::PublishAck { id, .. } => Ok(id),
            other => Err(ClientError::Protocol(format!(
                "expected PublishAck, got {other:?}"
            ))),
        }
    }

    /// Publishes without waiting for the acknowledgement, so a sender can
    /// keep a fixed schedule or pipeline; `unawaited_replies` counts the
    /// acknowledgements and refusals as they come back. Waits only when the
    /// client's own request queue is full.
    pub async fn publish_unawaited(
        &self,
        topic: &str,
        marking: &str,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        check_payload(&payload)?;
        let frame = Frame::Publish {
            request: UNAWAITED,
            topic: topic.to_owned(),
            marking: marking.to_owned(),
            payload,
        };
        let frame = Bytes::from(wire::encode(&frame)?);
        self.requests.send(frame).await.map_err(|_| self.closed())
    }

    /// (acknowledged, refused) publishes among those sent unawaited.
    pub fn unawaited_replies(&self) -> (u64, u64) {
        (
            self.unawaited.acked.load(Ordering::Relaxed),
            self.unawaited.refused.load(Ordering::Relaxed),
        )
    }

    /// Subscribes to a topic pattern; returns once the node has acknowledged it.
    pub async fn subscribe(&self, pattern: &str) -> Result<(), ClientError> {
        match self
            .request(|request| Frame::Subscribe {
                request,
                pattern: pattern.to_owned(),
            })
            .await?
        {
            Frame::SubscribeAck { .. } => Ok(()),
            other => Err(ClientError::Protocol(format!(
                "expected SubscribeAck, got {other:?}"
            ))),
        }
    }

    /// Subscribes to `pattern` under the durable subscription `name`,
    /// creating it on first use: the node keeps what matches while this
    /// principal is away, and delivers what was not acknowledged
    /// ([`Client::ack`]) again, in order, to the next session that
    /// subscribes under the same name. Returns once the node has attached
    /// this session to it.
    pub async fn subscribe_durable(&self, name: &str, pattern: &str) -> Result<(), ClientError> {
        match self
            .request(|request| Frame::SubscribeDurable {
                request,
                name: name.to_owned(),
                pattern: pattern.to_owned(),
            })
            .await?
        {
            Frame::SubscribeAck { .. } => Ok(()),
            other => Err(ClientError::Protocol(format!(
                "expected SubscribeAck, got {other:?}"
            ))),
        }
    }

    /// Subscribes to `pattern` as [`Client::subscribe`] does, with a watch
    /// named `name`: while no session holds it, the node counts (and
    /// audits) what it takes for the pattern, for up to 10 minutes. A
    /// session that subscribes again under the same name learns how many
    /// messages it missed: `Some(count)`, or `None` if the node does not
    /// know the watch (it is new, or was forgotten). A session that closes
    /// the connection itself ([`Client::close`]) lets the watch go.
    pub async fn subscribe_watched(&self, name: &str, pattern: &str) -> Result<Option<u64>, ClientError> {
        match self
            .request(|request| Frame::SubscribeWatched {
                request,
                name: name.to_owned(),
                pattern: pattern.to_owned(),
            })
            .await?
        {
            Frame::Watched { missed, .. } => Ok(missed),
            other => Err(ClientError::Protocol(format!("expected Watched, got {other:?}"))),
        }
    }

    /// Acknowledges every message of the durable subscription `name` up to
    /// sequence number `through`: the node forgets them. Without waiting.
    pub async fn ack(&self, name: &str, through: u64) -> Result<(), ClientError> {
        let frame = Bytes::from(wire::encode(&Frame::DurableAck {
            name: name.to_owned(),
            through,
        })?);
        self.requests.send(frame).await.map_err(|_| self.closed())
    }

    /// Runs an admin command on the node, which must be this principal's
    /// own nation's, as an admin principal; waits for it to be applied.
    pub async fn admin(
        &self,
        command: crate::admin::AdminCommand,
    ) -> Result<crate::admin::AdminReply, ClientError> {
        match self.request(|request| Frame::Admin { request, command }).await? {
            Frame::AdminReply { reply, .. } => Ok(reply),
            other => Err(ClientError::Protocol(format!(
                "expected AdminReply, got {other:?}"
            ))),
        }
    }

    /// The next delivered message; an error once the connection is gone,
    /// with the node's reason (such as "slow consumer").
    pub async fn next_delivery(&self) -> Result<Delivery, ClientError> {
        self.next_received().await.map(|received| received.delivery)
    }

    /// The next delivered message, with its place in its durable
    /// subscription if it came through one.
    pub async fn next_received(&self) -> Result<Received, ClientError> {
        let next = self.deliveries.lock().await.0.recv().await;
        next.ok_or_else(|| self.closed())
    }

    /// Waits for at least one delivered message, then appends to `out`
    /// every one already received, up to `max`; how many it appended. For
    /// a subscriber that keeps up with a fast stream: one wake-up a batch.
    /// An error once the connection is gone and nothing is left.
    pub async fn next_deliveries(&self, out: &mut Vec<Delivery>, max: usize) -> Result<usize, ClientError> {
        let mut deliveries = self.deliveries.lock().await;
        let (receiver, buffer) = &mut *deliveries;
        match receiver.recv_many(buffer, max.max(1)).await {
            0 => Err(self.closed()),
            count => {
                out.extend(buffer.drain(..).map(|received| received.delivery));
                Ok(count)
            }
        }
    }

    /// Writes what was sent (acknowledgements included), closes the
    /// connection and waits briefly for the close to reach the node.
    pub async fn close(mut self) {
        if let Some((finish, writer)) = self.writer.take() {
            let _ = finish.send(());
            let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        }
        self.connection
            .close(VarInt::from_u32(close::NORMAL), b"client done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Client {
    /// Dropped without [`Client::close`]: the connection goes at once, as
    /// if the client had crashed, and what it had not written is lost.
    fn drop(&mut self) {
        self.connection
            .close(VarInt::from_u32(close::NORMAL), b"client dropped");
    }
}

fn check_payload(payload: &[u8]) -> Result<(), ClientError> {
    if payload.len() > wire::MAX_PAYLOAD {
        return Err(ClientError::PayloadTooLarge(payload.len()));
    }
    Ok(())
}

fn stream_error(connection: &Connection, err: StreamError) -> ClientError {
    match connection.close_reason() {
        Some(reason) => ClientError::Closed(closed_reason(&reason)),
        None => ClientError::Protocol(err.to_string()),
    }
}

async fn read_replies(
    recv: quinn::RecvStream,
    pending: Pending,
    unawaited: Arc<Unawaited>,
    delivered: mpsc::Sender<Received>,
) {
    let mut reader = FrameReader::new(recv);
    let mut frames = Vec::new();
    'read: while let Ok(true) = reader.read_frames(&mut frames).await {
        for frame in frames.drain(..) {
            match frame {
                Frame::Deliver(delivery) => {
                    let received = Received {
                        delivery,
                        durable: None,
                    };
                    if delivered.send(received).await.is_err() {
                        break 'read;
                    }
                }
                Frame::DurableDeliver { name, seq, delivery } => {
                    let received = Received {
                        delivery,
                        durable: Some(Cursor { name, seq }),
                    };
                    if delivered.send(received).await.is_err() {
                        break 'read;
                    }
                }
                Frame::PublishAck {
                    request: UNAWAITED, ..
                } => {
                    unawaited.acked.fetch_add(1, Ordering::Relaxed);
                }
                Frame::Refused {
                    request: UNAWAITED, ..
                } => {
                    unawaited.refused.fetch_add(1, Ordering::Relaxed);
                }
                Frame::PublishAck { request, .. }
                | Frame::SubscribeAck { request }
                | Frame::Watched { request, .. }
                | Frame::AdminReply { request, .. }
                | Frame::Refused { request, .. } => {
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_mut()
                        .and_then(|pending| pending.remove(&request));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(frame);
                    }
                }
                _ => break 'read,
            }
        }
    }
    // Dropping the senders tells waiters the connection is gone.
    pending.lock().unwrap_or_else(PoisonError::into_inner).take();
}

/// A delivery as one JSON object: id, origin, publisher, topic, marking,
/// created_us, and the payload as text when it is UTF-8, otherwise base64
/// in `payload_b64`.
pub fn delivery_json(delivery: &Delivery) -> serde_json::Value {
    use base64::Engine;
    let mut value = serde_json::json!({
        "id": delivery.id.to_string(),
        "origin": delivery.origin.to_string(),
        "publisher": delivery.publisher,
        "topic": delivery.topic,
        "marking": delivery.marking,
        "created_us": delivery.created_us,
    });
    match std::str::from_utf8(&delivery.payload) {
        Ok(text) => value["payload"] = text.into(),
        Err(_) => {
            value["payload_b64"] = base64::engine::general_purpose::STANDARD
                .encode(&delivery.payload)
                .into()
        }
    }
    value
}

/// Whether printing `c` as it is could end a line, move the cursor, or
/// reorder or hide the text around it. Bidi overrides and isolates can make
/// a line read as something else; tags and zero-width characters hide text.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

fn push_escaped(out: &mut String, text: &str) {
    use std::fmt::Write;
    for c in text.chars() {
        // `fmt::Write` into a String cannot fail.
        let _ = match c {
            '\\' => out.write_str("\\\\"),
            '\n' => out.write_str("\\n"),
            '\r' => out.write_str("\\r"),
            '\t' => out.write_str("\\t"),
            c if c.is_ascii_control() => write!(out, "\\x{:02x}", u32::from(c)),
            c if needs_escape(c) => write!(out, "\\u{{{:x}}}", u32::from(c)),
            c => out.write_char(c),
        };
    }
}

/// Bytes from the network as text that is safe to print on a terminal and
/// cannot pass for more than one line: `\` becomes `\\`; newline, carriage
/// return and tab become `\n`, `\r`, `\t`; other ASCII controls (ESC, DEL,
/// …) `\x1b`; C1 controls, line and paragraph separators, bidi controls and
/// invisible characters `\u{202e}`; and bytes that are not UTF-8 `\xff`
/// (always 80 to ff, which no ASCII control is). Every other character is
/// printed as it is. Distinct inputs give distinct outputs, so an escaped
/// sequence cannot be forged by sending its text.
pub fn escape_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        push_escaped(&mut out, chunk.valid());
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// Text from the network, escaped as [`escape_bytes`] does.
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text);
    out
}

/// A delivery as one line of text (without the newline), every field from
/// the network escaped, so no message can print a line that looks like
/// another: `[marking] topic from publisher (origin) id ID: payload`.
pub fn delivery_line(delivery: &Delivery) -> String {
    format!(
        "[{}] {} from {} ({}) id {}: {}",
        escape_text(&delivery.marking),
        escape_text(&delivery.topic),
        escape_text(&delivery.publisher),
        escape_text(delivery.origin.as_str()),
        delivery.id,
        escape_bytes(&delivery.payload)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn delivery(payload: &[u8]) -> Delivery {
        Delivery {
            id: MessageId([1; 16]),
            origin: Nation::parse("GBR").unwrap(),
            publisher: "gbr.analyst".into(),
            topic: "sigint.ru".into(),
            marking: "SECRET//REL TO FRA, GBR".into(),
            created_us: 7,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn json_has_text_payloads_as_text_and_binary_as_base64() {
        let text = delivery_json(&delivery(b"launch detected"));
        assert_eq!(text["payload"], "launch detected");
        assert!(text.get("payload_b64").is_none());
        for key in ["id", "origin", "publisher", "topic", "marking"] {
            assert!(text[key].is_string(), "{key}");
        }
        let binary = delivery_json(&delivery(&[0xff, 0x00, 0xfe]));
        assert_eq!(binary["payload_b64"], "/wD+");
        assert!(binary.get("payload").is_none());
    }

    /// The inverse of `escape_bytes`: if it recovers every input, no two
    /// inputs can print the same.
    fn unescape(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut chars = text.chars();
        let push = |out: &mut Vec<u8>, c: char| out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        while let Some(c) = chars.next() {
            if c != '\\' {
                push(&mut out, c);
                continue;
            }
            match chars.next()? {
                '\\' => out.push(b'\\'),
                'n' => out.push(b'\n'),
                'r' => out.push(b'\r'),
                't' => out.push(b'\t'),
                'x' => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(u8::from_str_radix(&hex, 16).ok()?);
                }
                'u' => {
                    if chars.next()? != '{' {
                        return None;
                    }
                    let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    push(&mut out, char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// What must never reach a terminal raw, listed here rather than taken
    /// from the code under test.
    fn dangerous(c: char) -> bool {
        c.is_control()
            || [
                '\u{2028}', '\u{2029}', '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}',
                '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
                '\u{feff}', '\u{200b}',
            ]
            .contains(&c)
    }

    /// Byte strings rich in what attackers send: raw bytes, any character,
    /// and fragments of escapes and terminal sequences.
    fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            any::<char>().prop_map(|c| c.to_string().into_bytes()),
            proptest::sample::select(vec![
                "\\",
                "\\n",
                "\n",
                "\r\n",
                "\u{202e}",
                "\u{2028}",
                "\x1b[2K",
                "\\x1b",
                "\\u{202e}",
                "\u{85}",
                "\u{9b}",
                "\x7f",
                "x",
                "u{",
                "}",
                "[TOP SECRET] ",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn escaped_output_has_no_control_characters_and_loses_nothing(bytes in hostile_bytes()) {
            let escaped = escape_bytes(&bytes);
            prop_assert!(!escaped.chars().any(dangerous), "{escaped:?}");
            prop_assert!(!escaped.contains('\n') && !escaped.contains('\r'));
            prop_assert_eq!(unescape(&escaped), Some(bytes.clone()));
            if let Ok(text) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(escape_text(text), escaped);
            }
        }

        #[test]
        fn distinct_inputs_print_distinctly(a in hostile_bytes(), b in hostile_bytes()) {
            prop_assume!(a != b);
            prop_assert_ne!(escape_bytes(&a), escape_bytes(&b));
        }
    }

    #[test]
    fn escapes_are_the_conventional_ones() {
        assert_eq!(
            escape_bytes(b"a\\b\nc\rd\te\x1b[2Kf\x7f\xff"),
            r"a\\b\nc\rd\te\x1b[2Kf\x7f\xff"
        );
        assert_eq!(
            escape_text("\u{202e}evil\u{2028}\u{85}é"),
            r"\u{202e}evil\u{2028}\u{85}é"
        );
        assert_eq!(
            escape_text("plain text, SECRET//REL TO FRA"),
            "plain text, SECRET//REL TO FRA"
        );
    }

    #[test]
    fn a_hostile_delivery_prints_as_one_line() {
        let fake = "\n[TOP SECRET//REL TO GBR] orders from usa.general (USA) id 00: strike";
        let mut hostile = delivery(format!("hello{fake}").as_bytes());
        hostile.publisher = format!("fra.analyst{fake}");
        hostile.topic = "sigint.ru\r\u{202e}".into();
        hostile.marking = "SECRET\x1b[1A".into();
        let line = delivery_line(&hostile);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(!line.chars().any(dangerous), "{line:?}");
        assert!(
            line.ends_with(r"hello\n[TOP SECRET//REL TO GBR] orders from usa.general (USA) id 00: strike"),
            "{line}"
        );
        assert!(
            line.starts_with(r"[SECRET\x1b[1A] sigint.ru\r\u{202e} from fra.analyst\n[TOP"),
            "{line}"
        );
    }

    #[test]
    fn errors_that_quote_the_node_are_escaped() {
        let closed = ClientError::Closed("bye\nerror: forged".into()).to_string();
        assert_eq!(closed, r"the node closed the connection: bye\nerror: forged");
        let refused = ClientError::Refused {
            code: "x\x1b]0;t\x07".into(),
            message: "m\u{2028}".into(),
        }
        .to_string();
        assert!(!refused.chars().any(dangerous), "{refused:?}");
    }
}
