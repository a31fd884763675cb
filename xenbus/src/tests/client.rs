//! The client over a ring page, against a scripted server run
//! synchronously from the guest's notifications.

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::client::{Xenstore, XsError, MAX_TRANSACTION_ATTEMPTS};
use crate::ring::{NotifyFn, RingPage, Side, StoreRing};
use crate::transport::{Transport, Wait};
use crate::wire::{join_strings, Decoder, Errno, Message, MsgType};

type Handler = Box<dyn FnMut(&Message) -> Vec<Message>>;

struct Server {
    ring: StoreRing<NotifyFn<fn()>>,
    decoder: Decoder,
    pending: Vec<u8>,
    handler: Handler,
    requests: Vec<Message>,
}

impl Server {
    fn service(&mut self) {
        let mut buf = [0u8; 512];
        loop {
            let n = self.ring.recv(&mut buf, Wait::NoWait).unwrap();
            if n == 0 {
                break;
            }
            let mut input = &buf[..n];
            while !input.is_empty() {
                if let Some(m) = self.decoder.decode(&mut input).unwrap() {
                    for out in (self.handler)(&m) {
                        out.encode_into(&mut self.pending);
                    }
                    self.requests.push(m);
                }
            }
        }
        let sent = self.ring.send(&self.pending, Wait::NoWait).unwrap();
        self.pending.drain(..sent);
    }
}

struct Rig {
    _page: RingPage,
    server: Rc<RefCell<Server>>,
}

type GuestRing = StoreRing<NotifyFn<Box<dyn FnMut()>>>;

fn rig(handler: impl FnMut(&Message) -> Vec<Message> + 'static) -> (Rig, Xenstore<GuestRing>) {
    let page = RingPage::new().unwrap();
    // SAFETY: the page is 4096 bytes, page-aligned, outlives both ends (the
    // rig holds it and is dropped after the client in every test), and is
    // only accessed through raw volatile/atomic accesses.
    let server_ring =
        unsafe { StoreRing::init_server(page.as_ptr(), 0, NotifyFn((|| {}) as fn())) };
    let server = Rc::new(RefCell::new(Server {
        ring: server_ring,
        decoder: Decoder::new(),
        pending: Vec::new(),
        handler: Box::new(handler),
        requests: Vec::new(),
    }));
    let s2 = Rc::clone(&server);
    let notify: Box<dyn FnMut()> = Box::new(move || s2.borrow_mut().service());
    // SAFETY: as above.
    let guest = unsafe { StoreRing::new(page.as_ptr(), Side::Guest, NotifyFn(notify)) };
    (
        Rig {
            _page: page,
            server,
        },
        Xenstore::new(guest),
    )
}

fn reply(req: &Message, payload: &[u8]) -> Message {
    Message::new(req.msg_type, req.req_id, req.tx_id, payload.to_vec()).unwrap()
}

fn error(req: &Message, e: Errno) -> Message {
    Message::new(
        MsgType::Error,
        req.req_id,
        req.tx_id,
        join_strings(&[e.name()]),
    )
    .unwrap()
}

fn event(path: &str, token: &str) -> Message {
    Message::new(MsgType::WatchEvent, 0, 0, join_strings(&[path, token])).unwrap()
}

#[test]
fn read_write_and_errors() {
    let (rig, mut xs) = rig(|m| match m.msg_type {
        MsgType::Read if m.payload == b"/a\0" => vec![reply(m, b"hello")],
        MsgType::Read => vec![error(m, Errno::ENOENT)],
        MsgType::Write => vec![reply(m, b"OK\0")],
        _ => vec![error(m, Errno::ENOSYS)],
    });
    assert_eq!(xs.read("/a").unwrap(), b"hello");
    assert_eq!(xs.read_string("/a").unwrap(), "hello");
    let err = xs.read("/b").unwrap_err();
    assert!(err.is_not_found());
    assert!(matches!(&err, XsError::Refused { path, errno: Errno::ENOENT, .. } if path == "/b"));
    assert!(err.to_string().contains("ENOENT"));
    assert_eq!(xs.try_read("/b").unwrap(), None);
    xs.write("/c", b"v\0with nul").unwrap();
    let reqs = &rig.server.borrow().requests;
    let w = reqs.iter().find(|m| m.msg_type == MsgType::Write).unwrap();
    assert_eq!(w.payload, b"/c\0v\0with nul");
    // Request ids increase.
    assert!(reqs.windows(2).all(|p| p[1].req_id == p[0].req_id + 1));
}

