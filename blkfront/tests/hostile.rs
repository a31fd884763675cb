//! A backend that lies or stalls: the device is disabled with a clear
//! error, no I/O is reported done that the backend did not answer, later
//! calls are refused, and nothing panics.

mod common;

use std::time::Duration;

use blkfront::inflight::ResponseError;
use blkfront::{DeviceError, DeviceEvent, IoFailure, Refusal};
use common::backend::{BackConfig, Hostile};
use common::*;
use grant_tables::{PageAllocator, RingError};
use xenbus::FrontendPhase;

/// Connects, turns `hostile` on after `after` good responses, submits five
/// reads at once, and drives until the device breaks.
/// Returns the error and the results of the five reads.
fn break_with(hostile: Hostile, after: u64) -> (DeviceError, Vec<Result<(), IoFailure>>) {
    let w = World::new(1024);
    let mut xs = w.front_xs();
    let mut dev = w.device(w.config());
    let mut back = Some(w.backend(BackConfig {
        sectors: 1024,
        ..BackConfig::default()
    }));
    connect(&mut dev, &mut xs, &mut back);
    {
        let b = back.as_mut().unwrap();
        b.dev.hostile = hostile;
        b.dev.hostile_after = after;
    }
    let mut tags = Vec::new();
    for k in 0..5 {
        tags.push(dev.read(0, 8 * k, empty_spans(&dev, 0, 1)).unwrap());
    }
    let mut results = std::collections::BTreeMap::new();
    let mut events = Vec::new();
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        while let Some(c) = d.next_completion() {
            assert!(results.insert(c.tag, c.result).is_none(), "completed twice");
        }
        while let Some(e) = d.next_event() {
            events.push(e);
        }
        d.broken().is_some() && results.len() == 5
    });
    let err = dev.broken().unwrap().clone();
    assert!(
        events.contains(&DeviceEvent::Broken(err.clone())),
        "{events:?}"
    );
    // Later calls say why.
    assert_eq!(dev.poll(&mut xs), Err(err.clone()));
    let r = dev.flush(0).unwrap_err();
    assert_eq!(r.error, Refusal::Disabled(Box::new(err.clone())));
    let msg = err.to_string();
    assert!(msg.contains("blkfront"), "{msg}");
    // The frontend closes the connection; the backend follows and the
    // rings are taken back.
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        d.phase() == FrontendPhase::Shut
    });
    assert_eq!(dev.rings(), 0);
    (err, tags.iter().map(|t| results[t].clone()).collect())
}

fn disabled(r: &Result<(), IoFailure>) -> bool {
    matches!(r, Err(IoFailure::Disabled(_)))
}

#[test]
fn a_made_up_id_disables_the_device() {
    let (err, results) = break_with(Hostile::BadId, 2);
    assert!(
        matches!(
            err,
            DeviceError::BadResponse {
                ring: 0,
                error: ResponseError::IdOutOfRange { id: 100_000, .. }
            }
        ),
        "{err:?}"
    );
    assert_eq!(results[..2], [Ok(()), Ok(())]);
    assert!(results[2..].iter().all(disabled), "{results:?}");
}

#[test]
fn a_duplicate_response_disables_the_device() {
    let (err, results) = break_with(Hostile::Duplicate, 1);
    assert!(
        matches!(
            err,
            DeviceError::BadResponse {
                error: ResponseError::NotInFlight { id: 0 },
                ..
            }
        ),
        "{err:?}"
    );
    // The first answer was good; its duplicate broke the device.
    assert_eq!(results[0], Ok(()));
    assert!(results[1..].iter().all(disabled), "{results:?}");
}

