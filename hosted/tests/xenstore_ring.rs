//! The guest's path to xenstore end to end: the xenbus client over a store
//! ring page (`xenstore_domain_interface`), served by the hosted daemon on
//! another thread, with watch events from socket clients arriving over the
//! ring, transfers that wrap the 1 KiB rings many times, a hostile guest
//! that corrupts the ring (only its own connection ends), and a guest that
//! floods requests without reading replies (its pending output stays
//! bounded).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hosted::xenstore::{connect, Quotas, ThreadSignal, XenstoreDaemon};
use xenbus::ring::{offsets, RingPage, Side, StoreRing, XENSTORE_SERVER_FEATURE_ERROR};
use xenbus::wire::{join_strings, Message, MsgType};
use xenbus::{Perm, PermAccess, Transport, Wait, Xenstore};

fn socket_path() -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "xs-ring-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

type GuestStore = Xenstore<StoreRing<ThreadSignal>>;

/// A daemon serving dom1 over a ring page; returns the guest's client.
fn guest(d: &XenstoreDaemon, page: &RingPage) -> (GuestStore, hosted::xenstore::ServedConnection) {
    let mut xs0 = connect(d.socket()).unwrap();
    xs0.mkdir("/local/domain/1").unwrap();
    xs0.set_perms("/local/domain/1", &[Perm::new(1, PermAccess::None)])
        .unwrap();
    let (guest_signal, server_signal) = ThreadSignal::pair();
    // SAFETY: the page is 4096 bytes, page-aligned, outlives both ends (the
    // test drops the served connection and the client before the page),
    // and is only accessed through raw volatile/atomic accesses.
    let server = unsafe {
        StoreRing::init_server(page.as_ptr(), XENSTORE_SERVER_FEATURE_ERROR, server_signal)
    };
    let served = d.serve(1, server).unwrap();
    // SAFETY: as above.
    let ring = unsafe { StoreRing::new(page.as_ptr(), Side::Guest, guest_signal) };
    (Xenstore::new(ring), served)
}

#[test]
fn guest_client_over_the_ring() {
    let page = RingPage::new().unwrap();
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let (mut xs, served) = guest(&d, &page);
    xs.write("data/x", "1").unwrap();
    assert_eq!(xs.read("data/x").unwrap(), b"1");
    assert_eq!(xs.read_string("/local/domain/1/data/x").unwrap(), "1");
    assert_eq!(xs.directory("data").unwrap(), ["x"]);
    assert_eq!(
        xs.get_perms("data/x").unwrap()[0],
        Perm::new(1, PermAccess::None)
    );
    assert_eq!(
        xs.read("/tool/xenstored").unwrap_err().errno(),
        Some(xenbus::Errno::EACCES)
    );
    assert_eq!(xs.get_domain_path(1).unwrap(), "/local/domain/1");
    // Values bigger than the ring, many times over: the indices wrap the
    // 1 KiB rings again and again. A domain's entries are limited to 2 KiB;
    // dom0 writes a bigger one for the guest to read.
    for i in 0..50u32 {
        let v: Vec<u8> = (0..1500 + 10 * i).map(|j| (j * 31 + i) as u8).collect();
        xs.write("big", &v).unwrap();
        assert_eq!(xs.read("big").unwrap(), v);
    }
    assert!(
        page.read_u32(offsets::REQ_PROD) > 80_000,
        "the request ring wrapped many times"
    );
    let huge: Vec<u8> = (0..4000u32).map(|j| (j % 251) as u8).collect();
    connect(d.socket())
        .unwrap()
        .write("/local/domain/1/huge", &huge)
        .unwrap();
    for _ in 0..10 {
        assert_eq!(xs.read("huge").unwrap(), huge);
    }
    assert_eq!(
        xs.write("big", vec![0u8; 2100]).unwrap_err().errno(),
        Some(xenbus::Errno::ENOSPC)
    );
    // Transactions over the ring.
    xs.write("counter", "0").unwrap();
    for _ in 0..20 {
        xs.transaction(|tx| {
            let v: u32 = tx.read_string("counter")?.parse().unwrap();
            tx.write("counter", (v + 1).to_string())
        })
        .unwrap();
    }
    assert_eq!(xs.read("counter").unwrap(), b"20");
    drop(xs);
    drop(served);
}

