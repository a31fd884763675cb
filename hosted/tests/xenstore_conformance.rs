//! Conformance of the hosted xenstore daemon: operations, watches,
//! transactions, permissions, domains, quotas, and bad input that must
//! cost only the offending client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hosted::xenstore::{connect, connect_as, Quotas, UnixXenstore, XenstoreDaemon};
use xenbus::wire::{join_strings, Decoder, Header, Message, MsgType};
use xenbus::{Errno, Perm, PermAccess, Wait, XsError};

fn socket_path() -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "xs-conf-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

fn daemon() -> XenstoreDaemon {
    XenstoreDaemon::spawn(socket_path()).expect("spawn daemon")
}

fn dom0(d: &XenstoreDaemon) -> UnixXenstore {
    connect(d.socket()).expect("connect")
}

fn dom(d: &XenstoreDaemon, id: u16) -> UnixXenstore {
    connect_as(d.socket(), id).expect("connect as domain")
}

/// Events for `token` arriving within `window` (all of them, in order).
fn events(xs: &mut UnixXenstore, token: &str, window: Duration) -> Vec<String> {
    let end = Instant::now() + window;
    let mut out = Vec::new();
    loop {
        while let Some(e) = xs.take_event_for(token) {
            out.push(e.path);
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        xs.pump_wait(Wait::For(left.min(Duration::from_millis(20))))
            .unwrap();
    }
}

/// Waits until `token` has produced `n` events (or 2 s passed).
fn wait_events(xs: &mut UnixXenstore, token: &str, n: usize) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(2);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < end {
        while let Some(e) = xs.take_event_for(token) {
            out.push(e.path);
        }
        if out.len() < n {
            xs.pump_wait(Wait::For(Duration::from_millis(20))).unwrap();
        }
    }
    out
}

fn errno<T: std::fmt::Debug>(r: Result<T, XsError>) -> Errno {
    r.unwrap_err().errno().expect("an errno reply")
}

// ---------------------------------------------------------------- basics

#[test]
fn read_write_mkdir_directory_rm() {
    let d = daemon();
    let mut xs = dom0(&d);
    xs.write("/a/b/c", "v1").unwrap();
    assert_eq!(xs.read("/a/b/c").unwrap(), b"v1");
    assert_eq!(xs.read("/a/b").unwrap(), b"", "parents are created empty");
    xs.write("/a/b/d", b"").unwrap();
    xs.mkdir("/a/e").unwrap();
    xs.mkdir("/a/e").unwrap();
    assert_eq!(xs.directory("/a").unwrap(), ["b", "e"]);
    assert_eq!(xs.directory("/a/b").unwrap(), ["c", "d"]);
    assert_eq!(xs.directory("/a/b/c").unwrap(), Vec::<String>::new());
    // Values may hold any bytes.
    xs.write("/a/bin", [0u8, 1, 2, 255]).unwrap();
    assert_eq!(xs.read("/a/bin").unwrap(), [0u8, 1, 2, 255]);
    xs.rm("/a/b").unwrap();
    assert_eq!(errno(xs.read("/a/b/c")), Errno::ENOENT);
    assert_eq!(xs.directory("/a").unwrap(), ["e", "bin"]);
    // Removing something absent is fine if the parent exists ...
    xs.rm("/a/nothing").unwrap();
    // ... and ENOENT if not.
    assert_eq!(errno(xs.rm("/a/nothing/deeper")), Errno::ENOENT);
    assert_eq!(errno(xs.rm("/")), Errno::EINVAL);
    // Relative paths are under the caller's home.
    xs.write("rel/x", "1").unwrap();
    assert_eq!(xs.read("/local/domain/0/rel/x").unwrap(), b"1");
    assert_eq!(xs.get_domain_path(7).unwrap(), "/local/domain/7");
    d.with_core(|c| c.check_tree()).unwrap();
}