#[test]
fn a_wrong_operation_disables_the_device() {
    let (err, results) = break_with(Hostile::WrongOp, 1);
    assert!(
        matches!(
            err,
            DeviceError::BadResponse {
                error: ResponseError::WrongOperation {
                    expected: 0,
                    got: 1,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(results[0], Ok(()));
    assert!(results[1..].iter().all(disabled));
}

#[test]
fn an_unknown_status_disables_the_device() {
    let (err, results) = break_with(Hostile::UnknownStatus, 3);
    assert!(
        matches!(
            err,
            DeviceError::BadResponse {
                error: ResponseError::UnknownStatus { status: 7, .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(results[..3], [Ok(()), Ok(()), Ok(())]);
    assert!(results[3..].iter().all(disabled));
}

#[test]
fn an_index_jump_disables_the_device() {
    let (err, results) = break_with(Hostile::IndexJump, 0);
    assert!(
        matches!(
            err,
            DeviceError::Ring {
                error: RingError::ResponseOverflow { .. },
                ..
            }
        ),
        "{err:?}"
    );
    // The jump came with the first response, before it was read.
    assert!(results.iter().all(disabled), "{results:?}");
}

#[test]
fn io_errors_are_reported_not_hidden() {
    let w = World::new(1024);
    let mut xs = w.front_xs();
    let mut dev = w.device(w.config());
    let mut back = Some(w.backend(BackConfig {
        sectors: 1024,
        ..BackConfig::default()
    }));
    connect(&mut dev, &mut xs, &mut back);
    back.as_mut().unwrap().dev.hostile = Hostile::IoError;
    let tag = dev.write(0, 0, pool_spans(&dev, 0, 2, 0, 1)).unwrap();
    let mut got = None;
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        got = d.next_completion();
        got.is_some()
    });
    let c = got.unwrap();
    assert_eq!(c.tag, tag);
    assert_eq!(c.result, Err(IoFailure::Error));
    assert_eq!(c.io.spans().len(), 2, "buffers come back");
    // An I/O error is the backend's answer, not a protocol violation.
    assert!(dev.broken().is_none());
    assert_eq!(dev.stats().failed, 1);
}

#[test]
fn a_stalled_backend_times_out_and_disables_the_device() {
    let w = World::with_fake_clock(1024);
    let clock = w.clock.clone().unwrap();
    let mut xs = w.front_xs();
    let mut cfg = w.config();
    cfg.request_timeout = Duration::from_secs(5);
    let mut dev = w.device(cfg);
    let mut back = Some(w.backend(BackConfig {
        sectors: 1024,
        ..BackConfig::default()
    }));
    connect(&mut dev, &mut xs, &mut back);
    back.as_mut().unwrap().dev.hostile = Hostile::Stall;
    // The application's own pages: still mapped by the stalled backend?
    // No: the fake backend maps per request and has let go, so they come
    // back; what matters is that nothing is reported done.
    let pages = w.front.alloc_zeroed_pages(1).unwrap();
    let tag = dev
        .write(
            0,
            0,
            vec![blkfront::Span::whole(blkfront::Buffer::from_pages(pages))],
        )
        .unwrap();
    for _ in 0..10 {
        let _ = dev.poll(&mut xs);
        back.as_mut().unwrap().poll();
    }
    assert!(dev.next_completion().is_none());
    assert!(dev.broken().is_none());
    clock.advance(4_000_000_000);
    let _ = dev.poll(&mut xs);
    assert!(dev.broken().is_none(), "not yet");
    clock.advance(2_000_000_000);
    let _ = dev.poll(&mut xs);
    let err = dev.broken().cloned().expect("stalled");
    assert!(
        matches!(err, DeviceError::Stalled { ring: 0, tag: t, waited_ns } if t == tag && waited_ns >= 5_000_000_000),
        "{err:?}"
    );
    assert!(err.to_string().contains("stalls"), "{err}");
    let c = dev.next_completion().unwrap();
    assert_eq!(c.tag, tag);
    assert!(matches!(c.result, Err(IoFailure::Disabled(_))));
}

#[test]
fn pages_a_stalled_backend_still_maps_stay_in_quarantine_until_it_lets_go() {
    let w = World::with_fake_clock(1024);
    let clock = w.clock.clone().unwrap();
    let mut xs = w.front_xs();
    let mut cfg = w.config();
    cfg.request_timeout = Duration::from_secs(1);
    let mut dev = w.device(cfg);
    let mut back = Some(w.backend(BackConfig {
        sectors: 1024,
        persistent: false,
        ..BackConfig::default()
    }));
    connect(&mut dev, &mut xs, &mut back);
    {
        let b = back.as_mut().unwrap();
        b.dev.hostile = Hostile::Stall;
        b.dev.keep_mapped = true;
    }
    let before = dev.grant_stats().unwrap();
    let pages = w.front.alloc_zeroed_pages(2).unwrap();
    let tag = dev
        .write(
            0,
            0,
            vec![blkfront::Span::whole(blkfront::Buffer::from_pages(pages))],
        )
        .unwrap();
    for _ in 0..5 {
        let _ = dev.poll(&mut xs);
        back.as_mut().unwrap().poll();
    }
    clock.advance(2_000_000_000);
    let _ = dev.poll(&mut xs);
    assert!(matches!(dev.broken(), Some(DeviceError::Stalled { .. })));
    let c = dev.next_completion().unwrap();
    assert_eq!(c.tag, tag);
    assert!(matches!(c.result, Err(IoFailure::Disabled(_))));
    // The backend maps both pages: their grants cannot end, so the pages
    // stay in quarantine and are not handed back.
    assert_eq!(c.held_spans, 1);
    assert!(c.io.spans().is_empty());
    let g = dev.grant_stats().unwrap();
    assert_eq!(g.quarantined, 2, "{g:?}");
    assert_eq!(g.quarantined_allocations, 1, "{g:?}");
    // The backend dies: its mappings go, and a poll ends the grants and
    // frees the pages.
    drop(back.take());
    let _ = dev.poll(&mut xs);
    let g = dev.grant_stats().unwrap();
    assert_eq!(g.quarantined, 0, "{g:?}");
    assert_eq!(g.quarantined_allocations, 0, "{g:?}");
    assert_eq!(g.recovered, 2);
    assert!(g.granted <= before.granted);
}
