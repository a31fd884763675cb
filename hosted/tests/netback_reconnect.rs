//! Reconnection: a frontend that closes and comes back, a frontend
//! restarted without closing (its grants quarantined until the backend lets
//! them go), a vif unplugged and plugged again, and a backend restart.

#[path = "netback_common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use grant_tables::DomId;
use hosted::netback::ringfront::{RingFront, RingFrontConfig};
use hosted::netback::NetbackConfig;
use xenbus::HandshakeEvent;

const FE: DomId = DomId(1);

fn exchange(w: &World, f: &mut RingFront, seed: u32) {
    let me = mac(FE, 0);
    let out = frame(HOST_MAC, me, 300, seed);
    f.send(&out).unwrap();
    assert_eq!(w.nb().host_port().recv_timeout(T).unwrap().data, out);
    let back = frame(me, HOST_MAC, 300, seed + 1);
    w.nb().host_port().send(&back).unwrap();
    assert_eq!(recv(f).data, back);
    tx_done(f, 1);
}

#[test]
fn frontend_closes_and_comes_back() {
    let mut w = World::new("close", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    exchange(&w, &mut f, 1);
    f.close(T).unwrap();
    assert!(until(|| w.nb().vif(FE, 0).is_none()), "the vif stayed");
    // The backend let the rings go before it answered: nothing is left in
    // quarantine.
    assert_eq!(plat.grant_table().stats().quarantined, 0);
    let mut f = RingFront::connect(
        plat.clone(),
        w.daemon.socket(),
        0,
        RingFrontConfig::default(),
        T,
    )
    .unwrap();
    let st = w.wait_vif(FE, 0, 2);
    assert_eq!(st.connection, 2);
    exchange(&w, &mut f, 10);
}

#[test]
fn frontend_restarts_without_closing() {
    let mut w = World::new("restart", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    exchange(&w, &mut f, 1);
    // The driver goes away without a word: it ends its grants while the
    // backend still maps the rings; they wait in quarantine.
    drop(f);
    assert!(plat.grant_table().stats().quarantined > 0);
    // A new instance starts over (Initialising over Connected): the
    // backend tears the old connection down and serves the new one.
    let mut f = RingFront::connect(
        plat.clone(),
        w.daemon.socket(),
        0,
        RingFrontConfig::default(),
        T,
    )
    .unwrap();
    let st = w.wait_vif(FE, 0, 2);
    assert_eq!(st.connection, 2);
    exchange(&w, &mut f, 20);
    plat.grant_table().retry_quarantined();
    assert_eq!(
        plat.grant_table().stats().quarantined,
        0,
        "the old rings are still mapped"
    );
}

#[test]
fn unplug_and_plug_again() {
    let mut w = World::new("unplug", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    exchange(&w, &mut f, 1);
    drop(f);
    w.unplug(FE, 0);
    assert!(until(|| w.nb().vif(FE, 0).is_none()));
    plat.grant_table().retry_quarantined();
    assert_eq!(plat.grant_table().stats().quarantined, 0);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    exchange(&w, &mut f, 30);
}

#[test]
fn backend_restart() {
    let mut w = World::new("berestart", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    exchange(&w, &mut f, 1);
    w.nb.take().unwrap().stop();
    // The frontend sees the backend go.
    let mut lost = false;
    assert!(until(|| {
        if let Ok(HandshakeEvent::Disconnected { .. }) = f.poll_handshake() {
            lost = true;
        }
        lost
    }));
    assert!(!f.is_connected());
    assert_eq!(plat.grant_table().stats().quarantined, 0);
    w.restart_backend(NetbackConfig::new());
    f.wait_connected(T).unwrap();
    w.wait_vif(FE, 0, 1);
    exchange(&w, &mut f, 40);
    assert_eq!(f.teardowns(), 1);
    // The old connection's frames do not reappear.
    assert!(f
        .recv_timeout(Duration::from_millis(50), false)
        .unwrap()
        .is_none());
}
