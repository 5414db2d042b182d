//! A principal's session: publish and subscribe requests on one stream,
//! with every reply and delivery going through the session's bounded queue.

use std::sync::Arc;

use bytes::Bytes;
use quinn::Connection;
use tracing::{debug, info};

use super::queue;
use super::router::{Offer, SessionId, Source};
use super::{accept_hello, close_after, read_frame, write_frame, Shared, StreamError};
use crate::audit::{now_us, Event, Record, Verdict};
use crate::envelope::{Envelope, Unsigned};
use crate::policy::{Decision, Principal};
use crate::topic::{Pattern, Topic};
use crate::wire::{self, Frame, MAX_PAYLOAD};

pub(super) async fn serve(shared: Arc<Shared>, connection: Connection, principal: Arc<Principal>) {
    let subject = principal.name.clone();
    let (mut send, mut recv) = match accept_hello(&shared, &connection).await {
        Ok(streams) => streams,
        Err(err) => return close_after(&shared, &connection, subject, &err).await,
    };
    let welcome = Frame::Welcome {
        nation: shared.nation,
        principal: principal.name.clone(),
    };
    if let Err(err) = write_frame(&mut send, &welcome).await {
        return close_after(&shared, &connection, subject, &err).await;
    }

    let (queue, mut outbox) =
        queue::bounded(shared.settings.session_queue, shared.settings.session_queue_bytes);
    let session = shared
        .router
        .add_session(principal.clone(), queue, connection.clone());
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbox.recv().await {
            if send.write_all(&frame).await.is_err() {
                break;
            }
        }
    });

    let mut shutdown = shared.shutdown.clone();
    let result = loop {
        let frame = tokio::select! {
            frame = read_frame(&mut recv) => frame,
            _ = shutdown.changed() => break Ok(()),
        };
        match frame {
            Ok(Some(frame)) => {
                if let Err(err) = handle(&shared, session, &principal, frame).await {
                    break Err(err);
                }
            }
            Ok(None) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    shared.router.remove_session(session);
    writer.abort();
    match result {
        Err(err) => close_after(&shared, &connection, subject, &err).await,
        Ok(()) => {
            info!("session ended");
            shared
                .audit(Record::new(Event::Disconnect, Verdict::Allow, "session-ended").subject(subject))
                .await;
        }
    }
}

async fn handle(
    shared: &Shared,
    session: SessionId,
    principal: &Principal,
    frame: Frame,
) -> Result<(), StreamError> {
    let reply = match frame {
        Frame::Publish {
            request,
            topic,
            marking,
            payload,
        } => publish(shared, principal, request, topic, marking, payload).await,
        Frame::Subscribe { request, pattern } => subscribe(shared, session, principal, request, pattern),
        _ => return Err(StreamError::Unexpected("non-request")),
    };
    if let Offer::SlowConsumer(record) = shared.router.offer(session, Bytes::from(wire::encode(&reply)?)) {
        shared.audit(record).await;
    }
    Ok(())
}

fn refused(request: u64, code: &str, message: impl ToString) -> Frame {
    Frame::Refused {
        request,
        code: code.to_owned(),
        message: message.to_string(),
    }
}

async fn publish(
    shared: &Shared,
    principal: &Principal,
    request: u64,
    topic: String,
    marking: String,
    payload: Vec<u8>,
) -> Frame {
    let topic = match Topic::new(topic) {
        Ok(topic) => topic,
        Err(err) => return refused(request, "bad-topic", err),
    };
    let label = match shared.policy.scheme().parse(&marking) {
        Ok(label) => label,
        Err(err) => return refused(request, "bad-marking", err),
    };
    if payload.len() > MAX_PAYLOAD {
        return refused(
            request,
            "payload-too-large",
            format!(
                "payload of {} bytes exceeds the limit of {MAX_PAYLOAD} bytes",
                payload.len()
            ),
        );
    }
    let canonical = shared.policy.scheme().format(&label);
    let record = |verdict, reason: &str| {
        let mut record = Record::new(Event::Publish, verdict, reason).subject(&principal.name);
        record.marking = Some(canonical.clone());
        record
    };
    if let Decision::Deny { reason, message } = shared.policy.may_publish(principal, &topic, &label) {
        debug!(%reason, "publish denied");
        shared
            .audit(record(Verdict::Deny, reason.code()).detail(&message))
            .await;
        return refused(request, reason.code(), message);
    }
    let mut envelope = Envelope::from(Unsigned {
        id: shared.ids.next_id(),
        origin: shared.nation,
        publisher: principal.name.clone(),
        topic,
        label,
        created_us: now_us(),
        payload,
    });
    let mut accepted = record(Verdict::Allow, "policy-allows");
    accepted.id = Some(envelope.id.to_string());
    shared.audit(accepted).await;
    for record in shared.router.route(&mut envelope, Source::Local, &shared.signer) {
        shared.audit(record).await;
    }
    Frame::PublishAck {
        request,
        id: envelope.id,
    }
}

fn subscribe(
    shared: &Shared,
    session: SessionId,
    principal: &Principal,
    request: u64,
    pattern: String,
) -> Frame {
    let pattern = match Pattern::new(pattern) {
        Ok(pattern) => pattern,
        Err(err) => return refused(request, "bad-pattern", err),
    };
    if !principal
        .subscribe
        .iter()
        .any(|allowed| pattern.is_covered_by(allowed))
    {
        let allowed: Vec<&str> = principal.subscribe.iter().map(Pattern::as_str).collect();
        return refused(
            request,
            "topic-not-permitted",
            format!(
                "{} may not subscribe to {pattern}; permitted: {}",
                principal.name,
                if allowed.is_empty() {
                    "nothing".to_owned()
                } else {
                    allowed.join(", ")
                }
            ),
        );
    }
    let limit = shared.settings.max_subscriptions;
    if !shared.router.subscribe(session, pattern.clone(), limit) {
        return refused(
            request,
            "too-many-subscriptions",
            format!("a session may hold at most {limit} subscriptions; use wildcards or another session"),
        );
    }
    info!(%pattern, "subscribed");
    Frame::SubscribeAck { request }
}