#[test]
fn bad_paths_are_einval() {
    let d = daemon();
    let mut xs = dom0(&d);
    let mut raw = RawClient::new(&d);
    for bad in [
        &b"/a//b"[..],
        b"/a/",
        b"/a b",
        b"/a\xff",
        b"",
        b"@releaseDomain",
    ] {
        let mut p = bad.to_vec();
        p.push(0);
        let r = raw.call(MsgType::Read, 0, &p);
        assert_eq!(r.msg_type, MsgType::Error, "{bad:?}");
        assert_eq!(r.payload, b"EINVAL\0", "{bad:?}");
    }
    // Too long: absolute over 3072, relative over 2048.
    let long = format!("/{}", "x".repeat(3072));
    let r = raw.call(MsgType::Write, 0, &join_strings(&[long.as_str()]));
    assert_eq!(r.payload, b"EINVAL\0");
    let rel = "y".repeat(2049);
    let r = raw.call(MsgType::Write, 0, &join_strings(&[rel.as_str()]));
    assert_eq!(r.payload, b"EINVAL\0");
    // Missing NUL, extra strings.
    assert_eq!(raw.call(MsgType::Read, 0, b"/a").payload, b"EINVAL\0");
    assert_eq!(raw.call(MsgType::Read, 0, b"/a\0/b\0").payload, b"EINVAL\0");
    assert_eq!(raw.call(MsgType::Write, 0, b"/no-nul").payload, b"EINVAL\0");
    // The connection is still fine.
    xs.write("/ok", "1").unwrap();
    assert_eq!(raw.call(MsgType::Read, 0, b"/ok\0").payload, b"1");
}

#[test]
fn large_directories_come_in_parts() {
    let d = daemon();
    let mut xs = dom0(&d);
    let names: Vec<String> = (0..400)
        .map(|i| format!("a-rather-long-child-name-{i:04}"))
        .collect();
    xs.transaction(|tx| {
        for n in &names {
            tx.write(&format!("/big/{n}"), "")?;
        }
        Ok(())
    })
    .unwrap();
    // One XS_DIRECTORY reply would exceed 4096 bytes: the client falls
    // back to XS_DIRECTORY_PART.
    assert_eq!(xs.directory("/big").unwrap(), names);
}

// ---------------------------------------------------------------- watches

#[test]
fn watch_fires_initially_and_for_every_change_below() {
    let d = daemon();
    let mut w = dom0(&d);
    let mut xs = dom0(&d);
    xs.mkdir("/w").unwrap();
    w.watch("/w", "tok").unwrap();
    assert_eq!(wait_events(&mut w, "tok", 1), ["/w"], "initial event");
    xs.write("/w/a", "1").unwrap();
    xs.write("/w/a", "2").unwrap();
    xs.write("/w/b/c", "3").unwrap();
    xs.write("/wx", "sibling prefix, not a child").unwrap();
    xs.set_perms("/w/a", &[Perm::new(0, PermAccess::Read)])
        .unwrap();
    xs.rm("/w/b").unwrap();
    let got = events(&mut w, "tok", Duration::from_millis(300));
    assert_eq!(got, ["/w/a", "/w/a", "/w/b/c", "/w/a", "/w/b"]);
    // Removing the watched node's parent fires the watch (exact event for
    // the removed descendant).
    xs.rm("/w").unwrap();
    assert_eq!(events(&mut w, "tok", Duration::from_millis(200)), ["/w"]);
    // Nodes that do not exist yet can be watched; creation fires.
    w.watch("/later/x", "t2").unwrap();
    assert_eq!(wait_events(&mut w, "t2", 1), ["/later/x"]);
    xs.write("/later/x/y", "").unwrap();
    assert_eq!(wait_events(&mut w, "t2", 1), ["/later/x/y"]);
    w.unwatch("/later/x", "t2").unwrap();
    xs.write("/later/x/z", "").unwrap();
    assert!(events(&mut w, "t2", Duration::from_millis(150)).is_empty());
    assert_eq!(errno(w.unwatch("/later/x", "t2")), Errno::ENOENT);
}

#[test]
fn rm_fires_exact_watches_on_descendants() {
    let d = daemon();
    let mut w = dom0(&d);
    let mut xs = dom0(&d);
    xs.write("/be/vif/1/0/state", "4").unwrap();
    w.watch("/be/vif/1/0/state", "st").unwrap();
    w.watch("/be/vif/1/0/other", "other").unwrap();
    wait_events(&mut w, "st", 1);
    wait_events(&mut w, "other", 1);
    xs.rm("/be/vif/1").unwrap();
    assert_eq!(wait_events(&mut w, "st", 1), ["/be/vif/1/0/state"]);
    // A watch on a node that did not exist gets nothing from the removal.
    assert!(events(&mut w, "other", Duration::from_millis(150)).is_empty());
}

