use alloc::vec;
use alloc::vec::Vec;

use crate::ring::{offsets, NotifyFn, RingPage, Side, StoreRing, XENSTORE_RING_SIZE};
use crate::transport::{Transport, TransportError, Wait};

fn noop() -> NotifyFn<fn()> {
    NotifyFn((|| {}) as fn())
}

/// A guest end and a server end on one page, indices starting at `start`.
type End = StoreRing<NotifyFn<fn()>>;

fn pair(page: &RingPage, start: u32) -> (End, End) {
    for off in [
        offsets::REQ_CONS,
        offsets::REQ_PROD,
        offsets::RSP_CONS,
        offsets::RSP_PROD,
    ] {
        page.write_u32(off, start);
    }
    // SAFETY: the page is 4096 bytes, page-aligned, outlives both ends,
    // and is only accessed through raw volatile/atomic accesses.
    let guest = unsafe { StoreRing::new(page.as_ptr(), Side::Guest, noop()) };
    // SAFETY: as above.
    let server = unsafe { StoreRing::new(page.as_ptr(), Side::Server, noop()) };
    (guest, server)
}

fn pump(from: &mut impl Transport, to: &mut impl Transport, data: &[u8]) -> Vec<u8> {
    // Send all of `data` through a 1 KiB ring, draining the other end as
    // we go.
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 300];
    let mut rounds = 0;
    while got.len() < data.len() {
        rounds += 1;
        assert!(rounds < 10_000, "no progress");
        if sent < data.len() {
            sent += from.send(&data[sent..], Wait::NoWait).unwrap();
        }
        let n = to.recv(&mut buf, Wait::NoWait).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn bytes_flow_both_ways_with_wrap_around() {
    let page = RingPage::new().unwrap();
    // Start near the u32 wrap so the free-running indices overflow.
    let (mut guest, mut server) = pair(&page, u32::MAX - 700);
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(pump(&mut guest, &mut server, &data), data);
    assert_eq!(pump(&mut server, &mut guest, &data), data);
    // The page's indices moved past the wrap.
    assert_eq!(
        page.read_u32(offsets::REQ_PROD),
        (u32::MAX - 700).wrapping_add(5000)
    );
    assert_eq!(
        page.read_u32(offsets::REQ_CONS),
        page.read_u32(offsets::REQ_PROD)
    );
}

#[test]
fn send_stops_when_full_and_resumes() {
    let page = RingPage::new().unwrap();
    let (mut guest, mut server) = pair(&page, 0);
    let data = vec![0xabu8; 3000];
    assert_eq!(guest.send(&data, Wait::NoWait).unwrap(), XENSTORE_RING_SIZE);
    assert_eq!(
        guest.send(&data, Wait::NoWait).unwrap(),
        0,
        "full ring accepts nothing"
    );
    // A waiting send with a signal that cannot block gives up at once.
    assert_eq!(
        guest
            .send(&data, Wait::For(core::time::Duration::from_millis(1)))
            .unwrap(),
        0
    );
    let mut buf = [0u8; 100];
    assert_eq!(server.recv(&mut buf, Wait::NoWait).unwrap(), 100);
    assert_eq!(guest.send(&data, Wait::NoWait).unwrap(), 100);
}

#[test]
fn recv_on_empty_ring_returns_zero() {
    let page = RingPage::new().unwrap();
    let (mut guest, _server) = pair(&page, 5);
    let mut buf = [0u8; 16];
    assert_eq!(guest.recv(&mut buf, Wait::NoWait).unwrap(), 0);
    assert_eq!(
        guest.recv(&mut buf, Wait::Forever).unwrap(),
        0,
        "NotifyFn cannot block"
    );
}

#[test]
fn hostile_rsp_prod_breaks_the_guest_end_for_good() {
    let page = RingPage::new().unwrap();
    let (mut guest, _server) = pair(&page, 100);
    // More than a ring's worth "available".
    page.write_u32(offsets::RSP_PROD, 100 + XENSTORE_RING_SIZE as u32 + 1);
    let mut buf = [0u8; 16];
    let err = guest.recv(&mut buf, Wait::NoWait).unwrap_err();
    assert!(matches!(err, TransportError::PeerFault { .. }), "{err:?}");
    // Even after the peer "fixes" it, the end stays broken.
    page.write_u32(offsets::RSP_PROD, 100);
    assert!(guest.recv(&mut buf, Wait::NoWait).is_err());
    assert!(guest.send(b"x", Wait::NoWait).is_err());
    assert!(guest.broken().is_some());
}

#[test]
fn hostile_rsp_prod_behind_cons_is_a_fault() {
    let page = RingPage::new().unwrap();
    let (mut guest, _server) = pair(&page, 100);
    page.write_u32(offsets::RSP_PROD, 99);
    let mut buf = [0u8; 16];
    assert!(matches!(
        guest.recv(&mut buf, Wait::NoWait),
        Err(TransportError::PeerFault { .. })
    ));
}

#[test]
fn hostile_req_cons_is_a_fault() {
    let page = RingPage::new().unwrap();
    let (mut guest, _server) = pair(&page, 0);
    assert_eq!(guest.send(b"hello", Wait::NoWait).unwrap(), 5);
    // Consumer ahead of our producer.
    page.write_u32(offsets::REQ_CONS, 6);
    assert!(matches!(
        guest.send(b"x", Wait::NoWait),
        Err(TransportError::PeerFault { .. })
    ));
}

#[test]
fn exactly_a_ring_of_data_is_accepted() {
    let page = RingPage::new().unwrap();
    let (mut guest, _server) = pair(&page, 42);
    // The server claims a full ring of replies: legal.
    page.write_u32(offsets::RSP_PROD, 42 + XENSTORE_RING_SIZE as u32);
    let mut buf = vec![0u8; 2 * XENSTORE_RING_SIZE];
    assert_eq!(
        guest.recv(&mut buf, Wait::NoWait).unwrap(),
        XENSTORE_RING_SIZE
    );
}

#[test]
fn scribbled_own_index_is_ignored() {
    let page = RingPage::new().unwrap();
    let (mut guest, mut server) = pair(&page, 0);
    assert_eq!(guest.send(b"abc", Wait::NoWait).unwrap(), 3);
    // The peer overwrites *our* producer index; we keep our private copy.
    page.write_u32(offsets::REQ_PROD, 900);
    let mut buf = [0u8; 16];
    // The server end believes the page (that is the server's problem) ...
    let _ = server.recv(&mut buf, Wait::NoWait);
    // ... the guest keeps producing from its own index.
    page.write_u32(offsets::REQ_CONS, 3);
    assert_eq!(guest.send(b"de", Wait::NoWait).unwrap(), 2);
    assert_eq!(page.read_u32(offsets::REQ_PROD), 5);
}

#[test]
fn guest_discards_stale_replies_on_attach() {
    let page = RingPage::new().unwrap();
    page.write_u32(offsets::RSP_CONS, 10);
    page.write_u32(offsets::RSP_PROD, 30);
    // SAFETY: as in `pair`.
    let mut guest = unsafe { StoreRing::new(page.as_ptr(), Side::Guest, noop()) };
    assert_eq!(page.read_u32(offsets::RSP_CONS), 30);
    let mut buf = [0u8; 64];
    assert_eq!(guest.recv(&mut buf, Wait::NoWait).unwrap(), 0);
}

#[test]
fn reconnecting_server_is_reported() {
    let page = RingPage::new().unwrap();
    let (mut guest, _server) = pair(&page, 0);
    page.write_u32(
        offsets::SERVER_FEATURES,
        crate::ring::XENSTORE_SERVER_FEATURE_RECONNECTION,
    );
    page.write_u32(offsets::CONNECTION, crate::ring::XENSTORE_RECONNECT);
    assert_eq!(
        guest.send(b"x", Wait::NoWait),
        Err(TransportError::Reconnecting)
    );
    page.write_u32(offsets::CONNECTION, crate::ring::XENSTORE_CONNECTED);
    assert_eq!(guest.send(b"x", Wait::NoWait), Ok(1));
}

/// A peer that signals constantly and never writes: every wait "succeeds"
/// at once and advances a fake clock by `step`.
struct Storm {
    now: alloc::sync::Arc<core::sync::atomic::AtomicU64>,
    step_ns: u64,
    wakes: u32,
}

impl crate::ring::RingSignal for Storm {
    fn notify(&mut self) -> Result<(), TransportError> {
        Ok(())
    }
    fn wait(&mut self, _wait: Wait) -> Result<bool, TransportError> {
        self.wakes += 1;
        assert!(self.wakes < 100_000, "a timed call sat through a storm without end");
        self.now
            .fetch_add(self.step_ns, core::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }
}

#[test]
fn a_signal_storm_without_bytes_cannot_hold_a_timed_receive() {
    use core::sync::atomic::{AtomicU64, Ordering};
    use core::time::Duration;

    let page = RingPage::new().unwrap();
    let now = alloc::sync::Arc::new(AtomicU64::new(0));
    let storm = Storm {
        now: now.clone(),
        step_ns: 1_000_000,
        wakes: 0,
    };
    // SAFETY: as in `pair`.
    let mut guest = unsafe { StoreRing::new(page.as_ptr(), Side::Guest, storm) };
    let clock = now.clone();
    guest.set_clock(move || Duration::from_nanos(clock.load(Ordering::Relaxed)));
    let mut buf = [0u8; 16];
    // With a clock: the call ends at its deadline (5 s of 1 ms wakes).
    assert_eq!(guest.recv(&mut buf, Wait::For(Duration::from_secs(5))), Ok(0));
    let spent = now.load(Ordering::Relaxed);
    assert!(
        (5_000_000_000..5_002_000_000).contains(&spent),
        "ended after {spent} ns of fake time"
    );
    assert_eq!(guest.send(&[], Wait::For(Duration::from_secs(1))), Ok(0));

    // Without a clock: a bounded number of empty wake-ups per call.
    let page = RingPage::new().unwrap();
    let storm = Storm {
        now: alloc::sync::Arc::new(AtomicU64::new(0)),
        step_ns: 1,
        wakes: 0,
    };
    // SAFETY: as in `pair`.
    let mut guest = unsafe { StoreRing::new(page.as_ptr(), Side::Guest, storm) };
    assert_eq!(guest.recv(&mut buf, Wait::For(Duration::from_secs(5))), Ok(0));
    // Fill the request ring so that a send has to wait too.
    let big = vec![0u8; XENSTORE_RING_SIZE];
    assert_eq!(guest.send(&big, Wait::NoWait), Ok(XENSTORE_RING_SIZE));
    assert_eq!(guest.send(b"x", Wait::For(Duration::from_secs(5))), Ok(0));
}
