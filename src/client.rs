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
    #[error("cannot connect to {nation}'s node at {addr} (a principal connects only to its own nation's node): {cause}")]
    Connect {
        /// The nation whose node was dialed.
        nation: Nation,
        /// The node's address.
        addr: SocketAddr,
        /// Why the connection failed.
        cause: String,
    },
    /// The node closed the connection; the reason it gave.
    #[error("the node closed the connection: {0}")]
    Closed(String),
    /// The node refused a request.
    #[error("refused ({code}): {message}")]
    Refused {
        /// The node's stable reason code.
        code: String,
        /// The node's sentence for people.
        message: String,
    },
    /// The node sent something unexpected, or a frame could not be encoded or
    /// decoded.
    #[error("protocol error: {0}")]
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
    pending: Pending,
    next_request: AtomicU64,
    deliveries: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
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
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while outbox.recv_many(&mut batch, WRITE_BATCH).await > 0 {
                if crate::stream::write_all(&mut send, &mut batch).await.is_err() {
                    break;
                }
                batch.clear();
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
            pending,
            next_request: AtomicU64::new(UNAWAITED + 1),
            deliveries: tokio::sync::Mutex::new(deliveries),
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

    /// The next delivered message; an error once the connection is gone,
    /// with the node's reason (such as "slow consumer").
    pub async fn next_delivery(&self) -> Result<Delivery, ClientError> {
        let next = self.deliveries.lock().await.recv().await;
        next.ok_or_else(|| self.closed())
    }

    /// Closes the connection and waits briefly for the close to reach the
    /// node.
    pub async fn close(self) {
        self.connection
            .close(VarInt::from_u32(close::NORMAL), b"client done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
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
    delivered: mpsc::Sender<Delivery>,
) {
    let mut reader = FrameReader::new(recv);
    let mut frames = Vec::new();
    'read: while let Ok(true) = reader.read_frames(&mut frames).await {
        for frame in frames.drain(..) {
            match frame {
                Frame::Deliver(delivery) => {
                    if delivered.send(delivery).await.is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