#[test]
fn watch_events_from_other_clients_arrive_over_the_ring() {
    let page = RingPage::new().unwrap();
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let (mut xs, _served) = guest(&d, &page);
    let mut xs0 = connect(d.socket()).unwrap();
    xs.watch("control", "ctl").unwrap();
    let first = xs
        .wait_event(Wait::For(Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.path.as_str(), first.token.as_str()),
        ("control", "ctl")
    );
    for i in 0..30 {
        xs0.write(&format!("/local/domain/1/control/k{i}"), "v")
            .unwrap();
    }
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while got.len() < 30 && Instant::now() < end {
        if let Some(e) = xs.wait_event(Wait::For(Duration::from_millis(50))).unwrap() {
            got.push(e.path);
        }
    }
    let want: Vec<String> = (0..30).map(|i| format!("control/k{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn hostile_guest_index_ends_only_its_connection() {
    let page = RingPage::new().unwrap();
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let (mut xs, served) = guest(&d, &page);
    xs.write("before", "ok").unwrap();
    // The guest claims more request bytes than the ring holds.
    let cons = page.read_u32(offsets::REQ_CONS);
    page.write_u32(offsets::REQ_PROD, cons.wrapping_add(5000));
    let end = Instant::now() + Duration::from_secs(5);
    while !served.is_finished() {
        assert!(
            Instant::now() < end,
            "the daemon did not notice the bad index"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Everyone else is still served, and the guest's data is intact.
    let mut xs0 = connect(d.socket()).unwrap();
    assert_eq!(xs0.read("/local/domain/1/before").unwrap(), b"ok");
    assert!(d.with_core(|c| c.connections().len()) >= 1);
    d.with_core(|c| c.check_tree()).unwrap();
}

/// A guest that sends `XS_READ` of a 4000-byte node again and again and
/// never reads a reply: the daemon stops reading its requests once its
/// pending output passes the quota, drops its watch events, and keeps
/// serving everyone else; what it holds for the guest stays bounded.
#[test]
fn a_guest_that_never_reads_replies_cannot_grow_the_daemon() {
    const QUOTA: usize = 64 * 1024;
    // The core stops handling requests at the quota (plus the reply that
    // crossed it); the transport thread holds at most one batch taken from
    // the core, and at most 64 KiB of unconsumed requests.
    const OUTPUT_BOUND: usize = 2 * QUOTA + 16 * 1024;
    const INPUT_BOUND: usize = 64 * 1024;
    let quotas = Quotas {
        output_bytes: QUOTA,
        ..Quotas::default()
    };
    let page = RingPage::new().unwrap();
    let d = XenstoreDaemon::spawn_with(socket_path(), quotas).unwrap();
    let (mut xs, served) = guest(&d, &page);
    let mut xs0 = connect(d.socket()).unwrap();
    let huge = vec![b'h'; 4000];
    xs0.write("/local/domain/1/huge", &huge).unwrap();

    let mut stream = Message::new(MsgType::Watch, 1, 0, join_strings(&["huge", "t"]))
        .unwrap()
        .encode();
    let read = Message::new(MsgType::Read, 2, 0, b"huge\0".to_vec())
        .unwrap()
        .encode();
    let mut pushed = 0usize;
    let mut max_output = 0usize;
    let mut max_input = 0usize;
    let end = Instant::now() + Duration::from_millis(800);
    while Instant::now() < end {
        while stream.len() < 4096 {
            stream.extend_from_slice(&read);
        }
        let n = xs
            .transport_mut()
            .send(&stream, Wait::NoWait)
            .expect("the ring stays usable");
        stream.drain(..n);
        pushed += n;
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let output = served.buffered_output() + d.with_core(|c| c.output_len(served.id()));
        max_output = max_output.max(output);
        max_input = max_input.max(served.buffered_input());
        assert!(
            max_output <= OUTPUT_BOUND,
            "the daemon holds {max_output} bytes of output for a guest that does not read"
        );
        assert!(
            max_input <= INPUT_BOUND,
            "the daemon holds {max_input} bytes of input for a guest that does not read"
        );
    }
    assert!(
        pushed < 4 * INPUT_BOUND,
        "the daemon kept reading requests ({pushed} bytes) from a guest that does not read replies"
    );
    assert!(!served.is_finished(), "the guest is still connected");
    // Its watch events are dropped; other clients are served.
    for i in 0..3 {
        xs0.write("/local/domain/1/huge", format!("v{i}")).unwrap();
    }
    assert!(d.with_core(|c| c.dropped_events(served.id())) > 0);
    assert_eq!(xs0.read("/local/domain/1/huge").unwrap(), b"v2");
    let mut other = connect(d.socket()).unwrap();
    other.write("/other", "served").unwrap();
    assert_eq!(xs0.read("/other").unwrap(), b"served");
    d.with_core(|c| c.check_tree()).unwrap();
    drop(xs);
    drop(served);
}

#[test]
fn release_ends_a_served_domain() {
    let page = RingPage::new().unwrap();
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let (mut xs, served) = guest(&d, &page);
    xs.write("x", "1").unwrap();
    d.release(1).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while !served.is_finished() {
        assert!(Instant::now() < end, "the served connection did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
    xs.set_timeout(Duration::from_millis(100));
    assert!(xs.read("x").is_err());
}

/// The real hosted path: the guest (dom1) grants its store page to dom0,
/// dom0 maps the grant and binds an event channel; the daemon serves the
/// ring through the mapping, the guest's client uses its own page. Both
/// ends signal through the hosted event channels.
#[test]
fn store_ring_over_hosted_grants_and_event_channels() {
    use std::sync::Arc;

    use grant_tables::{Access, DomId, EventChannels, PageAllocator, SharedPages};
    use hosted::HostedHypervisor;
    use xenbus::ring::OwnedEvtchnSignal;

    let dir = std::env::temp_dir().join(format!("xs-ring-hv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hv = HostedHypervisor::create(&dir).unwrap();
    let dom0 = Arc::new(hv.join(DomId(0)).unwrap());
    let dom1 = Arc::new(hv.join(DomId(1)).unwrap());
    let page = dom1.alloc_zeroed_pages(1).unwrap();
    let gref = dom1
        .grant_table()
        .grant_access(DomId(0), page.gfn(0).unwrap(), Access::ReadWrite)
        .unwrap();
    let guest_port = dom1.alloc_unbound(DomId(0)).unwrap();
    let server_port = dom0.bind_interdomain(DomId(1), guest_port).unwrap();
    let map = dom0
        .map_grant(DomId(1), gref.raw(), Access::ReadWrite)
        .unwrap();

    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let mut xs0 = connect(d.socket()).unwrap();
    xs0.mkdir("/local/domain/1").unwrap();
    xs0.set_perms("/local/domain/1", &[Perm::new(1, PermAccess::None)])
        .unwrap();
    // SAFETY: the mapping is a whole page, page-aligned, valid until `map`
    // is dropped, which happens after the served connection (declared
    // later, dropped first); only raw volatile/atomic accesses touch it.
    let server = unsafe {
        StoreRing::init_server(
            map.as_ptr(),
            XENSTORE_SERVER_FEATURE_ERROR,
            OwnedEvtchnSignal::new(Arc::clone(&dom0), server_port),
        )
    };
    let served = d.serve(1, server).unwrap();
    // SAFETY: the guest's own page, valid until `page` is dropped, after
    // the client; only raw volatile/atomic accesses touch it.
    let ring = unsafe {
        StoreRing::new(
            page.as_ptr(),
            Side::Guest,
            OwnedEvtchnSignal::new(Arc::clone(&dom1), guest_port),
        )
    };
    let mut xs = Xenstore::new(ring);

    xs.write("name", "guest-one").unwrap();
    assert_eq!(xs0.read("/local/domain/1/name").unwrap(), b"guest-one");
    xs.watch("control/shutdown", "sd").unwrap();
    assert_eq!(
        xs.wait_event(Wait::For(Duration::from_secs(2)))
            .unwrap()
            .unwrap()
            .path,
        "control/shutdown"
    );
    xs0.write("/local/domain/1/control/shutdown", "poweroff")
        .unwrap();
    let e = xs
        .wait_event(Wait::For(Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.path.as_str(), e.token.as_str()),
        ("control/shutdown", "sd")
    );
    assert_eq!(xs.read("control/shutdown").unwrap(), b"poweroff");
    for i in 0..40u32 {
        let v: Vec<u8> = (0..1800u32).map(|j| (j ^ i) as u8).collect();
        xs.write("blob", &v).unwrap();
        assert_eq!(xs.read("blob").unwrap(), v);
    }
    drop(xs);
    drop(served);
    drop(map);
    let _ = std::fs::remove_dir_all(&dir);
}
