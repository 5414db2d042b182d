//! A principal's session: publish and subscribe requests on one stream,
//! read and handled in batches, with every reply and delivery going
//! through the session's bounded queue.

use std::sync::Arc;

use bytes::Bytes;
use std::time::Duration;

use quinn::{Connection, SendStream, VarInt};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use super::connection::{accept_hello, close_after, next_batch, write_frame, StreamError};
use super::custody::Committed;
use super::queue::{QueueReceiver, QueueSender};
use super::router::Offer;
use super::{control, durable, outbound, queue, Reason, Shared};
use crate::admin::AdminCommand;
use crate::audit::{now_us, Event, Record, Verdict};
use crate::envelope::{Envelope, Unsigned};
use crate::label::{Label, MarkingError, MarkingScheme};
use crate::policy::{Decision, Principal};
use crate::routing::{SealState, SessionId, Source};
use crate::stream::{self, FrameReader};
use crate::topic::{Pattern, Topic};
use crate::wire::{self, close, Frame, MAX_PAYLOAD};

pub(super) async fn serve(shared: Arc<Shared>, connection: Connection, principal: Arc<Principal>) {
    let subject = principal.name.clone();
    let (mut send, recv) = match accept_hello(&shared, &connection).await {
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

    let (queue, outbox) = queue::bounded(shared.settings.session_queue, shared.settings.session_queue_bytes);
    let ending = Arc::new(Notify::new());
    let session = shared.router.add_session(
        principal.clone(),
        queue.clone(),
        connection.clone(),
        ending.clone(),
    );
    let (stop_writer, stop) = watch::channel(false);
    let mut writer = tokio::spawn(write_queue(send, outbox, stop));

    // Publishes are acknowledged, in order, once their batch is stored,
    // by a task of their own: the reader goes on with the next batch
    // meanwhile, so a flush to disk delays acks, not deliveries.
    let (to_answer, stored) = tokio::sync::mpsc::channel(STORED_QUEUE);
    // Acks not yet sent, at most half the session's queue: a commit that
    // answers many batches at once must not fill it (and make its own
    // client a slow consumer).
    let unanswered = Arc::new(tokio::sync::Semaphore::new(ack_allowance(&shared)));
    let answering = tokio::spawn(answer_when_stored(shared.clone(), session, stored));
    let mut reader = FrameReader::with_frame_timeout(recv, shared.settings.frame_timeout);
    let mut frames = Vec::new();
    let mut markings = MarkingCache::default();
    let mut shutdown = shared.shutdown.clone();
    let result = loop {
        tokio::select! {
            read = next_batch(&mut reader, &mut frames, &mut shutdown) => match read {
                Ok(true) => {
                    let batch = Batch {
                        shared: &shared,
                        session,
                        queue: &queue,
                        principal: &principal,
                        to_answer: &to_answer,
                        unanswered: &unanswered,
                    };
                    if let Err(err) = handle_batch(&batch, &mut markings, &mut frames).await {
                        break Err(err);
                    }
                }
                Ok(false) => break Ok(End::Done),
                Err(err) => break Err(err),
            },
            () = ending.notified() => break Ok(End::SlowConsumer),
        }
    };
    drop(to_answer);
    if let Err(err) = answering.await {
        error!(cause = %err, "a session's acknowledging task failed");
    }
    // No frame is queued for the session after this: its queue goes with it.
    shared.router.remove_session(session);
    let ended_by_client = matches!(result, Ok(End::Done)) && !*shared.shutdown.borrow();
    durable::detach(&shared, session, ended_by_client);
    // The last sender: the writer ends once what is queued is written.
    drop(queue);
    let slow = matches!(result, Ok(End::SlowConsumer));
    // Every frame queued is written to the client or audited as not
    // delivered, never both and never neither. While the connection is
    // up, the writer has `SESSION_FLUSH` to write the rest and have the
    // client's QUIC stack acknowledge it; a slow consumer that does not
    // read gets only what fits its flow-control window. Then what is
    // left is taken back unwritten.
    let flush = if connection.close_reason().is_none() {
        SESSION_FLUSH
    } else {
        Duration::ZERO
    };
    let joined = match tokio::time::timeout(flush, &mut writer).await {
        Ok(joined) => joined,
        Err(_) => {
            let _ = stop_writer.send(true);
            writer.await
        }
    };
    let why = if slow {
        "its subscriber read too slowly"
    } else {
        "the session ended"
    };
    match joined {
        Ok(unwritten) => audit_undelivered(&shared, &subject, why, unwritten).await,
        Err(err) => {
            // A panic is reported, not swallowed; what the writer held
            // went with it.
            error!(cause = %err, "a session's writer task failed");
            shared
                .audit(
                    Record::new(Event::Disconnect, Verdict::Deny, Reason::TaskPanicked.code())
                        .subject(&subject)
                        .detail(format!(
                            "its writer task failed ({err}); the frames queued for it are not accounted for"
                        )),
                )
                .await;
        }
    }
    if slow {
        // Audited when the queue was found full.
        connection.close(VarInt::from_u32(close::SLOW_CONSUMER), b"slow consumer");
        return;
    }
    match result {
        Err(err) => close_after(&shared, &connection, subject, &err).await,
        Ok(_) => {
            info!("session ended");
            shared
                .audit(
                    Record::new(Event::Disconnect, Verdict::Allow, Reason::SessionEnded.code())
                        .subject(subject),
                )
                .await;
        }
    }
}

/// How long a closing session's writer may take to write what is still
/// queued and have the client acknowledge it, before the rest is audited
/// as not delivered. Short: a session ending must not hold its slot, or
/// the node's shutdown, for long.
const SESSION_FLUSH: Duration = Duration::from_millis(500);

/// How a session's reading ended without an error.
enum End {
    /// The client finished its stream, or the node is shutting down.
    Done,
    /// Its queue was full: it is disconnected as a slow consumer.
    SlowConsumer,
}

/// Writes a session's queue to its stream until the queue is closed and
/// empty (then finishes the stream and waits for the client's QUIC stack
/// to acknowledge everything), or until `stop`. Returns the frames it did
/// not write whole: those still queued, and those of the batch being
/// written when it stopped or the write failed (a frame written is
/// emptied from the batch; a frame partly written never decodes at the
/// client, so it counts as not delivered).
async fn write_queue(
    mut send: SendStream,
    mut outbox: QueueReceiver,
    mut stop: watch::Receiver<bool>,
) -> Vec<Bytes> {
    let mut batch = Vec::new();
    let mut whole = Vec::new();
    // Waited on inside the branches, while `stop` is borrowed by the select.
    let mut stop_writing = stop.clone();
    loop {
        tokio::select! {
            more = outbox.recv_many(&mut batch) => {
                if !more {
                    let _ = send.finish();
                    tokio::select! {
                        _ = send.stopped() => {}
                        () = told_to_stop(&mut stop_writing) => {}
                    }
                    return Vec::new();
                }
                whole.clone_from(&batch);
                let written = tokio::select! {
                    written = stream::write_all(&mut send, &mut batch) => written.is_ok(),
                    () = told_to_stop(&mut stop_writing) => false,
                };
                if !written {
                    let mut unwritten: Vec<Bytes> = whole
                        .drain(..)
                        .zip(&batch)
                        .filter(|(_, left)| !left.is_empty())
                        .map(|(frame, _)| frame)
                        .collect();
                    unwritten.append(&mut outbox.close_and_drain());
                    return unwritten;
                }
                batch.clear();
            }
            () = told_to_stop(&mut stop) => return outbox.close_and_drain(),
        }
    }
}

/// Completes once the writer is told to stop (or whoever could tell it is
/// gone).
async fn told_to_stop(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Audits each message among `frames` as not delivered to `subject`
/// (replies carry no message and go unrecorded). Bounded by the session
/// queue.
async fn audit_undelivered(shared: &Shared, subject: &str, why: &str, frames: Vec<Bytes>) {
    let mut undelivered = 0usize;
    for frame in frames {
        let Some(body) = frame.get(wire::LENGTH_PREFIX..) else {
            continue;
        };
        // Frames this node encoded itself: they decode.
        if let Ok(Frame::Deliver(delivery)) = wire::decode(body) {
            undelivered += 1;
            let mut record = Record::new(Event::Deliver, Verdict::Deny, Reason::SessionClosed.code())
                .subject(subject)
                .detail(format!(
                    "{why} before this message was written to it; not delivered"
                ));
            record.id = Some(delivery.id.to_string());
            record.marking = Some(delivery.marking);
            shared.audit(record).await;
        }
    }
    if undelivered > 0 {
        warn!(
            undelivered,
            "messages queued for a closing session were not delivered"
        );
    }
}

/// Publish acks waiting for their batch to be stored; past it, the reader
/// waits for the store.
const STORED_QUEUE: usize = 64;

/// How many acks a session may have waiting for the store: half its queue.
fn ack_allowance(shared: &Shared) -> usize {
    shared.settings.session_queue.div_ceil(2).max(1)
}

/// A session's batch of requests, and where its acks go.
#[derive(Clone, Copy)]
struct Batch<'a> {
    shared: &'a Arc<Shared>,
    session: SessionId,
    /// The session's queue, for the durable subscriptions it attaches to.
    queue: &'a QueueSender,
    principal: &'a Arc<Principal>,
    to_answer: &'a tokio::sync::mpsc::Sender<Stored>,
    unanswered: &'a Arc<tokio::sync::Semaphore>,
}

/// The acks of a batch of publishes, sent once the batch is stored.
struct Stored {
    committed: Committed,
    acks: Vec<Frame>,
    /// One permit per ack, returned once it is sent.
    _room: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Sends each batch's publish acks once its outbox entries are stored, in
/// the order the batches came; a batch the store failed is refused
/// instead (`store-failed`), each publish audited.
async fn answer_when_stored(
    shared: Arc<Shared>,
    session: SessionId,
    mut stored: tokio::sync::mpsc::Receiver<Stored>,
) {
    while let Some(Stored {
        committed,
        mut acks,
        _room,
    }) = stored.recv().await
    {
        if let Err(err) = committed.wait().await {
            error!(cause = %err, "publishes routed but not stored: refusing their acks");
            let sentence = format!(
                "the node could not store this message for its peers ({err}); it was delivered locally and may reach them, but is not guaranteed to"
            );
            for ack in &mut acks {
                if let Frame::PublishAck { request, id } = *ack {
                    shared
                        .audit(
                            Record::new(Event::Publish, Verdict::Deny, Reason::StoreFailed.code())
                                .detail(format!("message {id}: {sentence}")),
                        )
                        .await;
                    *ack = refused(request, Reason::StoreFailed.code(), &sentence);
                }
            }
        }
        for ack in &acks {
            if let Err(err) = reply(&shared, session, ack).await {
                warn!(cause = %err, "cannot answer a publish");
            }
        }
    }
}

/// An authorized publish waiting to be routed with the rest of its batch.
struct Accepted {
    request: u64,
    envelope: Envelope,
    marking: String,
    /// Its `publish` record, written after the message is on its way.
    record: Record,
}

/// Handles the frames read together. Consecutive publishes are routed as
/// one batch, so that forwarding them costs one signature; a subscribe
/// first routes the publishes before it, keeping request order.
async fn handle_batch(
    batch: &Batch<'_>,
    markings: &mut MarkingCache,
    frames: &mut Vec<Frame>,
) -> Result<(), StreamError> {
    let Batch {
        shared,
        session,
        principal,
        ..
    } = *batch;
    let mut publishes = Vec::new();
    let mut result = Ok(());
    // Checked once a batch: a cheap call, and a batch is what one check
    // lets through.
    let audit_failure = shared.audit_failure();
    for frame in frames.drain(..) {
        match frame {
            Frame::Publish { request, .. }
            | Frame::Subscribe { request, .. }
            | Frame::SubscribeDurable { request, .. }
            | Frame::SubscribeWatched { request, .. }
                if audit_failure.is_some() =>
            {
                let cause = audit_failure.as_deref().unwrap_or_default();
                let answer = refuse_unaudited(shared, principal, request, cause).await;
                reply(shared, session, &answer).await?;
            }
            Frame::Publish {
                request,
                topic,
                marking,
                payload,
            } => match authorize(shared, principal, markings, request, topic, marking, payload).await {
                Ok(accepted) => publishes.push(accepted),
                Err(refusal) => reply(shared, session, &refusal).await?,
            },
            Frame::Subscribe { request, pattern } => {
                route_publishes(batch, std::mem::take(&mut publishes)).await?;
                let answer = subscribe(shared, session, principal, request, pattern).await;
                reply(shared, session, &answer).await?;
            }
            Frame::SubscribeDurable {
                request,
                name,
                pattern,
            } => {
                route_publishes(batch, std::mem::take(&mut publishes)).await?;
                let answer = subscribe_durable(batch, request, &name, pattern, true).await;
                reply(shared, session, &answer).await?;
            }
            Frame::SubscribeWatched {
                request,
                name,
                pattern,
            } => {
                route_publishes(batch, std::mem::take(&mut publishes)).await?;
                let answer = match subscribe(shared, session, principal, request, pattern.clone()).await {
                    Frame::SubscribeAck { .. } => {
                        subscribe_durable(batch, request, &name, pattern, false).await
                    }
                    refused => refused,
                };
                reply(shared, session, &answer).await?;
            }
            Frame::DurableAck { name, through } => {
                // Acks follow what they acknowledge: publishes before them
                // are routed first only to keep request order.
                route_publishes(batch, std::mem::take(&mut publishes)).await?;
                durable::acknowledge(shared, &principal.name, &name, through);
            }
            Frame::Admin { request, command } => {
                route_publishes(batch, std::mem::take(&mut publishes)).await?;
                let answer = admin(shared, principal, request, command).await;
                reply(shared, session, &answer).await?;
            }
            _ => {
                result = Err(StreamError::Unexpected("non-request"));
                break;
            }
        }
    }
    route_publishes(batch, publishes).await?;
    result
}

/// Runs an admin command for an admin principal; refuses (and audits)
/// anyone else's.
async fn admin(shared: &Arc<Shared>, principal: &Principal, request: u64, command: AdminCommand) -> Frame {
    if !principal.is_admin() {
        let (record, message) = control::not_admin(principal, &command);
        warn!(%command, "admin command refused: not an admin");
        shared.audit(record).await;
        return refused(request, Reason::NotAdmin.code(), message);
    }
    info!(%command, "admin command");
    shared
        .audit(
            Record::new(Event::Admit, Verdict::Allow, Reason::AdminCommand.code())
                .subject(&principal.name)
                .detail(command.to_string()),
        )
        .await;
    match control::run(shared, &command).await {
        Ok(reply) => Frame::AdminReply { request, reply },
        Err(err) => {
            warn!(%command, cause = %err, "admin command failed");
            refused(request, err.code(), err)
        }
    }
}

async fn reply(shared: &Shared, session: SessionId, frame: &Frame) -> Result<(), StreamError> {
    if let Offer::SlowConsumer(record) = shared.router.offer(session, Bytes::from(wire::encode(frame)?)) {
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

/// The last marking a session published with, parsed: publishers mostly
/// repeat one marking, so most publishes skip the parser.
#[derive(Default)]
struct MarkingCache {
    last: Option<(String, Label, String)>,
}

impl MarkingCache {
    /// The label and canonical marking of `marking`.
    fn parse(&mut self, scheme: &MarkingScheme, marking: String) -> Result<(Label, String), MarkingError> {
        if let Some((text, label, canonical)) = &self.last {
            if *text == marking {
                return Ok((label.clone(), canonical.clone()));
            }
        }
        let label = scheme.parse(&marking)?;
        let canonical = scheme.format(&label);
        self.last = Some((marking, label.clone(), canonical.clone()));
        Ok((label, canonical))
    }
}

/// At most this many characters of a refusal's sentence go into its
/// audit record: the sentence may quote what the client sent (a topic or
/// marking up to a frame long), and a log line must stay bounded.
const DETAIL_MAX: usize = 240;

/// A refusal's sentence for the audit log: control characters escaped (it
/// quotes outside input) and cut short.
fn bounded(sentence: &str) -> String {
    let mut out = String::new();
    for (count, c) in sentence.chars().enumerate() {
        if count == DETAIL_MAX {
            out.push_str(&format!("… ({} bytes)", sentence.len()));
            return out;
        }
        out.extend(c.escape_debug());
    }
    out
}

/// The audit record of a refused request: one `refuse` line with the
/// principal and the sentence it was sent. A refused request never became
/// a message (it has no id), so it is a refusal like any other: repeated
/// identical ones are counted by the audit writer rather than written one
/// by one (`audit::Aggregator`), so a client looping on a refused request
/// cannot flood the log.
fn refusal_record(principal: &str, code: &'static str, sentence: &str) -> Record {
    Record::new(Event::Refuse, Verdict::Deny, code)
        .subject(principal)
        .detail(bounded(sentence))
}

/// Audits a refused request and builds the `Refused` frame that answers it.
async fn refuse(
    shared: &Shared,
    principal: &Principal,
    request: u64,
    code: &'static str,
    sentence: String,
    marking: Option<String>,
) -> Frame {
    debug!(code, "request refused");
    let mut record = refusal_record(&principal.name, code, &sentence);
    record.marking = marking;
    shared.audit(record).await;
    refused(request, code, sentence)
}

/// Refuses a publish or subscription because the audit log cannot be
/// written: a publish would lead to release decisions nobody could
/// account for (invariant 7), and a subscription to deliveries. Its own
/// record is attempted like any other (the log may be back by the time
/// the writer tries), and identical ones are counted.
async fn refuse_unaudited(shared: &Shared, principal: &Principal, request: u64, cause: &str) -> Frame {
    let sentence = format!(
        "the node cannot write its audit log ({cause}); it accepts no publish or subscription until it can"
    );
    refuse(
        shared,
        principal,
        request,
        Reason::AuditUnavailable.code(),
        sentence,
        None,
    )
    .await
}

/// May-publish, then the unsigned envelope; or the refusal to send back,
/// audited.
async fn authorize(
    shared: &Shared,
    principal: &Principal,
    markings: &mut MarkingCache,
    request: u64,
    topic: String,
    marking: String,
    payload: Vec<u8>,
) -> Result<Accepted, Frame> {
    let topic = match Topic::new(topic) {
        Ok(topic) => topic,
        Err(err) => {
            let code = Reason::BadTopic.code();
            return Err(refuse(shared, principal, request, code, err.to_string(), None).await);
        }
    };
    let rules = shared.rules();
    let (label, canonical) = match markings.parse(rules.policy.scheme(), marking) {
        Ok(parsed) => parsed,
        Err(err) => {
            let code = Reason::BadMarking.code();
            return Err(refuse(shared, principal, request, code, err.to_string(), None).await);
        }
    };
    if payload.len() > MAX_PAYLOAD {
        let sentence = format!(
            "payload of {} bytes exceeds the limit of {MAX_PAYLOAD} bytes",
            payload.len()
        );
        let code = Reason::PayloadTooLarge.code();
        return Err(refuse(shared, principal, request, code, sentence, Some(canonical)).await);
    }
    if let Decision::Deny { reason, message } = rules.policy.may_publish(principal, &topic, &label) {
        return Err(refuse(
            shared,
            principal,
            request,
            reason.code(),
            message,
            Some(canonical),
        )
        .await);
    }
    let envelope = Envelope::from(Unsigned {
        id: shared.ids.next_id(),
        origin: shared.nation,
        publisher: principal.name.clone(),
        topic,
        released_to: rules.policy.release_set(shared.nation, &label),
        label,
        created_us: now_us(),
        payload,
    });
    let mut record =
        Record::new(Event::Publish, Verdict::Allow, Reason::PolicyAllows.code()).subject(&principal.name);
    record.marking = Some(canonical.clone());
    record.id = Some(envelope.id.to_string());
    Ok(Accepted {
        request,
        envelope,
        marking: canonical,
        record,
    })
}

/// Delivers each publish locally, hands it to the outboxes of this node's
/// children in its delivery tree (sealed together), and has them stored
/// (with `sync`) and then acknowledged (by `answer_when_stored`): an ack
/// means this node has custody.
async fn route_publishes(batch: &Batch<'_>, publishes: Vec<Accepted>) -> Result<(), StreamError> {
    let Batch {
        shared,
        to_answer,
        unanswered,
        ..
    } = *batch;
    if publishes.is_empty() {
        return Ok(());
    }
    // Each publish's own record first, then what became of it.
    let mut records = Vec::with_capacity(2 * publishes.len());
    let mut acks = Vec::with_capacity(publishes.len());
    let mut outgoing = Vec::new();
    let mut changes = Vec::new();
    let (routes, actions) = shared.router.core(|core, now| {
        publishes
            .iter()
            .map(|accepted| core.route(&accepted.envelope, Source::Local, SealState::Verified, now))
            .collect::<Vec<_>>()
    });
    let relayed_on = routes.iter().flatten().any(|route| route.relayed_on);
    for (
        Accepted {
            request,
            envelope,
            marking,
            record,
        },
        route,
    ) in publishes.into_iter().zip(routes)
    {
        records.push(record);
        acks.push(Frame::PublishAck {
            request,
            id: envelope.id,
        });
        // A local publish is never refused by the core: its checks are
        // for what arrives from peers.
        let Ok(route) = route else { continue };
        shared.router.deliver(
            &shared.durables,
            &envelope,
            &marking,
            &route.deliver,
            &mut changes,
            &mut records,
        );
        if !route.forward.is_empty()
            || !route.held.is_empty()
            || !route.denied.is_empty()
            || !route.unreached.is_empty()
        {
            outgoing.push(outbound::Outgoing {
                envelope,
                marking,
                forward: route.forward,
                held: route.held,
                denied: route.denied,
                unreached: route.unreached,
            });
        }
    }
    let unsealed = outbound::forward_batch(shared, outgoing, &mut changes, &mut records);
    // The deliveries and forwards go out before the sealer's leaf hashes,
    // the store, the acks and the records: none of them is on their way.
    super::let_writers_send().await;
    // Not while a child waits for this batch's seal to relay: the
    // signature would wait for the CPU it gave away.
    if !relayed_on {
        super::offer_cpu(acks.len());
    }
    outbound::seal_later(shared, unsealed).await;
    // An ack means the node has custody: with `sync`, on disk.
    let committed = shared.custody.submit(changes).await;
    // A batch larger than the whole allowance waits for all of it.
    let wanted = u32::try_from(acks.len())
        .unwrap_or(u32::MAX)
        .min(u32::try_from(ack_allowance(shared)).unwrap_or(u32::MAX));
    let room = unanswered.clone().acquire_many_owned(wanted).await.ok();
    let answered = to_answer
        .send(Stored {
            committed,
            acks,
            _room: room,
        })
        .await;
    // Audited even when the session is ending: what was routed is on its
    // way.
    // The core's records (deliveries it refused) after the publishes.
    let refused = shared.announce(actions);
    for record in records.into_iter().chain(refused) {
        shared.audit(record).await;
    }
    answered.map_err(|_| StreamError::Unexpected("publish after the session's end"))
}

/// Attaches the session to the principal's durable subscription `name`
/// (`keeps`), creating it on first use, and what waits for it follows the
/// ack; or to its watch `name`, whose count of what was missed is the
/// answer.
async fn subscribe_durable(
    batch: &Batch<'_>,
    request: u64,
    name: &str,
    pattern: String,
    keeps: bool,
) -> Frame {
    let Batch {
        shared,
        session,
        queue,
        principal,
        ..
    } = *batch;
    let pattern = match Pattern::new(pattern) {
        Ok(pattern) => pattern,
        Err(err) => {
            let code = Reason::BadPattern.code();
            return refuse(shared, principal, request, code, err.to_string(), None).await;
        }
    };
    match durable::attach(shared, principal, (name, &pattern, keeps), session, queue.clone()).await {
        Ok(_) if keeps => {
            info!(%pattern, name, "attached to a durable subscription");
            Frame::SubscribeAck { request }
        }
        Ok(missed) => Frame::Watched { request, missed },
        Err(err) => {
            let code = match &err {
                durable::AttachError::Durable(err) => err.code(),
                durable::AttachError::Refused((code, _)) => code,
                durable::AttachError::Store(_) => Reason::StoreFailed.code(),
            };
            let sentence = format!("durable subscription {name:?} to {pattern}: {err}");
            refuse(shared, principal, request, code, sentence, None).await
        }
    }
}

async fn subscribe(
    shared: &Shared,
    session: SessionId,
    principal: &Principal,
    request: u64,
    pattern: String,
) -> Frame {
    let pattern = match Pattern::new(pattern) {
        Ok(pattern) => pattern,
        Err(err) => {
            let code = Reason::BadPattern.code();
            return refuse(shared, principal, request, code, err.to_string(), None).await;
        }
    };
    let (result, actions) = shared
        .router
        .core(|core, now| core.subscribe(session, pattern.clone(), now));
    shared.carry_out(actions).await;
    match result {
        Ok(()) => {
            info!(%pattern, "subscribed");
            Frame::SubscribeAck { request }
        }
        Err(err) => {
            let sentence = err.to_string();
            shared
                .audit(refusal_record(
                    &principal.name,
                    err.code(),
                    &format!("subscribe to {pattern}: {sentence}"),
                ))
                .await;
            refused(request, err.code(), sentence)
        }
    }
}
