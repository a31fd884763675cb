//! Event channels across processes: the parent is dom1 (and the
//! hypervisor), a child process is dom2.

#[path = "platform_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{child_dir, hear, param, role, say, ChildDomain, TestDir};
use grant_tables::{DomId, EventChannels, PlatformError, Port};
use hosted::{EventStats, HostedHypervisor, HostedPlatform};

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId(2);
const CHILD_TEST: &str = "child";
const MS: u64 = 1_000_000;

/// Spins on `poll` until the port is pending; bounded.
fn spin_until_pending(p: &HostedPlatform, port: Port) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spins = 0u32;
    while !p.poll(port).unwrap() {
        spins = spins.wrapping_add(1);
        if spins % 1024 == 0 {
            assert!(Instant::now() < deadline, "no event on {port} within 30 s");
            // Two spinning processes may share fewer cores than that.
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Waits (bounded) until a thread of `dom` waits in `block` on `port`, as
/// `notify` sees it: from then on a notify writes its eventfd. Then leaves
/// it a moment to get from its last check of `pending` into `epoll_wait`.
fn wait_for_waiter(p: &HostedPlatform, dom: DomId, port: Port) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match p.waiters(dom, port) {
            Some(0) => {}
            Some(_) => break,
            None => panic!("{dom} {port} does not exist"),
        }
        assert!(Instant::now() < deadline, "{dom} did not block on {port} within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
}

fn parse_port(s: &str) -> Port {
    Port(s.parse().unwrap_or_else(|_| panic!("not a port: {s:?}")))
}

/// The child entry point: binds to the parent's port and runs the role.
#[test]
fn child() {
    let Some(role) = role() else { return };
    let back = HostedPlatform::join(child_dir(), BACK).expect("child joins as dom2");
    let remote = Port(param("PORT") as u32);
    let local = back.bind_interdomain(FRONT, remote).expect("bind to the parent's port");
    // Xen marks a freshly bound port pending.
    assert!(back.poll(local).unwrap(), "a new binding is pending");
    assert!(!back.poll(local).unwrap());
    say(&format!("bound {}", local.0));
    match role.as_str() {
        "basic" => child_basic(&back, local),
        "pingpong" => child_pingpong(&back, local),
        "blocking" => child_blocking(&back, local),
        "mask" => child_mask(&back, local),
        "close" => child_close(&back, local, remote),
        "crash" => child_crash(&back),
        "any" => child_any(&back, local),
        "any-race" => child_any_race(&back, local),
        other => panic!("unknown role {other}"),
    }
}

fn spawn(role: &str, dir: &TestDir, port: Port) -> (ChildDomain, Port) {
    let mut child = ChildDomain::spawn(CHILD_TEST, role, dir, &[("PORT", port.0.to_string())]);
    let bound = child.reply();
    let local = parse_port(bound.strip_prefix("bound ").expect("bound reply"));
    (child, local)
}

fn setup(tag: &str) -> (TestDir, HostedHypervisor, HostedPlatform, Port) {
    let dir = TestDir::new(tag);
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let port = front.alloc_unbound(BACK).unwrap();
    (dir, hv, front, port)
}

#[test]
fn notify_poll_and_block_with_timeout_across_processes() {
    let (dir, _hv, front, port) = setup("ev-basic");
    assert!(!front.poll(port).unwrap());
    // Unbound: notifying drops the event.
    front.notify(port).unwrap();
    let (mut child, _) = spawn("basic", &dir, port);
    front.notify(port).unwrap();
    assert!(front.block(port, Some(5_000 * MS)).unwrap(), "the child's notify arrives");
    child.expect("got it");
    assert!(!front.poll(port).unwrap());
    child.expect("timed out");
    child.finish();
}

fn child_basic(back: &HostedPlatform, local: Port) {
    assert!(back.block(local, Some(5_000 * MS)).unwrap(), "the parent's notify arrives");
    back.notify(local).unwrap();
    say("got it");
    let t = Instant::now();
    assert!(!back.block(local, Some(50 * MS)).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(50), "returned early: {:?}", t.elapsed());
    assert!(!back.block(local, Some(0)).unwrap());
    say("timed out");
}

#[test]
fn pure_polling_exchange_sends_no_wakeups() {
    const ROUNDS: u32 = 20_000;
    let (dir, _hv, front, port) = setup("ev-pingpong");
    let (mut child, _) = spawn("pingpong", &dir, port);
    child.send(&ROUNDS.to_string());
    for _ in 0..ROUNDS {
        front.notify(port).unwrap();
        spin_until_pending(&front, port);
    }
    child.expect("stats 0 0");
    assert_eq!(front.event_stats(), EventStats { wakeups_sent: 0, sleeps: 0 }, "no eventfd write for a peer that never blocks");
    child.finish();
}

fn child_pingpong(back: &HostedPlatform, local: Port) {
    let rounds: u32 = hear().parse().unwrap();
    for _ in 0..rounds {
        spin_until_pending(back, local);
        back.notify(local).unwrap();
    }
    let s = back.event_stats();
    say(&format!("stats {} {}", s.wakeups_sent, s.sleeps));
}

#[test]
fn a_sleeping_peer_is_woken_by_one_eventfd_write() {
    let (dir, _hv, front, port) = setup("ev-block");
    let (mut child, local) = spawn("blocking", &dir, port);
    let mut sent = 0;
    for _ in 0..2 {
        child.expect("blocking");
        // Notify only once the child waits: a notify before that finds no
        // waiter and rightly writes no eventfd.
        wait_for_waiter(&front, BACK, local);
        front.notify(port).unwrap();
        let slept = child.reply();
        let now = front.event_stats().wakeups_sent;
        match slept.as_str() {
            "woken after sleeping" => assert_eq!(now - sent, 1, "the sleeping child needed exactly one eventfd write"),
            // It had raised `waiting` but not yet made its last check: it
            // saw the event without sleeping (an eventfd write is allowed,
            // not needed).
            "woken without sleeping" => assert!(now - sent <= 1),
            other => panic!("unexpected reply {other:?}"),
        }
        sent = now;
    }
    child.finish();
}

fn child_blocking(back: &HostedPlatform, local: Port) {
    for timeout in [Some(10_000 * MS), None] {
        let before = back.event_stats().sleeps;
        say("blocking");
        assert!(back.block(local, timeout).unwrap());
        say(if back.event_stats().sleeps > before { "woken after sleeping" } else { "woken without sleeping" });
    }
}

/// Xen's mask holds back upcalls only: events stay pending, and
/// `SCHEDOP_poll` (`block`) returns for a pending port whether or not it
/// is masked.
#[test]
fn a_masked_port_stays_pending_and_still_wakes_a_blocked_waiter() {
    let (dir, _hv, front, port) = setup("ev-mask");
    let (mut child, local) = spawn("mask", &dir, port);
    child.expect("masked");
    for _ in 0..100 {
        front.notify(port).unwrap();
    }
    child.send("sent");
    child.expect("pending while masked");
    child.expect("blocking masked");
    wait_for_waiter(&front, BACK, local);
    let before = front.event_stats().wakeups_sent;
    front.notify(port).unwrap();
    child.expect("woken while masked");
    assert!(front.event_stats().wakeups_sent <= before + 1);
    child.expect("blocking masked, event pending");
    front.notify(port).unwrap();
    child.send("sent");
    child.expect("returned at once");
    child.finish();
}

fn child_mask(back: &HostedPlatform, local: Port) {
    back.mask(local).unwrap();
    say("masked");
    assert_eq!(hear(), "sent");
    // Masking does not stop events from becoming pending (they coalesce).
    assert!(back.poll(local).unwrap(), "a masked port stays pending");
    assert!(!back.poll(local).unwrap());
    say("pending while masked");

    // A waiter blocked on a masked port is woken by a notify.
    say("blocking masked");
    let t = Instant::now();
    assert!(back.block(local, Some(10_000 * MS)).unwrap(), "a notify wakes a waiter on a masked port");
    assert!(t.elapsed() < Duration::from_secs(5), "woken by the notify, not the timeout: {:?}", t.elapsed());
    say("woken while masked");

    // And `block` returns at once for an event already pending.
    say("blocking masked, event pending");
    assert_eq!(hear(), "sent");
    let sleeps = back.event_stats().sleeps;
    let t = Instant::now();
    assert!(back.block(local, Some(10_000 * MS)).unwrap());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(back.event_stats().sleeps, sleeps, "no sleep for a pending event");
    back.unmask(local).unwrap();
    assert!(!back.poll(local).unwrap(), "unmask delivers nothing more");
    say("returned at once");
}

#[test]
fn close_unbinds_the_other_end_and_binding_is_checked() {
    let (dir, _hv, front, port) = setup("ev-close");
    let for_dom3 = front.alloc_unbound(DomId(3)).unwrap();
    let mut child = ChildDomain::spawn(
        CHILD_TEST,
        "close",
        &dir,
        &[("PORT", port.0.to_string()), ("DOM3_PORT", for_dom3.0.to_string())],
    );
    let _ = child.reply();
    child.expect("closed");
    // The child's end is gone: our port is unbound again, events drop.
    front.notify(port).unwrap();
    child.send("rebind");
    child.expect("rebound");
    front.notify(port).unwrap();
    child.expect("got it");
    // Now we close ours: the child's end becomes unbound, offered to us.
    front.close(port).unwrap();
    assert_eq!(front.poll(port), Err(PlatformError::BadPort(port)));
    assert_eq!(front.notify(port), Err(PlatformError::BadPort(port)));
    assert_eq!(front.close(port), Err(PlatformError::BadPort(port)));
    child.send("parent closed");
    let their = parse_port(&child.reply());
    let again = front.bind_interdomain(BACK, their).expect("the child's unbound end is offered back to us");
    assert!(front.poll(again).unwrap());
    front.notify(again).unwrap();
    child.expect("got it");
    child.finish();
}

fn child_close(back: &HostedPlatform, local: Port, remote: Port) {
    let dom3_port = Port(param("DOM3_PORT") as u32);
    let refused = |r: Result<Port, PlatformError>| match r {
        Err(PlatformError::BindRefused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused(back.bind_interdomain(FRONT, remote)), "the port is already bound");
    assert_eq!(refused(back.bind_interdomain(FRONT, dom3_port)), "the port is offered to another domain");
    assert_eq!(refused(back.bind_interdomain(FRONT, Port(500))), "no such port (not allocated)");
    assert_eq!(refused(back.bind_interdomain(FRONT, Port(0))), "no such port");
    assert_eq!(refused(back.bind_interdomain(FRONT, Port(1 << 20))), "no such port");
    assert_eq!(refused(back.bind_interdomain(DomId(9), remote)), "the domain does not exist");
    back.close(local).unwrap();
    assert_eq!(back.notify(local), Err(PlatformError::BadPort(local)));
    assert_eq!(back.block(local, Some(MS)), Err(PlatformError::BadPort(local)));
    say("closed");
    assert_eq!(hear(), "rebind");
    let l2 = back.bind_interdomain(FRONT, remote).unwrap();
    assert!(back.poll(l2).unwrap());
    say("rebound");
    assert!(back.block(l2, Some(5_000 * MS)).unwrap());
    say("got it");
    assert_eq!(hear(), "parent closed");
    // Our end is now unbound: notifying drops the event.
    back.notify(l2).unwrap();
    say(&l2.0.to_string());
    assert!(back.block(l2, Some(5_000 * MS)).unwrap(), "the parent rebinds and notifies");
    say("got it");
}

/// A peer that is killed (no chance to close its channels) leaves no
/// binding behind: as when Xen destroys a domain, our ends become unbound,
/// offered to its domid again; events do not reach a new domain that comes
/// back with the same domid, and it can bind our ports afresh.
#[test]
fn a_killed_peers_channels_are_unbound_and_do_not_reach_its_successor() {
    let (dir, hv, front, port) = setup("ev-crash");
    let (mut child, child_port) = spawn("crash", &dir, port);
    // The child also offers a port to us, which we bind.
    let offered = parse_port(child.reply().strip_prefix("offered ").expect("offered reply"));
    let ours = front.bind_interdomain(BACK, offered).unwrap();
    assert!(front.poll(ours).unwrap());
    front.notify(port).unwrap();
    front.notify(ours).unwrap();
    child.expect("got it");

    // SIGKILL (dropping the handle kills and reaps the child).
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while hv.domains().contains(&BACK) {
        assert!(Instant::now() < deadline, "the hypervisor did not notice the child's death within 10 s");
        std::thread::sleep(Duration::from_millis(2));
    }

    // A new dom2 takes the same port numbers the dead one used.
    let b2 = hv.join(BACK).unwrap();
    assert_eq!(b2.alloc_unbound(FRONT).unwrap(), child_port);
    assert_eq!(b2.alloc_unbound(FRONT).unwrap(), offered);
    front.notify(port).unwrap();
    front.notify(ours).unwrap();
    assert!(!b2.poll(child_port).unwrap(), "an event for the dead dom2 reached the new one");
    assert!(!b2.poll(offered).unwrap(), "an event for the dead dom2 reached the new one");

    // Our port is offered to dom2 again: the new one binds it.
    let rebound = b2.bind_interdomain(FRONT, port).expect("our port is unbound again");
    assert!(b2.poll(rebound).unwrap());
    front.notify(port).unwrap();
    assert!(b2.poll(rebound).unwrap());
    b2.notify(rebound).unwrap();
    assert!(front.poll(port).unwrap());
    // The port we had bound is unbound, offered to dom2: closing it
    // leaves the new dom2's port of the same number alone.
    front.close(ours).unwrap();
    let back_again = front.bind_interdomain(BACK, offered).expect("the new dom2's port is still offered to us");
    assert!(front.poll(back_again).unwrap());
    front.notify(back_again).unwrap();
    assert!(b2.poll(offered).unwrap());
}

fn child_crash(back: &HostedPlatform) {
    let offered = back.alloc_unbound(FRONT).unwrap();
    say(&format!("offered {}", offered.0));
    assert!(back.block(offered, Some(10_000 * MS)).unwrap());
    say("got it");
    // Wait to be killed.
    let _ = hear();
    std::process::abort();
}

/// Two domains in one process (threads), for what needs no process
/// boundary.
fn two_domains(tag: &str) -> (TestDir, HostedHypervisor, HostedPlatform, HostedPlatform, Port, Port) {
    let dir = TestDir::new(tag);
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let a = hv.join(FRONT).unwrap();
    let b = hv.join(BACK).unwrap();
    let pa = a.alloc_unbound(BACK).unwrap();
    let pb = b.bind_interdomain(FRONT, pa).unwrap();
    assert!(b.poll(pb).unwrap());
    (dir, hv, a, b, pa, pb)
}

#[test]
fn closing_a_port_wakes_its_blocked_waiter_with_an_error() {
    let (_dir, _hv, a, _b, pa, _pb) = two_domains("ev-close-wake");
    let a2 = a.clone();
    let waiter = std::thread::spawn(move || a2.block(pa, None));
    std::thread::sleep(Duration::from_millis(100));
    a.close(pa).unwrap();
    assert_eq!(waiter.join().unwrap(), Err(PlatformError::BadPort(pa)));
}

#[test]
fn a_notify_storm_coalesces_into_one_event() {
    let (_dir, _hv, a, b, pa, pb) = two_domains("ev-storm");
    for _ in 0..100_000 {
        a.notify(pa).unwrap();
    }
    assert!(b.poll(pb).unwrap());
    assert!(!b.poll(pb).unwrap());
    assert_eq!(a.event_stats().wakeups_sent, 0);
}

#[test]
fn loopback_channel_within_one_domain() {
    let dir = TestDir::new("ev-loop");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let a = hv.join(FRONT).unwrap();
    let p = a.alloc_unbound(FRONT).unwrap();
    let q = a.bind_interdomain(FRONT, p).unwrap();
    assert!(a.poll(q).unwrap());
    a.notify(q).unwrap();
    assert!(a.block(p, Some(MS)).unwrap());
    a.notify(p).unwrap();
    assert!(a.poll(q).unwrap());
}

#[test]
fn ports_are_bounded_and_reused_after_close() {
    let (_dir, _hv, a, _b, _pa, _pb) = two_domains("ev-many");
    let mut ports = Vec::new();
    loop {
        match a.alloc_unbound(BACK) {
            Ok(p) => ports.push(p),
            Err(PlatformError::NoFreePorts) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // Port 0 is never used; one port was taken by the binding above.
    assert_eq!(ports.len() as u32, hosted::NR_PORTS - 2);
    assert!(ports.iter().all(|p| p.0 != 0));
    let freed = ports.pop().unwrap();
    a.close(freed).unwrap();
    assert_eq!(a.alloc_unbound(BACK).unwrap(), freed);
    assert_eq!(a.poll(Port(0)), Err(PlatformError::BadPort(Port(0))));
    assert_eq!(a.poll(Port(u32::MAX)), Err(PlatformError::BadPort(Port(u32::MAX))));
}

/// Binds `n - 1` more of the parent's ports (their numbers come as a
/// comma-separated list) after `first`: the child's ports, in the parent's
/// order.
fn bind_more(back: &HostedPlatform, first: Port) -> Vec<Port> {
    let mut ports = vec![first];
    for p in hear().split(',') {
        let p = back.bind_interdomain(FRONT, parse_port(p)).expect("bind");
        assert!(back.poll(p).unwrap(), "a new binding is pending");
        ports.push(p);
    }
    ports
}

/// The parent's side of `bind_more`: `n - 1` more ports offered to the
/// child, sent to it; returns all `n` parent ports and the child's.
fn offer_more(front: &HostedPlatform, child: &mut ChildDomain, first: Port, child_first: Port, n: usize) -> (Vec<Port>, Vec<Port>) {
    let more: Vec<Port> = (1..n).map(|_| front.alloc_unbound(BACK).unwrap()).collect();
    child.send(&more.iter().map(|p| p.0.to_string()).collect::<Vec<_>>().join(","));
    let theirs: Vec<Port> = child.reply().split(',').map(parse_port).collect();
    assert_eq!(theirs[0], child_first);
    let mut ours = vec![first];
    ours.extend(more);
    (ours, theirs)
}

/// `block_any` in a child process wakes for whichever of its ports the
/// parent notifies, sleeping (one eventfd write each) rather than spinning,
/// and returns pending ports at once, masked or not.
#[test]
fn block_any_wakes_for_each_of_several_ports_across_processes() {
    const N: usize = 4;
    let (dir, _hv, front, port) = setup("ev-any");
    let (mut child, child_first) = spawn("any", &dir, port);
    let (ours, theirs) = offer_more(&front, &mut child, port, child_first, N);
    // Each port in turn, in an order that is not the slice's.
    let mut slept = 0;
    for i in [2, 0, 3, 1] {
        child.expect("blocking");
        for &p in &theirs {
            wait_for_waiter(&front, BACK, p);
        }
        let before = front.event_stats().wakeups_sent;
        front.notify(ours[i]).unwrap();
        let reply = child.reply();
        let rest = reply.strip_prefix(&format!("woken by {} ", theirs[i].0)).unwrap_or_else(|| panic!("{reply:?}"));
        // Almost always asleep by now; a child descheduled between its
        // last look at the pending bits and `ppoll` sees the event on that
        // look instead.
        slept += match rest {
            "after sleeping" => 1,
            "without sleeping" => 0,
            other => panic!("unexpected reply {other:?}"),
        };
        assert_eq!(front.event_stats().wakeups_sent, before + 1, "a waiter that may sleep gets one eventfd write");
    }
    assert!(slept > 0, "the child never slept in block_any");
    // Two pending, masked: returned at once, one per call, in slice order.
    child.expect("masked");
    front.notify(ours[3]).unwrap();
    front.notify(ours[1]).unwrap();
    child.send("sent");
    child.expect(&format!("pending {} then {}", theirs[1].0, theirs[3].0));
    child.finish();
}

fn child_any(back: &HostedPlatform, first: Port) {
    let ports = bind_more(back, first);
    say(&ports.iter().map(|p| p.0.to_string()).collect::<Vec<_>>().join(","));
    for _ in 0..ports.len() {
        say("blocking");
        let sleeps = back.event_stats().sleeps;
        let t = Instant::now();
        let got = back.block_any(&ports, Some(20_000 * MS)).unwrap().expect("woken by a notify, not the timeout");
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        let slept = back.event_stats().sleeps > sleeps;
        // Nothing else is pending.
        assert_eq!(back.block_any(&ports, Some(0)).unwrap(), None);
        say(&format!("woken by {} {}", got.0, if slept { "after sleeping" } else { "without sleeping" }));
    }
    for &p in &ports {
        back.mask(p).unwrap();
    }
    say("masked");
    assert_eq!(hear(), "sent");
    let sleeps = back.event_stats().sleeps;
    let a = back.block_any(&ports, Some(20_000 * MS)).unwrap().expect("a masked pending port");
    let b = back.block_any(&ports, Some(20_000 * MS)).unwrap().expect("the other stays pending");
    assert_eq!(back.event_stats().sleeps, sleeps, "no sleep for pending ports");
    assert_eq!(back.block_any(&ports, Some(0)).unwrap(), None);
    say(&format!("pending {} then {}", a.0, b.0));
}

/// A ping-pong where both processes always sleep in `block_any` over three
/// ports and answer on the next one: a notify that raced with the other
/// side going to sleep and was lost would end that round with `None` after
/// its whole (10 s) timeout. Thousands of rounds, each of them a race.
#[test]
fn block_any_never_loses_a_notify_racing_with_the_sleep() {
    const N: usize = 3;
    const ROUNDS: usize = 3_000;
    let (dir, _hv, front, port) = setup("ev-any-race");
    let (mut child, child_first) = spawn("any-race", &dir, port);
    let (ours, theirs) = offer_more(&front, &mut child, port, child_first, N);
    let _ = theirs;
    child.send(&ROUNDS.to_string());
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..ROUNDS {
        let r = Instant::now();
        front.notify(ours[i % N]).unwrap();
        let got = front.block_any(&ours, Some(10_000 * MS)).unwrap();
        assert_eq!(got, Some(ours[(i + 1) % N]), "round {i}: the child's answer was lost");
        slowest = slowest.max(r.elapsed());
    }
    let reply = child.reply();
    let child_sleeps: u64 = reply.strip_prefix("sleeps ").expect("sleeps reply").parse().unwrap();
    let elapsed = t.elapsed();
    eprintln!(
        "{ROUNDS} rounds in {elapsed:?} (slowest {slowest:?}); sleeps: parent {}, child {child_sleeps}",
        front.event_stats().sleeps
    );
    assert!(front.event_stats().sleeps + child_sleeps > 0, "the sleeping path was never taken");
    child.finish();
}

fn child_any_race(back: &HostedPlatform, first: Port) {
    const N: usize = 3;
    let ports = bind_more(back, first);
    say(&ports.iter().map(|p| p.0.to_string()).collect::<Vec<_>>().join(","));
    let rounds: usize = hear().parse().unwrap();
    for i in 0..rounds {
        let got = back.block_any(&ports, Some(10_000 * MS)).unwrap();
        assert_eq!(got, Some(ports[i % N]), "round {i}: the parent's notify was lost");
        back.notify(ports[(i + 1) % N]).unwrap();
    }
    say(&format!("sleeps {}", back.event_stats().sleeps));
}

#[test]
fn block_any_times_out() {
    let (_dir, _hv, a, b, pa, pb) = two_domains("ev-any-timeout");
    let pb2 = b.alloc_unbound(FRONT).unwrap();
    let pa2 = a.bind_interdomain(BACK, pb2).unwrap();
    assert!(a.poll(pa2).unwrap());
    let _ = (pa, pa2);
    for timeout in [MS, 30 * MS] {
        let t = Instant::now();
        assert_eq!(b.block_any(&[pb, pb2], Some(timeout)).unwrap(), None);
        assert!(t.elapsed() >= Duration::from_nanos(timeout), "returned early: {:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    let sleeps = b.event_stats().sleeps;
    assert_eq!(b.block_any(&[pb, pb2], Some(0)).unwrap(), None);
    assert_eq!(b.event_stats().sleeps, sleeps, "a zero timeout does not sleep");
}

#[test]
fn block_any_refuses_bad_ports_and_wakes_with_an_error_when_one_closes() {
    let (_dir, _hv, a, b, pa, pb) = two_domains("ev-any-bad");
    assert!(matches!(a.block_any(&[], Some(MS)), Err(PlatformError::InvalidRequest { .. })));
    assert!(matches!(a.block_any(&[], None), Err(PlatformError::InvalidRequest { .. })));
    let free = Port(pa.0 + 10);
    for bad in [free, Port(0), Port(hosted::NR_PORTS), Port(u32::MAX)] {
        assert_eq!(a.block_any(&[pa, bad], Some(MS)), Err(PlatformError::BadPort(bad)));
    }
    // The whole list is checked even when a port before a bad one is
    // pending; the event stays pending.
    b.notify(pb).unwrap();
    assert_eq!(a.block_any(&[pa, free], None), Err(PlatformError::BadPort(free)));
    assert!(a.poll(pa).unwrap());

    // A port closed while its waiter sleeps wakes it with an error.
    let pa2 = a.alloc_unbound(BACK).unwrap();
    let a2 = a.clone();
    let waiter = std::thread::spawn(move || a2.block_any(&[pa, pa2], None));
    wait_for_waiter(&b, FRONT, pa2);
    a.close(pa2).unwrap();
    assert_eq!(waiter.join().unwrap(), Err(PlatformError::BadPort(pa2)));
    // Closed: refused from now on.
    assert_eq!(a.block_any(&[pa2], Some(0)), Err(PlatformError::BadPort(pa2)));
}