#[test]
fn relative_watches_report_relative_paths() {
    let d = daemon();
    let mut xs = dom0(&d);
    xs.mkdir("/local/domain/3").unwrap();
    xs.set_perms("/local/domain/3", &[Perm::new(3, PermAccess::None)])
        .unwrap();
    let mut guest = dom(&d, 3);
    guest.watch("device", "dev").unwrap();
    assert_eq!(wait_events(&mut guest, "dev", 1), ["device"]);
    guest.write("device/vif/0/state", "1").unwrap();
    assert_eq!(wait_events(&mut guest, "dev", 1), ["device/vif/0/state"]);
}

#[test]
fn duplicate_watch_is_eexist() {
    let d = daemon();
    let mut xs = dom0(&d);
    xs.watch("/x", "t").unwrap();
    assert_eq!(errno(xs.watch("/x", "t")), Errno::EEXIST);
    xs.watch("/x", "t-other").unwrap();
}

#[test]
fn introduce_and_release_fire_special_watches() {
    let d = daemon();
    let mut w = dom0(&d);
    w.watch("@introduceDomain", "intro").unwrap();
    w.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(wait_events(&mut w, "intro", 1), ["@introduceDomain"]);
    assert_eq!(wait_events(&mut w, "rel", 1), ["@releaseDomain"]);
    let mut xs = dom0(&d);
    assert!(!xs.is_domain_introduced(5).unwrap());
    xs.introduce(5, 1234, 7).unwrap();
    assert!(xs.is_domain_introduced(5).unwrap());
    assert_eq!(wait_events(&mut w, "intro", 1), ["@introduceDomain"]);
    // Re-introduction is harmless and silent.
    xs.introduce(5, 1234, 7).unwrap();
    assert!(events(&mut w, "intro", Duration::from_millis(150)).is_empty());

    // Domain 5 owns a node; its connection goes away on release.
    xs.mkdir("/local/domain/5").unwrap();
    xs.set_perms("/local/domain/5", &[Perm::new(5, PermAccess::None)])
        .unwrap();
    let mut five = dom(&d, 5);
    five.write("data", "x").unwrap();
    assert_eq!(xs.get_perms("/local/domain/5/data").unwrap()[0].domid, 5);
    xs.release(5).unwrap();
    assert_eq!(wait_events(&mut w, "rel", 1), ["@releaseDomain"]);
    assert!(!xs.is_domain_introduced(5).unwrap());
    let err = five.read("data").unwrap_err();
    assert!(err.is_fatal(), "{err}");
    // Its nodes passed to dom0.
    assert_eq!(xs.get_perms("/local/domain/5/data").unwrap()[0].domid, 0);
    assert_eq!(errno(xs.release(5)), Errno::ENOENT);
    assert_eq!(errno(xs.release(0)), Errno::EINVAL);
}

// ---------------------------------------------------------------- transactions

#[test]
fn transactions_are_isolated_and_commit_atomically() {
    let d = daemon();
    let mut a = dom0(&d);
    let mut b = dom0(&d);
    let mut w = dom0(&d);
    a.write("/t/x", "0").unwrap();
    w.watch("/t", "t").unwrap();
    wait_events(&mut w, "t", 1);
    let tx = a.transaction_start().unwrap();
    {
        let mut t = a.in_transaction(tx);
        t.write("/t/x", "1").unwrap();
        t.write("/t/y", "new").unwrap();
        assert_eq!(t.read("/t/x").unwrap(), b"1");
    }
    // Invisible outside until commit; no events yet.
    assert_eq!(b.read("/t/x").unwrap(), b"0");
    assert_eq!(errno(b.read("/t/y")), Errno::ENOENT);
    assert!(events(&mut w, "t", Duration::from_millis(150)).is_empty());
    a.transaction_end(tx, true).unwrap();
    assert_eq!(b.read("/t/x").unwrap(), b"1");
    assert_eq!(b.read("/t/y").unwrap(), b"new");
    assert_eq!(wait_events(&mut w, "t", 2), ["/t/x", "/t/y"]);
    // Abort discards.
    let tx = a.transaction_start().unwrap();
    a.in_transaction(tx).write("/t/x", "aborted").unwrap();
    a.transaction_end(tx, false).unwrap();
    assert_eq!(b.read("/t/x").unwrap(), b"1");
    // Ended transactions are gone.
    assert_eq!(errno(a.transaction_end(tx, true)), Errno::ENOENT);
}

