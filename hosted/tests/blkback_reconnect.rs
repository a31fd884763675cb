//! Connections coming and going: a frontend that restarts gets a new
//! connection (the backend unmaps the old one's rings and persistent
//! grants), a backend that dies and a new instance that takes over, ring
//! layouts (`ring-ref` alone, `ring-page-order` 0 with `ring-ref0`), and a
//! resize seen by the frontend.

#[path = "blkback_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use blkfront::abi::{op, status};
use common::{pattern, Rig, FE, FRONT_PATH, TIMEOUT};
use grant_tables::abi::GrantRefNum;
use hosted::blkback::front::{rw_request, whole_page, FrontConfig, RingFrontend};
use hosted::blkback::{Blkback, BlkbackConfig};
use xenbus::{HandshakeEvent, Wait};

fn write_page(f: &mut RingFrontend, id: u64, sector: u64, tag: u32) -> GrantRefNum {
    let mut b = f.buffer().unwrap();
    b.write_at(0, &pattern(tag, 4096)).unwrap();
    let rsp = f.pages(0, true, id, sector, &[&b]).unwrap();
    assert_eq!((rsp.id, rsp.status), (id, status::OKAY));
    b.gref()
}

#[test]
fn a_restarted_frontend_gets_a_new_connection_and_the_old_grants_go() {
    let r = Rig::new("fe-restart");
    let mut f = r.front(FrontConfig::default());
    let ring_refs = f.queue(0).unwrap().ring.grefs();
    let data_ref = write_page(&mut f, 1, 0, 1);
    assert_eq!(
        r.back_plat.pin_counts(FE, data_ref),
        (1, 1),
        "a persistent grant, mapped read-write"
    );
    assert_eq!(r.back_plat.pin_counts(FE, ring_refs[0]).0, 1);
    // The guest's driver restarts: the old instance goes (its grants are
    // quarantined while the backend maps them), a new one connects.
    drop(f);
    let mut f = r.front(FrontConfig::default());
    assert!(r.back().wait_connected(2, TIMEOUT));
    assert_eq!(r.back().stats().connections, 2);
    assert_eq!(
        r.back_plat.pin_counts(FE, data_ref),
        (0, 0),
        "the old persistent grant was unmapped"
    );
    assert_eq!(
        r.back_plat.pin_counts(FE, ring_refs[0]),
        (0, 0),
        "the old ring was unmapped"
    );
    // The quarantined pages can now be freed.
    let table = r.front_plat.grant_table().clone();
    let _ = table.retry_quarantined();
    assert_eq!(table.stats().quarantined, 0, "{:?}", table.stats());
    write_page(&mut f, 2, 8, 2);
    assert_eq!(r.file_bytes(0, 4096), pattern(1, 4096));
    assert_eq!(r.file_bytes(8 * 512, 4096), pattern(2, 4096));
}

#[test]
fn a_new_backend_instance_takes_over_after_one_dies() {
    let mut r = Rig::new("be-restart");
    let mut f = r.front(FrontConfig::default());
    write_page(&mut f, 1, 0, 1);
    // The backend process dies; its directory stays; a new one starts.
    r.back.take().unwrap().stop();
    let mut config = BlkbackConfig::new(&r.disk);
    config.max_queues = 4;
    r.back = Some(
        Blkback::spawn(
            r.back_plat.clone(),
            r.daemon.socket(),
            &r.spec.backend_path(),
            config,
        )
        .unwrap(),
    );
    // The frontend sees the old connection end and connects anew.
    let end = Instant::now() + TIMEOUT;
    let mut events = Vec::new();
    loop {
        let ev = f.poll_handshake().unwrap();
        if ev != HandshakeEvent::Idle {
            events.push(ev.clone());
        }
        if matches!(ev, HandshakeEvent::Connected(_)) {
            break;
        }
        assert!(Instant::now() < end, "no reconnection: {events:?}");
        f.xenstore()
            .pump_wait(Wait::For(Duration::from_millis(2)))
            .unwrap();
    }
    assert!(
        matches!(
            events[0],
            HandshakeEvent::Disconnected { connection: 1, .. }
        ),
        "{events:?}"
    );
    write_page(&mut f, 2, 8, 2);
    assert_eq!(r.file_bytes(8 * 512, 4096), pattern(2, 4096));
    assert_eq!(r.back().stats().connections, 1);
}

#[test]
fn ring_ref_layouts() {
    // ring-page-order written (order 0): ring-ref0.
    let mut r = Rig::new("layout");
    let f = r.front(FrontConfig::default());
    let fe_dir = r.spec.frontend_path();
    let read = |r: &mut Rig, k: &str| r.xs0.try_read(&format!("{fe_dir}/{k}")).unwrap();
    assert_eq!(read(&mut r, "ring-page-order").as_deref(), Some(&b"0"[..]));
    assert!(read(&mut r, "ring-ref0").is_some());
    assert!(read(&mut r, "ring-ref").is_none());
    drop(f);
    // A frontend that knows only one-page rings: ring-ref alone.
    let mut f = RingFrontend::new(
        r.front_plat.clone(),
        r.daemon.socket(),
        FRONT_PATH,
        FrontConfig {
            legacy_ring_ref: true,
            ..FrontConfig::default()
        },
    )
    .unwrap();
    // The keys of the previous instance are removed by the new one's
    // handshake only where it writes them; clear them as a fresh guest
    // directory would be.
    for k in ["ring-page-order", "ring-ref0"] {
        let _ = r.xs0.rm(&format!("{fe_dir}/{k}"));
    }
    f.connect(TIMEOUT).unwrap();
    assert!(read(&mut r, "ring-ref").is_some());
    let g = f.buffer().unwrap().gref();
    let rsp = f
        .io(0, &rw_request(op::READ, 5, 0, &[whole_page(g)]))
        .unwrap();
    assert_eq!((rsp.id, rsp.status), (5, status::OKAY));
}

#[test]
fn a_resize_rewrites_sectors_and_state() {
    let r = Rig::with("resize", 1 << 20, &[], |_| {});
    let mut f = r.front(FrontConfig::default());
    assert_eq!(f.disk().unwrap().sectors, 2048);
    let be = r.spec.backend_path();
    f.xenstore()
        .watch(&format!("{be}/state"), "resize")
        .unwrap();
    // The initial watch event.
    f.xenstore()
        .pump_wait(Wait::For(Duration::from_millis(200)))
        .unwrap();
    f.xenstore().drain_events_for("resize");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&r.disk)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    assert_eq!(r.back().refresh_size().unwrap(), 6144);
    let end = Instant::now() + TIMEOUT;
    while f.xenstore().take_event_for("resize").is_none() {
        assert!(Instant::now() < end, "the state was not written again");
        f.xenstore()
            .pump_wait(Wait::For(Duration::from_millis(5)))
            .unwrap();
    }
    assert_eq!(f.read_disk().unwrap().sectors, 6144);
    // The new sectors are served.
    let b = f.buffer().unwrap();
    let rsp = f.pages(0, false, 9, 6000, &[&b]).unwrap();
    assert_eq!((rsp.id, rsp.status), (9, status::OKAY));
}