#[test]
fn bad_arguments_never_reach_the_wire() {
    let (rig, mut xs) = rig(|m| vec![reply(m, b"OK\0")]);
    assert!(matches!(xs.read("/a//b"), Err(XsError::BadArgument { .. })));
    assert!(matches!(xs.read("/a b"), Err(XsError::BadArgument { .. })));
    assert!(matches!(
        xs.read("@releaseDomain"),
        Err(XsError::BadArgument { .. })
    ));
    assert!(matches!(
        xs.write("/a", vec![0u8; 5000]),
        Err(XsError::BadArgument { .. })
    ));
    assert!(matches!(
        xs.watch("@nonsense", "t"),
        Err(XsError::BadArgument { .. })
    ));
    assert!(rig.server.borrow().requests.is_empty());
}

#[test]
fn watch_events_interleaved_with_replies_are_queued() {
    let (_rig, mut xs) = rig(|m| match m.msg_type {
        MsgType::Watch => vec![reply(m, b"OK\0"), event("/w", "t1")],
        MsgType::Read => vec![
            event("/w/x", "t1"),
            event("/other", "t2"),
            reply(m, b"v"),
            event("/w/y", "t1"),
        ],
        _ => vec![error(m, Errno::ENOSYS)],
    });
    xs.watch("/w", "t1").unwrap();
    assert_eq!(xs.read("/w/x").unwrap(), b"v");
    // Events that came with the replies, in order.
    assert_eq!(xs.take_event_for("t2").unwrap().path, "/other");
    let mut paths = Vec::new();
    while let Some(e) = xs.take_event_for("t1") {
        paths.push(e.path);
    }
    // The event after the last reply is still on the ring.
    assert_eq!(paths, ["/w", "/w/x"]);
    assert_eq!(xs.pump().unwrap(), 1);
    assert_eq!(xs.take_event().unwrap().path, "/w/y");
    assert!(xs.wait_event(Wait::NoWait).unwrap().is_none());
}

#[test]
fn transaction_retries_on_eagain() {
    let mut ends = 0;
    let (rig, mut xs) = rig(move |m| match m.msg_type {
        MsgType::TransactionStart => vec![reply(m, b"17\0")],
        MsgType::TransactionEnd => {
            ends += 1;
            if ends < 3 {
                vec![error(m, Errno::EAGAIN)]
            } else {
                vec![reply(m, b"OK\0")]
            }
        }
        MsgType::Read => vec![reply(m, b"1")],
        MsgType::Write => vec![reply(m, b"OK\0")],
        _ => vec![error(m, Errno::ENOSYS)],
    });
    let mut runs = 0;
    let v = xs
        .transaction(|tx| {
            runs += 1;
            let v = tx.read("/counter")?;
            tx.write("/counter", b"2")?;
            Ok(v)
        })
        .unwrap();
    assert_eq!(v, b"1");
    assert_eq!(runs, 3);
    // Every operation carried the transaction id.
    let s = rig.server.borrow();
    assert!(s
        .requests
        .iter()
        .filter(|m| m.msg_type == MsgType::Write)
        .all(|m| m.tx_id == 17));
}

#[test]
fn transaction_gives_up_after_bounded_conflicts() {
    let (_rig, mut xs) = rig(|m| match m.msg_type {
        MsgType::TransactionStart => vec![reply(m, b"5\0")],
        MsgType::TransactionEnd => vec![error(m, Errno::EAGAIN)],
        _ => vec![reply(m, b"OK\0")],
    });
    let mut runs = 0;
    let err = xs.transaction(|_| {
        runs += 1;
        Ok(())
    });
    assert_eq!(
        err,
        Err(XsError::TooManyConflicts {
            attempts: MAX_TRANSACTION_ATTEMPTS
        })
    );
    assert_eq!(runs, MAX_TRANSACTION_ATTEMPTS);
}