#[test]
fn conflicting_transactions_get_eagain() {
    let d = daemon();
    let mut a = dom0(&d);
    let mut b = dom0(&d);
    a.write("/c/x", "0").unwrap();
    a.write("/c/other", "0").unwrap();

    // a reads x in a transaction, b changes x outside, a's commit fails.
    let tx = a.transaction_start().unwrap();
    assert_eq!(a.in_transaction(tx).read("/c/x").unwrap(), b"0");
    a.in_transaction(tx).write("/c/x", "from-a").unwrap();
    b.write("/c/x", "from-b").unwrap();
    assert_eq!(errno(a.transaction_end(tx, true)), Errno::EAGAIN);
    assert_eq!(
        b.read("/c/x").unwrap(),
        b"from-b",
        "the failed transaction changed nothing"
    );

    // Disjoint transactions both commit.
    let t1 = a.transaction_start().unwrap();
    let t2 = b.transaction_start().unwrap();
    a.in_transaction(t1).write("/c/x", "1").unwrap();
    b.in_transaction(t2).write("/c/other", "2").unwrap();
    a.transaction_end(t1, true).unwrap();
    b.transaction_end(t2, true).unwrap();

    // Creating the same new child from two transactions: one wins.
    let t1 = a.transaction_start().unwrap();
    let t2 = b.transaction_start().unwrap();
    a.in_transaction(t1).write("/c/new/a", "1").unwrap();
    b.in_transaction(t2).write("/c/new/b", "2").unwrap();
    a.transaction_end(t1, true).unwrap();
    assert_eq!(errno(b.transaction_end(t2, true)), Errno::EAGAIN);
    assert_eq!(a.directory("/c/new").unwrap(), ["a"]);

    // A transaction that only read a node conflicts with a removal of it.
    let t1 = a.transaction_start().unwrap();
    assert_eq!(a.in_transaction(t1).read("/c/other").unwrap(), b"2");
    b.rm("/c/other").unwrap();
    assert_eq!(errno(a.transaction_end(t1, true)), Errno::EAGAIN);
    d.with_core(|c| c.check_tree()).unwrap();
}

