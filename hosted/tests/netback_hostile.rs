//! The hostile modes do misbehave: each one, after a few honest packets,
//! produces what netfront's validation (used by the ring-level frontend)
//! reports as a backend fault, or (event storms, grants kept mapped) the
//! effect it promises. Frontends' own survival tests live with the
//! netfront driver.

#[path = "netback_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use grant_tables::{DomId, EventChannels};
use hosted::netback::ringfront::{FrontError, RingFront, RingFrontConfig};
use hosted::netback::{Hostile, NetbackConfig};

const FE: DomId = DomId(1);
const HONEST: u64 = 3;

/// One round trip; the first error the frontend reports, if any.
fn round(w: &World, f: &mut RingFront, i: u32) -> Result<(), FrontError> {
    let me = mac(FE, 0);
    f.send(&frame(HOST_MAC, me, 200, i))?;
    let host = w.nb().host_port();
    let _ = host.recv_timeout(Duration::from_millis(500));
    host.send(&frame(me, HOST_MAC, 200, i))
        .map_err(|e| FrontError(e.to_string()))?;
    let end = Instant::now() + Duration::from_millis(500);
    let mut got = false;
    while Instant::now() < end && !got {
        f.poll_tx()?;
        got = f.recv()?.is_some();
        if !got {
            let _ = f.block_rx(Duration::from_millis(20));
        }
    }
    f.poll_tx()?;
    if got {
        Ok(())
    } else {
        Err(FrontError("no frame came back".into()))
    }
}

#[test]
fn each_lying_mode_is_caught_by_netfront_validation() {
    for (mode, expect) in [
        (Hostile::BadIds, &["not below the ring size", "has id"][..]),
        (
            Hostile::OverlongSizes,
            &["do not describe data within the page"][..],
        ),
        (
            Hostile::OffsetsPastPage,
            &["do not describe data within the page"][..],
        ),
        (Hostile::IndexJumps, &["published rsp_prod"][..]),
        (Hostile::UnsolicitedResponses, &["published rsp_prod"][..]),
        (
            Hostile::RxProdBackwards,
            &["went backwards", "published rsp_prod"][..],
        ),
    ] {
        let mut w = World::new("hostile", NetbackConfig::new().hostile(mode, HONEST));
        let plat = w.domain(FE);
        let mut f = w.front(&plat, 0, RingFrontConfig::default());
        // Honest first (TX and RX each count the packets they answered).
        round(&w, &mut f, 0).unwrap_or_else(|e| panic!("{mode:?}: the honest packets failed: {e}"));
        let mut error = None;
        for i in 1..20 {
            if let Err(e) = round(&w, &mut f, i) {
                error = Some(e);
                break;
            }
        }
        let e = error.unwrap_or_else(|| panic!("{mode:?}: the frontend saw nothing wrong"));
        assert!(
            expect.iter().any(|x| e.0.contains(x)),
            "{mode:?}: unexpected error: {e}"
        );
    }
}

#[test]
fn event_storm_floods_the_channels_and_traffic_still_flows() {
    let mut w = World::new(
        "storm",
        NetbackConfig::new().hostile(Hostile::EventStorm, 0),
    );
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    let (tx, rx) = f.ports(0).unwrap();
    // Events keep coming with nothing behind them (an honest backend
    // sends none without traffic, beyond the one of a fresh binding).
    let mut pending = 0;
    let end = Instant::now() + T;
    while pending < 20 && Instant::now() < end {
        if plat.poll(rx).unwrap() | plat.poll(tx).unwrap() {
            pending += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(pending >= 20, "only {pending} events in {T:?}");
    for i in 0..5 {
        round(&w, &mut f, i).unwrap();
    }
}

#[test]
fn kept_grants_stay_mapped_until_released() {
    let mut w = World::new(
        "keep",
        NetbackConfig::new().hostile(Hostile::KeepGrantsMapped, 0),
    );
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    for i in 0..3 {
        round(&w, &mut f, i).unwrap();
    }
    assert!(w.nb().kept_grants() >= 2, "{}", w.nb().kept_grants());
    // The frontend ends its buffers' grants: the mapped ones wait in
    // quarantine.
    f.close(T).unwrap();
    let gt = plat.grant_table();
    assert!(gt.stats().quarantined >= 2, "{:?}", gt.stats());
    let n = w.nb().release_kept_grants();
    assert!(n >= 2);
    gt.retry_quarantined();
    assert_eq!(gt.stats().quarantined, 0);
}