#[test]
fn failing_closure_aborts_the_transaction() {
    let (rig, mut xs) = rig(|m| match m.msg_type {
        MsgType::TransactionStart => vec![reply(m, b"9\0")],
        MsgType::Read => vec![error(m, Errno::EACCES)],
        _ => vec![reply(m, b"OK\0")],
    });
    let err = xs.transaction(|tx| tx.read("/secret")).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EACCES));
    let s = rig.server.borrow();
    let end = s
        .requests
        .iter()
        .find(|m| m.msg_type == MsgType::TransactionEnd)
        .unwrap();
    assert_eq!((end.tx_id, end.payload.as_slice()), (9, &b"F\0"[..]));
}

#[test]
fn wrong_reply_type_breaks_the_connection() {
    let (_rig, mut xs) =
        rig(|m| vec![Message::new(MsgType::Directory, m.req_id, 0, b"x\0".to_vec()).unwrap()]);
    assert!(matches!(xs.read("/a"), Err(XsError::Protocol { .. })));
    assert!(matches!(xs.read("/a"), Err(XsError::Broken { .. })));
    assert!(xs.broken().is_some());
}

#[test]
fn stale_replies_are_dropped() {
    let (_rig, mut xs) = rig(|m| {
        vec![
            Message::new(MsgType::Read, m.req_id.wrapping_sub(1), 0, b"old".to_vec()).unwrap(),
            reply(m, b"new"),
        ]
    });
    assert_eq!(xs.read("/a").unwrap(), b"new");
}

#[test]
fn unknown_error_name_is_a_refusal() {
    let (_rig, mut xs) =
        rig(|m| vec![Message::new(MsgType::Error, m.req_id, 0, b"EWEIRD\0".to_vec()).unwrap()]);
    let err = xs.read("/a").unwrap_err();
    let Some(errno @ Errno::Unknown(name)) = err.errno() else {
        panic!("{err:?}");
    };
    assert_eq!(name.as_str(), "EWEIRD");
    assert_eq!(errno.name(), "EWEIRD");
    assert_eq!(errno.code(), 22, "EINVAL, as Linux maps unknown names");
    assert!(!err.is_fatal());
    assert!(err.to_string().contains("EWEIRD"), "{err}");
    assert!(xs.broken().is_none());
}

#[test]
fn a_quota_error_keeps_the_connection_usable() {
    // oxenstored answers EQUOTA when a domain's quota is hit; the next
    // request on the same connection must still work.
    let mut full = true;
    let (_rig, mut xs) = rig(move |m| match m.msg_type {
        MsgType::Write if full => {
            full = false;
            vec![Message::new(MsgType::Error, m.req_id, 0, b"EQUOTA\0".to_vec()).unwrap()]
        }
        MsgType::Write => vec![reply(m, b"OK\0")],
        MsgType::Read => vec![reply(m, b"v")],
        _ => vec![error(m, Errno::ENOSYS)],
    });
    let err = xs.write("/a", "v").unwrap_err();
    assert!(
        matches!(&err, XsError::Refused { errno: Errno::EQUOTA, path, .. } if path == "/a"),
        "{err:?}"
    );
    assert!(!err.is_fatal());
    assert!(err.to_string().contains("quota"), "{err}");
    assert!(xs.broken().is_none());
    xs.write("/a", "v").unwrap();
    assert_eq!(xs.read("/a").unwrap(), b"v");
}

#[test]
fn long_or_binary_error_names_are_kept_bounded() {
    let mut name = vec![b'E'; 3000];
    name[1] = 0xff;
    name[2] = b'\n';
    name.push(0);
    let (_rig, mut xs) = rig(move |m| match m.msg_type {
        MsgType::Read if m.payload == b"/a\0" => {
            vec![Message::new(MsgType::Error, m.req_id, 0, name.clone()).unwrap()]
        }
        _ => vec![reply(m, b"w")],
    });
    let errno = xs.read("/a").unwrap_err().errno().unwrap();
    assert_eq!(errno.name(), "E??EEEEEEEEEEEEE");
    assert_eq!(errno.name().len(), crate::wire::UnknownErrno::MAX_LEN);
    assert_eq!(xs.read("/b").unwrap(), b"w");
}

