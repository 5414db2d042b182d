//! Emulated WAN links below QUIC: a UDP socket wrapper (quinn's
//! `AsyncUdpSocket`) that delays, jitters, drops and rate-limits each
//! datagram between two nodes by their link's character, so QUIC's own
//! loss recovery and congestion control run as they would on the WAN.
//!
//! Only datagrams between nodes are emulated: a client and its node are on
//! the same site, so their datagrams go straight through.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::scenario::{ordered, LinkParams};
use crate::label::Nation;

/// The most a link queues before it drops (tail drop), as time to send
/// what is queued: a router's buffer.
const MAX_QUEUEING: Duration = Duration::from_millis(100);
/// Datagrams in flight on one node's emulated links at once.
const DELAY_LINE_CAPACITY: usize = 1 << 16;

/// The emulated network: every node's address, every link's state.
pub struct Wan {
    state: Mutex<WanState>,
    delay_lines: DelayLines,
}

/// The thread the delay lines run on, with a runtime of its own: on the
/// nodes' runtime, a datagram's due time waited for every task ahead of
/// it (up to 41 ms late during a cut on two cores), and the simulator measured
/// that as the network's latency. Stops when the `Wan` is dropped.
struct DelayLines {
    runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl DelayLines {
    fn start() -> io::Result<DelayLines> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("wan-delay-lines".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(DelayLines {
            runtime: handle,
            _stop: stop,
        })
    }
}

struct WanState {
    nodes: HashMap<SocketAddr, Nation>,
    links: BTreeMap<(Nation, Nation), Link>,
    down_nodes: HashSet<Nation>,
    random: u64,
}

struct Link {
    params: LinkParams,
    up: bool,
    /// Per direction (from the first of the ordered pair, then back):
    /// when the sender finishes putting what is queued on the wire, and
    /// when the last datagram arrives, so jitter never reorders.
    busy_until: [Instant; 2],
    last_arrival: [Instant; 2],
    datagrams: u64,
    dropped: u64,
}

/// What happens to one datagram.
#[derive(Debug, PartialEq)]
enum Fate {
    /// Not between two nodes: send it now.
    Direct,
    /// Deliver it then.
    At(Instant),
    Drop,
}

impl Wan {
    /// A network of `links`, all up.
    pub fn new(links: &BTreeMap<(Nation, Nation), LinkParams>) -> io::Result<Arc<Wan>> {
        let now = Instant::now();
        Ok(Arc::new(Wan {
            state: Mutex::new(WanState {
                nodes: HashMap::new(),
                links: links
                    .iter()
                    .map(|(&key, &params)| {
                        let link = Link {
                            params,
                            up: true,
                            busy_until: [now; 2],
                            last_arrival: [now; 2],
                            datagrams: 0,
                            dropped: 0,
                        };
                        (key, link)
                    })
                    .collect(),
                down_nodes: HashSet::new(),
                random: 0x9E37_79B9_7F4A_7C15,
            }),
            delay_lines: DelayLines::start()?,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WanState> {
        // A panic elsewhere cannot leave the state half-changed: every
        // change is a single assignment.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records where `nation`'s node receives.
    pub fn register(&self, nation: Nation, addr: SocketAddr) {
        self.state().nodes.insert(addr, nation);
    }

    /// Takes a link down (every datagram on it dropped) or brings it up.
    /// Returns false if there is no such link.
    pub fn set_link_up(&self, a: Nation, b: Nation, up: bool) -> bool {
        match self.state().links.get_mut(&ordered(a, b)) {
            Some(link) => {
                link.up = up;
                true
            }
            None => false,
        }
    }

    /// Whether the link is up now.
    pub fn link_up(&self, a: Nation, b: Nation) -> bool {
        self.state().links.get(&ordered(a, b)).is_some_and(|link| link.up)
    }

    /// A crashed node neither sends nor receives on its links.
    pub fn set_node_up(&self, nation: Nation, up: bool) {
        let mut state = self.state();
        if up {
            state.down_nodes.remove(&nation);
        } else {
            state.down_nodes.insert(nation);
        }
    }

    /// Datagrams carried and dropped on a link, both ways.
    pub fn counts(&self, a: Nation, b: Nation) -> (u64, u64) {
        self.state()
            .links
            .get(&ordered(a, b))
            .map_or((0, 0), |link| (link.datagrams, link.dropped))
    }

    fn fate(&self, from: Nation, to: SocketAddr, len: usize, now: Instant) -> Fate {
        let mut state = self.state();
        let Some(&to) = state.nodes.get(&to) else {
            return Fate::Direct;
        };
        let (key, direction) = if from <= to {
            ((from, to), 0)
        } else {
            ((to, from), 1)
        };
        let nodes_down = state.down_nodes.contains(&from) || state.down_nodes.contains(&to);
        let draw = state.next_unit();
        let jitter_draw = state.next_unit();
        let Some(link) = state.links.get_mut(&key) else {
            // Nodes that are not linked in the network file do not talk.
            return Fate::Drop;
        };
        link.datagrams += 1;
        if !link.up || nodes_down || draw < link.params.loss {
            link.dropped += 1;
            return Fate::Drop;
        }
        let start = link.busy_until[direction].max(now);
        if start - now > MAX_QUEUEING {
            link.dropped += 1;
            return Fate::Drop;
        }
        let on_the_wire = Duration::from_secs_f64(len as f64 * 8.0 / link.params.bandwidth_bps);
        link.busy_until[direction] = start + on_the_wire;
        let arrival =
            link.busy_until[direction] + link.params.delay + link.params.jitter.mul_f64(jitter_draw);
        let arrival = arrival.max(link.last_arrival[direction]);
        link.last_arrival[direction] = arrival;
        Fate::At(arrival)
    }

    /// Wraps `inner`, the UDP socket of `nation`'s node. Its delay line
    /// runs on the WAN's own thread.
    pub fn socket(self: &Arc<Self>, nation: Nation, inner: Arc<dyn AsyncUdpSocket>) -> Arc<EmulatedSocket> {
        let (delay_line, queued) = mpsc::channel(DELAY_LINE_CAPACITY);
        self.delay_lines
            .runtime
            .spawn(run_delay_line(inner.clone(), queued));
        Arc::new(EmulatedSocket {
            nation,
            inner,
            wan: self.clone(),
            delay_line,
            crashed: AtomicBool::new(false),
        })
    }
}

impl WanState {
    /// A uniform draw in `0..1` (xorshift64*): fast, and good enough to
    /// decide losses and jitter.
    fn next_unit(&mut self) -> f64 {
        let mut x = self.random;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A datagram waiting for its arrival time.
struct Delayed {
    at: Instant,
    destination: SocketAddr,
    contents: Vec<u8>,
}

async fn run_delay_line(socket: Arc<dyn AsyncUdpSocket>, mut queued: mpsc::Receiver<Delayed>) {
    let mut waiting: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut contents: HashMap<u64, (SocketAddr, Vec<u8>)> = HashMap::new();
    let mut next_id = 0u64;
    let mut poller = socket.clone().create_io_poller();
    loop {
        let next_due = waiting.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            delayed = queued.recv() => match delayed {
                Some(delayed) => {
                    waiting.push(Reverse((delayed.at, next_id)));
                    contents.insert(next_id, (delayed.destination, delayed.contents));
                    next_id += 1;
                }
                None if waiting.is_empty() => return,
                None => {}
            },
            () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                while let Some(&Reverse((at, id))) = waiting.peek() {
                    if at > now {
                        break;
                    }
                    waiting.pop();
                    let Some((destination, bytes)) = contents.remove(&id) else { continue };
                    let transmit = Transmit {
                        destination,
                        ecn: None,
                        contents: &bytes,
                        segment_size: None,
                        src_ip: None,
                    };
                    loop {
                        match socket.try_send(&transmit) {
                            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                                if std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await.is_err() {
                                    break;
                                }
                            }
                            // A send that fails is a lost datagram, as on
                            // a real network.
                            _ => break,
                        }
                    }
                }
            }
        }
    }
}

/// A node's UDP socket, with its datagrams to other nodes passed through
/// the emulated WAN.
pub struct EmulatedSocket {
    nation: Nation,
    inner: Arc<dyn AsyncUdpSocket>,
    wan: Arc<Wan>,
    delay_line: mpsc::Sender<Delayed>,
    crashed: AtomicBool,
}

impl fmt::Debug for EmulatedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatedSocket")
            .field("nation", &self.nation)
            .field("crashed", &self.crashed.load(Ordering::Relaxed))
            .finish()
    }
}

impl EmulatedSocket {
    /// The real socket below, which a restarted node wraps again.
    pub fn inner(&self) -> Arc<dyn AsyncUdpSocket> {
        self.inner.clone()
    }

    /// Emulates a crash: from now on this socket sends nothing and its
    /// endpoint receives nothing, so the old node is gone at once, without
    /// a close, while the real socket stays bound for the restart.
    pub fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }
}

impl AsyncUdpSocket for EmulatedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.crashed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = Instant::now();
        match self
            .wan
            .fate(self.nation, transmit.destination, transmit.contents.len(), now)
        {
            Fate::Direct => self.inner.try_send(transmit),
            Fate::Drop => Ok(()),
            Fate::At(at) => {
                // A full delay line drops, like a full router queue.
                let _ = self.delay_line.try_send(Delayed {
                    at,
                    destination: transmit.destination,
                    contents: transmit.contents.to_vec(),
                });
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.crashed.load(Ordering::Relaxed) {
            // The crashed node's endpoint never hears anything again; the
            // restarted node's socket reads the real socket instead.
            return Poll::Pending;
        }
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    // One datagram per transmit, so each is delayed and dropped on its own.
    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nation(code: &str) -> Nation {
        Nation::parse(code).unwrap()
    }

    fn wan(params: LinkParams) -> (Arc<Wan>, SocketAddr) {
        let mut links = BTreeMap::new();
        links.insert(ordered(nation("GBR"), nation("FRA")), params);
        let wan = Wan::new(&links).unwrap();
        let fra: SocketAddr = "127.0.0.1:9".parse().unwrap();
        wan.register(nation("FRA"), fra);
        (wan, fra)
    }

    const TEN_MS: LinkParams = LinkParams {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(2),
        loss: 0.0,
        bandwidth_bps: 8_000_000.0,
    };

    #[tokio::test]
    async fn a_datagram_arrives_no_sooner_than_the_delay_plus_its_time_on_the_wire() {
        let (wan, fra) = wan(TEN_MS);
        let now = Instant::now();
        // 1000 bytes at 8 Mbit/s take 1 ms on the wire.
        let Fate::At(at) = wan.fate(nation("GBR"), fra, 1000, now) else {
            panic!("not delayed")
        };
        assert!(at - now >= Duration::from_millis(11), "{:?}", at - now);
        assert!(at - now <= Duration::from_millis(13), "{:?}", at - now);
    }

    #[tokio::test]
    async fn jitter_never_reorders_and_bandwidth_queues() {
        let (wan, fra) = wan(TEN_MS);
        let now = Instant::now();
        let mut last = now;
        for _ in 0..50 {
            let Fate::At(at) = wan.fate(nation("GBR"), fra, 1000, now) else {
                panic!("not delayed")
            };
            assert!(at >= last);
            last = at;
        }
        // 50 ms of data sent at once: the last arrives after 10 ms + 50 ms.
        assert!(last - now >= Duration::from_millis(60), "{:?}", last - now);
    }

    #[tokio::test]
    async fn a_full_queue_a_down_link_and_a_crashed_node_drop() {
        let (wan, fra) = wan(TEN_MS);
        let now = Instant::now();
        // 100 ms of queue holds 100 datagrams of 1000 bytes, not 200.
        let dropped = (0..200)
            .filter(|_| wan.fate(nation("GBR"), fra, 1000, now) == Fate::Drop)
            .count();
        assert!((90..=110).contains(&dropped), "{dropped}");
        let later = now + Duration::from_secs(1);
        assert!(matches!(wan.fate(nation("GBR"), fra, 10, later), Fate::At(_)));
        wan.set_link_up(nation("GBR"), nation("FRA"), false);
        assert_eq!(wan.fate(nation("GBR"), fra, 10, later), Fate::Drop);
        wan.set_link_up(nation("FRA"), nation("GBR"), true);
        wan.set_node_up(nation("FRA"), false);
        assert_eq!(wan.fate(nation("GBR"), fra, 10, later), Fate::Drop);
        wan.set_node_up(nation("FRA"), true);
        assert!(matches!(wan.fate(nation("GBR"), fra, 10, later), Fate::At(_)));
    }

    #[tokio::test]
    async fn loss_drops_about_its_share_and_clients_go_direct() {
        let (wan, fra) = wan(LinkParams {
            loss: 0.1,
            bandwidth_bps: 1e12,
            ..TEN_MS
        });
        let now = Instant::now();
        let dropped = (0..10_000)
            .filter(|_| wan.fate(nation("GBR"), fra, 100, now) == Fate::Drop)
            .count();
        assert!((800..1200).contains(&dropped), "{dropped}");
        let client: SocketAddr = "127.0.0.1:10".parse().unwrap();
        assert_eq!(wan.fate(nation("GBR"), client, 100, now), Fate::Direct);
    }
}
