//! Accepting a connection: the TLS handshake (inside the connection's own
//! task, never in the accept loop), the identity it proved, and the
//! policy's admission decision, which hands the connection to a session,
//! to an inbound link, or closes it with a reason.

use std::sync::Arc;

use quinn::{Connection, VarInt};
use rustls_pki_types::CertificateDer;
use tracing::{info, info_span, warn, Instrument};

use super::{inbound, session, Reason, Shared};
use crate::audit::{Event, Record, Verdict};
use crate::identity::{claimed_identity, Identity, IdentityError};
use crate::policy::Admission;
use crate::wire::close;

/// The identity a connection proved in its handshake.
fn connection_identity(connection: &Connection) -> Result<Identity, IdentityError> {
    let chain = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::NoCertificate)?;
    claimed_identity(chain.first().ok_or(IdentityError::NoCertificate)?)
}

/// Handshake, then admission: own-nation principals become sessions,
/// configured peers become links, everyone else is refused with a reason.
pub(super) async fn accept(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(err) => {
            warn!(%remote, cause = %err, "handshake failed");
            shared
                .audit(
                    // The address without its port, so a flood from one host is one source.
                    Record::new(Event::Refuse, Verdict::Deny, Reason::HandshakeFailed.code())
                        .subject(remote.ip())
                        .detail(err),
                )
                .await;
            return;
        }
    };
    let identity = match connection_identity(&connection) {
        Ok(identity) => identity,
        Err(err) => {
            refuse(
                &shared,
                &connection,
                remote.to_string(),
                Reason::NoIdentity.code(),
                err.to_string(),
            )
            .await;
            return;
        }
    };
    let span = info_span!("conn", who = %identity, %remote);
    match shared.policy.admit(shared.nation, &identity) {
        Ok(Admission::Principal(principal)) => {
            let principal = Arc::new(principal.clone());
            info!(parent: &span, "admitted");
            shared
                .audit(
                    Record::new(Event::Admit, Verdict::Allow, Reason::OwnPrincipal.code())
                        .subject(&principal.name),
                )
                .await;
            session::serve(shared, connection, principal)
                .instrument(span)
                .await;
        }
        Ok(Admission::Peer(peer)) => {
            info!(parent: &span, "admitted peer link");
            shared
                .audit(Record::new(Event::Admit, Verdict::Allow, Reason::ConfiguredPeer.code()).subject(peer))
                .await;
            inbound::serve(shared, connection, peer).instrument(span).await;
        }
        Err(refusal) => {
            let _guard = span.enter();
            refuse(
                &shared,
                &connection,
                identity.to_string(),
                refusal.reason.code(),
                refusal.message,
            )
            .await;
        }
    }
}

async fn refuse(
    shared: &Shared,
    connection: &Connection,
    subject: String,
    code: &'static str,
    reason: String,
) {
    warn!(code, %reason, "refused");
    connection.close(VarInt::from_u32(close::REFUSED), reason.as_bytes());
    shared
        .audit(
            Record::new(Event::Refuse, Verdict::Deny, code)
                .subject(subject)
                .detail(reason),
        )
        .await;
}