#[test]
fn replies_larger_than_the_ring_arrive_whole() {
    let big: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let big2 = big.clone();
    let (_rig, mut xs) = rig(move |m| vec![event("/e", "t"), reply(m, &big2), event("/f", "t")]);
    assert_eq!(xs.read("/big").unwrap(), big);
    assert_eq!(xs.read("/big").unwrap(), big);
    assert_eq!(xs.take_event().unwrap().path, "/e");
}

#[test]
fn no_reply_times_out() {
    let (_rig, mut xs) = rig(|_| Vec::new());
    assert!(matches!(xs.read("/a"), Err(XsError::TimedOut { .. })));
    // The connection is still usable (a late reply would be dropped).
    assert!(xs.broken().is_none());
}

#[test]
fn directory_falls_back_to_parts() {
    let names: Vec<alloc::string::String> = (0..600)
        .map(|i| alloc::format!("child-number-{i}"))
        .collect();
    let all = join_strings(&names);
    let names2 = names.clone();
    let (_rig, mut xs) = rig(move |m| match m.msg_type {
        MsgType::Directory => vec![error(m, Errno::E2BIG)],
        MsgType::DirectoryPart => {
            let parts = m.strings().unwrap();
            let off: usize = core::str::from_utf8(parts[1]).unwrap().parse().unwrap();
            let mut out = b"7\0".to_vec();
            let rest = &all[off.min(all.len())..];
            let mut len = 0;
            for n in rest.split_inclusive(|&b| b == 0) {
                if len + n.len() > 1000 {
                    break;
                }
                len += n.len();
            }
            out.extend_from_slice(&rest[..len]);
            if off + len >= all.len() {
                out.push(0);
            }
            vec![reply(m, &out)]
        }
        _ => vec![error(m, Errno::ENOSYS)],
    });
    assert_eq!(xs.directory("/big").unwrap(), names2);
}

#[test]
fn unwatch_drops_only_that_watchs_queued_events() {
    let (_rig, mut xs) = rig(|m| match m.msg_type {
        MsgType::Watch | MsgType::Unwatch => vec![reply(m, b"OK\0")],
        MsgType::Read => vec![
            event("/a/x", "t"),
            event("/b/y", "t"),
            event("/a", "u"),
            reply(m, b"v"),
        ],
        _ => vec![error(m, Errno::ENOSYS)],
    });
    xs.read("/r").unwrap();
    assert_eq!(xs.queued_events(), 3);
    xs.unwatch("/a", "t").unwrap();
    assert_eq!(xs.take_event().unwrap().path, "/b/y");
    assert_eq!(xs.take_event().unwrap().token, "u");
    assert!(xs.take_event().is_none());
}

#[test]
fn a_transaction_started_too_late_is_aborted() {
    let mut first = true;
    let (rig, mut xs) = rig(move |m| match m.msg_type {
        // The first start gets no reply in time ...
        MsgType::TransactionStart if first => {
            first = false;
            Vec::new()
        }
        // ... and arrives late, just before the next reply.
        MsgType::Read if m.payload == b"/a\0" => vec![
            Message::new(MsgType::TransactionStart, m.req_id - 1, 0, b"5\0".to_vec()).unwrap(),
            reply(m, b"v"),
        ],
        MsgType::Read => vec![reply(m, b"w")],
        MsgType::TransactionEnd => vec![reply(m, b"OK\0")],
        _ => vec![error(m, Errno::ENOSYS)],
    });
    assert!(matches!(
        xs.transaction_start(),
        Err(XsError::TimedOut { .. })
    ));
    assert_eq!(xs.read("/a").unwrap(), b"v");
    assert_eq!(xs.read("/b").unwrap(), b"w");
    let s = rig.server.borrow();
    let end = s
        .requests
        .iter()
        .find(|m| m.msg_type == MsgType::TransactionEnd)
        .expect("an abort");
    assert_eq!((end.tx_id, end.payload.as_slice()), (5, &b"F\0"[..]));
}

/// A daemon that never answers but sends something just before every wait
/// would run out, advancing a fake clock by the time each wait "took".
struct Stalling {
    now: alloc::sync::Arc<core::sync::atomic::AtomicU64>,
    /// What one wait delivers: a whole watch event, or one byte of one.
    trickle: bool,
    pending: Vec<u8>,
    waits: u32,
}