#[test]
fn transaction_helper_counts_correctly_under_contention() {
    let d = daemon();
    dom0(&d).write("/counter", "0").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let path = d.socket().to_path_buf();
            std::thread::spawn(move || {
                let mut xs = connect(&path).unwrap();
                for _ in 0..25 {
                    xs.transaction(|tx| {
                        let v: u32 = tx.read_string("/counter")?.parse().unwrap();
                        tx.write("/counter", (v + 1).to_string())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(dom0(&d).read("/counter").unwrap(), b"100");
}

#[test]
fn unknown_transaction_is_enoent_and_nested_start_is_ebusy() {
    let d = daemon();
    let mut raw = RawClient::new(&d);
    let r = raw.call(MsgType::Read, 4242, b"/\0");
    assert_eq!(r.payload, b"ENOENT\0");
    let r = raw.call(MsgType::TransactionStart, 0, b"\0");
    assert_eq!(r.msg_type, MsgType::TransactionStart);
    let id: u32 = std::str::from_utf8(r.payload.strip_suffix(&[0]).unwrap())
        .unwrap()
        .parse()
        .unwrap();
    let r = raw.call(MsgType::TransactionStart, id, b"\0");
    assert_eq!(r.payload, b"EBUSY\0");
    let r = raw.call(MsgType::TransactionEnd, id, b"X\0");
    assert_eq!(r.payload, b"EINVAL\0");
    let r = raw.call(MsgType::TransactionEnd, id, b"T\0");
    assert_eq!(r.payload, b"OK\0");
}

// ---------------------------------------------------------------- permissions

#[test]
fn permissions_refuse_other_domains() {
    let d = daemon();
    let mut xs = dom0(&d);
    xs.write("/secret", "s").unwrap();
    xs.write("/local/domain/1/device/vif/0/state", "1").unwrap();
    xs.set_perms("/local/domain/1", &[Perm::new(1, PermAccess::None)])
        .unwrap();
    let mut one = dom(&d, 1);
    let mut two = dom(&d, 2);

    // dom0's node: no access for others.
    assert_eq!(errno(one.read("/secret")), Errno::EACCES);
    assert_eq!(errno(one.write("/secret", "x")), Errno::EACCES);
    assert_eq!(errno(one.directory("/")), Errno::EACCES);
    // A missing node under an unreadable parent is EACCES, not ENOENT.
    assert_eq!(errno(one.read("/secret/missing")), Errno::EACCES);
    // Creating under someone else's node is refused.
    assert_eq!(errno(one.write("/local/domain/2/x", "y")), Errno::EACCES);

    // dom0 grants dom1 read access.
    xs.set_perms(
        "/secret",
        &[
            Perm::new(0, PermAccess::None),
            Perm::new(1, PermAccess::Read),
        ],
    )
    .unwrap();
    assert_eq!(one.read("/secret").unwrap(), b"s");
    assert_eq!(errno(one.write("/secret", "x")), Errno::EACCES);
    assert_eq!(errno(two.read("/secret")), Errno::EACCES);
    // The owner entry's access applies to everyone not listed.
    xs.set_perms(
        "/secret",
        &[
            Perm::new(0, PermAccess::Read),
            Perm::new(1, PermAccess::None),
        ],
    )
    .unwrap();
    assert_eq!(two.read("/secret").unwrap(), b"s");
    assert_eq!(errno(one.read("/secret")), Errno::EACCES);

    // dom1 in its home: a readable parent reveals ENOENT ...
    assert_eq!(errno(one.read("nothing")), Errno::ENOENT);
    // ... but nodes dom0 created below it are dom0's (they inherited the
    // permissions of /local/domain when created).
    assert_eq!(errno(one.read("device/vif/9")), Errno::EACCES);
    one.write("data/x", "1").unwrap();
    let perms = one.get_perms("data/x").unwrap();
    assert_eq!(
        perms[0],
        Perm::new(1, PermAccess::None),
        "unprivileged creators own what they create"
    );
    // dom2 cannot see dom1's home.
    assert_eq!(errno(two.read("/local/domain/1/data/x")), Errno::EACCES);
    // dom1 may open its node to dom2, but not give it away.
    one.set_perms(
        "data/x",
        &[
            Perm::new(1, PermAccess::None),
            Perm::new(2, PermAccess::Both),
        ],
    )
    .unwrap();
    assert_eq!(two.read("/local/domain/1/data/x").unwrap(), b"1");
    two.write("/local/domain/1/data/x", "2").unwrap();
    assert_eq!(
        errno(one.set_perms("data/x", &[Perm::new(2, PermAccess::None)])),
        Errno::EPERM
    );
    // dom2 may write but is not the owner: no permission changes.
    assert_eq!(
        errno(two.set_perms("/local/domain/1/data/x", &[Perm::new(1, PermAccess::Both)])),
        Errno::EACCES
    );
    // Privileged operations.
    assert_eq!(errno(one.introduce(9, 0, 0)), Errno::EACCES);
    assert_eq!(errno(one.is_domain_introduced(0)), Errno::EACCES);
    assert_eq!(
        errno(one.control(&[b"hosted-connect-as", b"0"])),
        Errno::EACCES
    );
    assert_eq!(
        errno(one.set_perms("@releaseDomain", &[Perm::new(1, PermAccess::Read)])),
        Errno::EACCES
    );
}

#[test]
fn watch_events_respect_read_permission() {
    let d = daemon();
    let mut xs = dom0(&d);
    xs.write("/private/x", "1").unwrap();
    let mut one = dom(&d, 1);
    // Watching is allowed; events for unreadable nodes are not delivered
    // (the initial event always is).
    one.watch("/private", "p").unwrap();
    assert_eq!(wait_events(&mut one, "p", 1), ["/private"]);
    xs.write("/private/x", "2").unwrap();
    assert!(events(&mut one, "p", Duration::from_millis(150)).is_empty());
    xs.set_perms(
        "/private/x",
        &[
            Perm::new(0, PermAccess::None),
            Perm::new(1, PermAccess::Read),
        ],
    )
    .unwrap();
    assert_eq!(wait_events(&mut one, "p", 1), ["/private/x"]);
    xs.write("/private/x", "3").unwrap();
    assert_eq!(wait_events(&mut one, "p", 1), ["/private/x"]);
    // Special watches are dom0's business.
    one.watch("@introduceDomain", "i").unwrap();
    wait_events(&mut one, "i", 1);
    xs.introduce(44, 0, 0).unwrap();
    assert!(events(&mut one, "i", Duration::from_millis(150)).is_empty());
}

#[test]
fn set_perms_fires_for_watchers_readable_before_or_after() {
    let d = daemon();
    let mut xs = dom0(&d);
    xs.write("/sp/a", "1").unwrap();
    xs.write("/sp/b", "1").unwrap();
    xs.set_perms(
        "/sp/a",
        &[
            Perm::new(0, PermAccess::None),
            Perm::new(5, PermAccess::None),
        ],
    )
    .unwrap();
    xs.set_perms("/sp/b", &[Perm::new(3, PermAccess::None)])
        .unwrap();
    let mut five = dom(&d, 5);
    five.watch("/sp", "w").unwrap();
    assert_eq!(wait_events(&mut five, "w", 1), ["/sp"]);
    let mut three = dom(&d, 3);
    three.watch("/sp", "w").unwrap();
    assert_eq!(wait_events(&mut three, "w", 1), ["/sp"]);
    // dom5 gains read through its own entry: the new entry counts, not the
    // old one naming dom5.
    xs.set_perms(
        "/sp/a",
        &[
            Perm::new(0, PermAccess::None),
            Perm::new(5, PermAccess::Read),
        ],
    )
    .unwrap();
    assert_eq!(wait_events(&mut five, "w", 1), ["/sp/a"]);
    // dom5 becomes the owner; dom3, the old owner, hears of it too.
    xs.set_perms("/sp/b", &[Perm::new(5, PermAccess::None)])
        .unwrap();
    assert_eq!(wait_events(&mut five, "w", 1), ["/sp/b"]);
    assert_eq!(wait_events(&mut three, "w", 1), ["/sp/b"]);
    // A domain that can read neither before nor after hears nothing.
    let mut seven = dom(&d, 7);
    seven.watch("/sp", "w").unwrap();
    assert_eq!(wait_events(&mut seven, "w", 1), ["/sp"]);
    xs.set_perms("/sp/b", &[Perm::new(3, PermAccess::None)])
        .unwrap();
    assert_eq!(wait_events(&mut five, "w", 1), ["/sp/b"]);
    assert!(events(&mut seven, "w", Duration::from_millis(150)).is_empty());
}

#[test]
fn connect_as_rules() {
    let d = daemon();
    let mut xs = dom0(&d);
    // Unknown domain.
    assert_eq!(
        errno(xs.control(&[b"hosted-connect-as", b"12"])),
        Errno::ENOENT
    );
    // Busy connection.
    xs.introduce(12, 0, 0).unwrap();
    xs.watch("/x", "t").unwrap();
    assert_eq!(
        errno(xs.control(&[b"hosted-connect-as", b"12"])),
        Errno::EBUSY
    );
    let mut fresh = dom0(&d);
    fresh.control(&[b"hosted-connect-as", b"12"]).unwrap();
    assert_eq!(
        errno(fresh.control(&[b"hosted-connect-as", b"13"])),
        Errno::EACCES
    );
    assert_eq!(errno(fresh.read("/")), Errno::EACCES);
    assert_eq!(errno(xs.control(&[b"no-such-command"])), Errno::EINVAL);
}

// ---------------------------------------------------------------- quotas

#[test]
fn quotas_limit_unprivileged_domains() {
    let quotas = Quotas {
        nodes_per_domain: 5,
        watches_per_domain: 3,
        transactions_per_connection: 2,
        ..Quotas::default()
    };
    let d = XenstoreDaemon::spawn_with(socket_path(), quotas).unwrap();
    let mut xs = dom0(&d);
    xs.mkdir("/local/domain/1").unwrap();
    xs.set_perms("/local/domain/1", &[Perm::new(1, PermAccess::None)])
        .unwrap();
    let mut one = dom(&d, 1);
    // dom1 owns its home already (set_perms), so 4 more nodes.
    for i in 0..4 {
        one.write(&format!("n{i}"), "x").unwrap();
    }
    assert_eq!(errno(one.write("n4", "x")), Errno::ENOSPC);
    one.rm("n0").unwrap();
    one.write("n4", "x").unwrap();
    for i in 0..3 {
        one.watch(&format!("w{i}"), "t").unwrap();
    }
    assert_eq!(errno(one.watch("w3", "t")), Errno::E2BIG);
    let _t1 = one.transaction_start().unwrap();
    let _t2 = one.transaction_start().unwrap();
    assert_eq!(errno(one.transaction_start()), Errno::ENOSPC);
    let six: Vec<Perm> = (0..6).map(|i| Perm::new(i, PermAccess::Read)).collect();
    let mut six = six;
    six[0] = Perm::new(1, PermAccess::None);
    assert_eq!(errno(one.set_perms("n4", &six)), Errno::ENOSPC);
    // Entries are limited in size (value, child names, permissions).
    assert_eq!(errno(one.write("n4", vec![b'x'; 2100])), Errno::ENOSPC);
    one.write("n4", vec![b'x'; 2000]).unwrap();
    // dom0 has no quotas.
    for i in 0..20 {
        xs.write(&format!("/many/{i}"), "x").unwrap();
    }
    xs.write("/local/domain/1/n4", vec![b'x'; 4000]).unwrap();
}

#[test]
fn node_quota_holds_across_concurrent_transactions() {
    let quotas = Quotas {
        nodes_per_domain: 10,
        ..Quotas::default()
    };
    let d = XenstoreDaemon::spawn_with(socket_path(), quotas).unwrap();
    let mut xs = dom0(&d);
    // dom1 owns its home (1 node); three directories there belong to dom0
    // and dom1 may write them, so the transactions below touch disjoint
    // nodes and do not conflict.
    xs.mkdir("/local/domain/1").unwrap();
    xs.set_perms("/local/domain/1", &[Perm::new(1, PermAccess::None)])
        .unwrap();
    for dir in ["a", "b", "c"] {
        let p = format!("/local/domain/1/{dir}");
        xs.mkdir(&p).unwrap();
        xs.set_perms(
            &p,
            &[
                Perm::new(0, PermAccess::None),
                Perm::new(1, PermAccess::Both),
            ],
        )
        .unwrap();
    }
    let mut one = dom(&d, 1);
    let txs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|dir| {
            let tx = one.transaction_start().unwrap();
            // Each alone stays within the quota: 1 + 6 nodes.
            for i in 0..6 {
                one.in_transaction(tx)
                    .write(&format!("{dir}/n{i}"), "x")
                    .unwrap();
            }
            tx
        })
        .collect();
    let results: Vec<_> = txs
        .iter()
        .map(|&tx| one.transaction_end(tx, true).map_err(|e| e.errno()))
        .collect();
    assert_eq!(
        results,
        [Ok(()), Err(Some(Errno::ENOSPC)), Err(Some(Errno::ENOSPC))]
    );
    assert!(d.with_core(|c| c.nodes_owned_by(1)) <= 10);
    assert_eq!(one.directory("a").unwrap().len(), 6);
    assert!(one.directory("b").unwrap().is_empty());
    assert!(one.directory("c").unwrap().is_empty());
    // The refused transactions are gone.
    assert_eq!(errno(one.transaction_end(txs[1], true)), Errno::ENOENT);
    // A transaction that stays within the quota still commits, and one
    // that frees nodes as it creates them too.
    let tx = one.transaction_start().unwrap();
    one.in_transaction(tx).rm("a/n0").unwrap();
    one.in_transaction(tx).write("b/n0", "x").unwrap();
    one.transaction_end(tx, true).unwrap();
    assert_eq!(d.with_core(|c| c.nodes_owned_by(1)), 7);
    d.with_core(|c| c.check_tree()).unwrap();
}

// ---------------------------------------------------------------- bad input

/// A raw socket client for malformed input.
struct RawClient {
    stream: UnixStream,
    decoder: Decoder,
    next: u32,
}

impl RawClient {
    fn new(d: &XenstoreDaemon) -> Self {
        let stream = UnixStream::connect(d.socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        RawClient {
            stream,
            decoder: Decoder::new(),
            next: 1,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn recv(&mut self) -> Message {
        let mut buf = [0u8; 256];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let mut input = pending.as_slice();
            if let Some(m) = self.decoder.decode(&mut input).unwrap() {
                assert!(input.is_empty(), "test client expects one reply at a time");
                return m;
            }
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "daemon closed the connection");
            pending = buf[..n].to_vec();
        }
    }

    fn call(&mut self, t: MsgType, tx: u32, payload: &[u8]) -> Message {
        let req = self.next;
        self.next += 1;
        self.send_raw(&Message::new(t, req, tx, payload.to_vec()).unwrap().encode());
        let r = self.recv();
        assert_eq!(r.req_id, req);
        r
    }

    /// Whether the daemon closed this connection.
    fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        self.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn unknown_types_get_enosys_and_the_connection_lives() {
    let d = daemon();
    let mut raw = RawClient::new(&d);
    for t in [20u32, 23, 999, 0xffff] {
        let mut m = Header {
            msg_type: t,
            req_id: 77,
            tx_id: 0,
            len: 2,
        }
        .to_bytes()
        .to_vec();
        m.extend_from_slice(b"x\0");
        raw.send_raw(&m);
        let r = raw.recv();
        assert_eq!(
            (r.msg_type, r.req_id, r.payload.as_slice()),
            (MsgType::Error, 77, &b"ENOSYS\0"[..]),
            "type {t}"
        );
    }
    // Replies and errors are not requests.
    assert_eq!(
        raw.call(MsgType::WatchEvent, 0, b"/a\0t\0").payload,
        b"ENOSYS\0"
    );
    assert_eq!(
        raw.call(MsgType::Error, 0, b"EINVAL\0").payload,
        b"ENOSYS\0"
    );
    assert_eq!(raw.call(MsgType::Write, 0, b"/alive\0yes").payload, b"OK\0");
}

#[test]
fn oversized_payload_closes_only_that_connection() {
    let d = daemon();
    let mut good = dom0(&d);
    good.write("/keep", "me").unwrap();
    let mut bad = RawClient::new(&d);
    let mut m = Header {
        msg_type: MsgType::Write.raw(),
        req_id: 1,
        tx_id: 0,
        len: 4097,
    }
    .to_bytes()
    .to_vec();
    m.extend_from_slice(&[b'a'; 100]);
    bad.send_raw(&m);
    assert!(bad.is_closed());
    assert_eq!(good.read("/keep").unwrap(), b"me");
    good.write("/still", "serving").unwrap();
    // A payload of exactly the limit is fine.
    let mut ok = RawClient::new(&d);
    let mut payload = b"/max\0".to_vec();
    payload.resize(4096, b'v');
    assert_eq!(ok.call(MsgType::Write, 0, &payload).payload, b"OK\0");
}

#[test]
fn disconnect_mid_message_loses_nothing() {
    let d = daemon();
    let mut good = dom0(&d);
    let mut w = dom0(&d);
    good.write("/data", "before").unwrap();
    w.watch("/data", "t").unwrap();
    wait_events(&mut w, "t", 1);
    // Half a header, then hang up.
    {
        let mut raw = RawClient::new(&d);
        raw.send_raw(
            &Header {
                msg_type: 11,
                req_id: 1,
                tx_id: 0,
                len: 20,
            }
            .to_bytes()[..7],
        );
    }
    // A whole header and half the payload of a write, then hang up: the
    // write must not happen.
    {
        let mut raw = RawClient::new(&d);
        let m = Message::new(MsgType::Write, 1, 0, b"/data\0partial".to_vec())
            .unwrap()
            .encode();
        raw.send_raw(&m[..m.len() - 3]);
    }
    // A client with an open transaction and a watch hangs up.
    {
        let mut c = dom0(&d);
        c.watch("/data", "gone").unwrap();
        let tx = c.transaction_start().unwrap();
        c.in_transaction(tx).write("/data", "uncommitted").unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(good.read("/data").unwrap(), b"before");
    assert!(events(&mut w, "t", Duration::from_millis(100)).is_empty());
    good.write("/data", "after").unwrap();
    assert_eq!(wait_events(&mut w, "t", 1), ["/data"]);
    d.with_core(|c| c.check_tree()).unwrap();
}

#[test]
fn a_client_that_never_reads_does_not_stall_others() {
    let d = daemon();
    let mut writer = dom0(&d);
    // A watcher that never reads: events pile up in its socket and then in
    // the daemon, which drops them past the quota.
    let mut lazy = RawClient::new(&d);
    let mut watch = Message::new(MsgType::Watch, 1, 0, join_strings(&["/flood", "t"]))
        .unwrap()
        .encode();
    // Also pipeline many requests without reading replies.
    for i in 0..2000u32 {
        watch.extend(
            Message::new(MsgType::Read, 2 + i, 0, b"/\0".to_vec())
                .unwrap()
                .encode(),
        );
    }
    lazy.send_raw(&watch);
    let value = "v".repeat(2000);
    let start = Instant::now();
    for i in 0..1500 {
        writer.write(&format!("/flood/{}", i % 10), &value).unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the daemon kept serving"
    );
    let mut other = dom0(&d);
    assert_eq!(other.read("/flood/3").unwrap().len(), 2000);
}

#[test]
fn garbage_streams_never_take_the_daemon_down() {
    let d = daemon();
    let mut good = dom0(&d);
    good.write("/canary", "alive").unwrap();
    // Deterministic pseudo-random garbage from several clients.
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..20 {
        let mut raw = UnixStream::connect(d.socket()).unwrap();
        let mut bytes = Vec::new();
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        // Make some headers plausible so requests get parsed.
        for chunk in bytes.chunks_mut(64) {
            if chunk.len() >= 16 && chunk[0] & 1 == 0 {
                chunk[0] %= 23;
                chunk[1..4].fill(0);
                chunk[12] %= 48;
                chunk[13..16].fill(0);
            }
        }
        let _ = raw.write_all(&bytes);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(good.read("/canary").unwrap(), b"alive");
    d.with_core(|c| c.check_tree()).unwrap();
}