impl Stalling {
    fn new(trickle: bool) -> Self {
        Stalling {
            now: alloc::sync::Arc::new(core::sync::atomic::AtomicU64::new(0)),
            trickle,
            pending: Vec::new(),
            waits: 0,
        }
    }

    fn clock(&self) -> impl Fn() -> core::time::Duration + Send + Sync + 'static {
        let now = alloc::sync::Arc::clone(&self.now);
        move || {
            core::time::Duration::from_nanos(now.load(core::sync::atomic::Ordering::SeqCst))
        }
    }
}

impl Transport for Stalling {
    fn send(
        &mut self,
        data: &[u8],
        _wait: Wait,
    ) -> Result<usize, crate::transport::TransportError> {
        Ok(data.len())
    }

    fn recv(
        &mut self,
        buf: &mut [u8],
        wait: Wait,
    ) -> Result<usize, crate::transport::TransportError> {
        let Wait::For(d) = wait else {
            // Nothing is ready without waiting.
            return Ok(0);
        };
        self.waits += 1;
        assert!(self.waits < 100_000, "the request never timed out");
        // Just before the wait would run out (a wait that delivers
        // something still takes some time).
        let took = d - (d / 2).min(core::time::Duration::from_micros(100));
        let took = u64::try_from(took.as_nanos()).unwrap();
        self.now
            .fetch_add(took, core::sync::atomic::Ordering::SeqCst);
        if self.pending.is_empty() {
            self.pending = event("/noise", "t").encode();
        }
        let n = if self.trickle { 1 } else { self.pending.len() }.min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

#[test]
fn watch_events_do_not_extend_a_requests_deadline() {
    for trickle in [false, true] {
        let t = Stalling::new(trickle);
        let now = alloc::sync::Arc::clone(&t.now);
        let clock = t.clock();
        let mut xs = Xenstore::new(t);
        xs.set_clock(clock);
        xs.set_timeout(core::time::Duration::from_secs(5));
        let err = xs.read("/a").unwrap_err();
        assert!(matches!(err, XsError::TimedOut { .. }), "{err:?}");
        let elapsed =
            core::time::Duration::from_nanos(now.load(core::sync::atomic::Ordering::SeqCst));
        // At its deadline, give or take the last wait's slack.
        assert!(
            elapsed <= core::time::Duration::from_secs(5)
                && elapsed >= core::time::Duration::from_millis(4999),
            "trickle {trickle}: timed out after {elapsed:?}"
        );
        assert!(xs.broken().is_none());
        if !trickle {
            assert!(xs.queued_events() > 0);
        }
    }
}

#[test]
fn without_a_clock_a_request_makes_a_bounded_number_of_waits() {
    let mut xs = Xenstore::new(Stalling::new(false));
    let err = xs.read("/a").unwrap_err();
    assert!(matches!(err, XsError::TimedOut { .. }), "{err:?}");
    // (The send of the request counts as one.)
    let waits = xs.transport_mut().waits;
    assert!(
        waits + 1 == crate::client::MAX_WAITS_WITHOUT_CLOCK,
        "{waits} waits"
    );
}

/// A daemon that always has another watch event ready.
struct Flooding(u32);

impl Transport for Flooding {
    fn send(
        &mut self,
        data: &[u8],
        _wait: Wait,
    ) -> Result<usize, crate::transport::TransportError> {
        Ok(data.len())
    }

    fn recv(
        &mut self,
        buf: &mut [u8],
        _wait: Wait,
    ) -> Result<usize, crate::transport::TransportError> {
        self.0 += 1;
        assert!(self.0 < 100_000, "the pump never returned");
        let e = event("/flood", "t").encode();
        buf[..e.len()].copy_from_slice(&e);
        Ok(e.len())
    }
}

#[test]
fn a_pump_handles_a_bounded_number_of_messages() {
    let mut xs = Xenstore::new(Flooding(0));
    assert_eq!(xs.pump().unwrap(), crate::client::MAX_MESSAGES_PER_PUMP);
    assert_eq!(
        xs.pump_wait(Wait::For(core::time::Duration::from_millis(1)))
            .unwrap(),
        crate::client::MAX_MESSAGES_PER_PUMP
    );
}
