//! The RDMA entries of the ping-pong bench: RoCE v2 round trips between two
//! reliable-connected queue pairs in two processes (two hosted domains),
//! each driven by [`RoceNic`] over the hosted frame link
//! ([`hosted::framelink`]: two rings of 2 KiB slots in pages the bench's
//! process grants and the child maps), both ends spinning on their
//! `RoceNic::poll`, each pinned to its core.
//!
//! - `rdma-send-64`: a 64-byte SEND each way; the ping's receive
//!   completion at the peer triggers the pong (a SEND of the same bytes),
//!   and the round trip ends at the pong's receive completion. Receives are
//!   posted before the clock starts, as `ib_send_lat` posts them.
//! - `rdma-write-64`: a 64-byte RDMA WRITE (no immediate) into the peer's
//!   registered region; the peer polls the last byte of its region for the
//!   round trip's tag and answers with a WRITE into ours, which this end
//!   polls the same way: `ib_write_lat`'s scheme.
//!
//! Both go through the verbs API as an application does: a
//! [`Context`] with a PD, one registered region (send buffer, then receive
//! buffer and WRITE target), a CQ and an RC queue pair brought through
//! INIT and RTR to RTS, unsignaled sends posted with a one-entry SGL,
//! receives posted the same way, `poll_cq`. The `-qp` variants
//! (`rdma-send-64-qp`, `rdma-write-64-qp`) drive one queue pair's state
//! machine directly ([`QpTransport`]), without the verbs bookkeeping
//! (work request tables, gather and scatter through the regions,
//! completion queues): the difference between the two is the verbs
//! layer's cost.
//!
//! A round trip moves the ping and the pong, and every eighth round trip
//! an ACK each way: the sends are unsignaled, so each end's messages ask
//! for an ACK (AckReq) only every 8 (as a verbs queue pair 16 deep does,
//! `QueuePair::post_send_unsignaled`), and the last message of each end
//! is signaled, so that each end's run ends with everything acknowledged.
//! An ACK leaves right behind the request posted in answer (the pong, or
//! the next ping: a queue pair sends a request posted before the ACK of
//! what it received just before), and is handled by its receiver at the
//! poll after the one that took the frame ahead of it (`RoceNic::poll`
//! hands a completion to the application before the frames behind it).
//! The requester's completion (the ACK) is not waited for before the
//! receive is polled:
//! `ib_send_lat` with a send queue deeper than its default of 1 does the
//! same, with its default it waits for every send's completion
//! (`docs/benches.md` sets the two side by side). Every frame is built
//! with its ICRC and parsed and checked in full, and each received frame
//! is copied once out of the link's slot before it is parsed. The link is
//! lossless here: a malformed, misaddressed or out-of-sequence packet
//! fails the run; a resend after the 1 s ACK timeout (an end kept off its
//! core that long by other work) is said on stderr and the run goes on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use grant_tables::DomId;
use hosted::framelink::{FrameLink, LinkGrants};
use hosted::{HostedHypervisor, HostedPlatform};
use rdma_passthrough::nic::{QpTransport, RoceNic, Transport};
use rdma_passthrough::packet::Endpoints;
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{CompletionKind, MemoryRegion, QpConfig, QueuePair, SendOp, Status};
use rdma_passthrough::verbs::{
    ipv4_gid, AccessFlags, AhAttr, Context, CqHandle, MrHandle, MrInfo, PathMtu, QpAttr, QpHandle,
    QpInitAttr, QpState, RecvWr, SendWr, Sge, VerbsError, WcOpcode, WcStatus, WorkCompletion,
    WrOpcode,
};

use crate::harness::{Entry, Recorder, Round};
use crate::pin;
use crate::scratch::{fresh_dir, ChildGuard};

/// The environment variable that turns the bench binary into the RDMA
/// peer process. Its value is `<dir>;<send|write>;<round trips>;<grant refs>`.
pub const RDMA_PEER_ROLE_ENV: &str = "PINGPONG_RDMA_PEER";

/// Bytes of each message.
pub const MSG: usize = 64;
const ME: DomId = DomId(1);
const PEER: DomId = DomId(2);
const RKEY: u32 = 0x5eed;
const REGION_VA: u64 = 0x4000_0000;
const SLOTS: usize = 64;
/// No single wait of the bench may take longer than this.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The retransmission timeout: far above any round trip, and above the
/// time a busy machine may take a spinning process off its core (a
/// timeout there would resend on a lossless link).
const RTO_NS: u64 = 1_000_000_000;
/// Polls between two readings of the clock.
const CLOCK_EVERY: u32 = 64;

/// Which operation the round trip uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// SEND both ways.
    Send,
    /// RDMA WRITE both ways, the last byte polled.
    Write,
}

/// What the application drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// A verbs context (PD, MR, CQ, QP in RTS, SGL work requests,
    /// `poll_cq`), as an application would.
    Verbs,
    /// One queue pair's state machine directly (`QpTransport`).
    Qp,
}

impl Op {
    fn name(self, api: Api) -> &'static str {
        match (self, api) {
            (Op::Send, Api::Verbs) => "send",
            (Op::Write, Api::Verbs) => "write",
            (Op::Send, Api::Qp) => "send-qp",
            (Op::Write, Api::Qp) => "write-qp",
        }
    }

    fn parse(s: &str) -> Option<(Op, Api)> {
        match s {
            "send" => Some((Op::Send, Api::Verbs)),
            "write" => Some((Op::Write, Api::Verbs)),
            "send-qp" => Some((Op::Send, Api::Qp)),
            "write-qp" => Some((Op::Write, Api::Qp)),
            _ => None,
        }
    }
}

/// The RDMA entries.
pub fn entries() -> Vec<Entry> {
    let setup =
        "2 processes (domains), RC queue pairs, RoceNic over the hosted frame link, spinning";
    vec![
        Entry::new(
            "rdma-send-64",
            "a 64-byte RoCE v2 SEND to a queue pair in another process, answered by a SEND back (ib_send_lat's exchange), \
             through the verbs API (PD, MR, CQ, QP in RTS, SGL work requests, poll_cq) over RoceNic over the hosted \
             frame link (shared-memory rings), both ends spinning",
            setup,
            |r: Round, rec: &mut Recorder| pingpong(Op::Send, Api::Verbs, r.iters, r.warmup, rec),
        )
        .msg_bytes(MSG),
        Entry::new(
            "rdma-write-64",
            "a 64-byte RDMA WRITE into the peer's region, whose last byte the peer polls and answers with a WRITE into \
             ours (ib_write_lat's exchange); same setting as rdma-send-64",
            setup,
            |r: Round, rec: &mut Recorder| pingpong(Op::Write, Api::Verbs, r.iters, r.warmup, rec),
        )
        .msg_bytes(MSG),
        Entry::new(
            "rdma-send-64-qp",
            "rdma-send-64 with one queue pair's state machine driven directly (QpTransport), without the verbs layer",
            setup,
            |r: Round, rec: &mut Recorder| pingpong(Op::Send, Api::Qp, r.iters, r.warmup, rec),
        )
        .msg_bytes(MSG),
        Entry::new(
            "rdma-send-64-1t",
            "rdma-send-64's software alone: both ends' verbs contexts on one thread, each frame built, emitted into a \
             buffer, copied and parsed as RoceNic does, no link and no other core: the CPU time of a round trip's \
             work, both ends' added up (ACKs included)",
            "one thread, two verbs contexts, frames moved in memory",
            |r: Round, rec: &mut Recorder| one_thread_send(r.iters, r.warmup, rec),
        )
        .msg_bytes(MSG),
        Entry::new(
            "rdma-write-64-qp",
            "rdma-write-64 with one queue pair's state machine driven directly (QpTransport), without the verbs layer",
            setup,
            |r: Round, rec: &mut Recorder| pingpong(Op::Write, Api::Qp, r.iters, r.warmup, rec),
        )
        .msg_bytes(MSG),
    ]
}

fn mac(d: DomId) -> [u8; 6] {
    [2, 0, 0, 0, 0xdd, d.0 as u8]
}

/// The queue pair of domain `me` towards `peer`, with a `MSG`-byte region
/// the peer may write.
fn queue_pair(me: DomId, peer: DomId) -> Result<QueuePair, String> {
    let ip = |d: DomId| [10, 0, 0, d.0 as u8];
    let psn = |d: DomId| Psn::from_masked(0x1000 * u32::from(d.0));
    let mut qp = QueuePair::new(QpConfig {
        qpn: 0x10 + u32::from(me.0),
        dest_qpn: 0x10 + u32::from(peer.0),
        pkey: 0xffff,
        pmtu: 1024,
        send_psn: psn(me),
        recv_psn: psn(peer),
        retry_limit: 7,
        endpoints: Endpoints {
            dst_mac: mac(peer),
            src_mac: mac(me),
            src_ip: ip(me),
            dst_ip: ip(peer),
            src_port: 0xc000 + me.0,
            tos: 0,
            ttl: 64,
            ip_id: 0,
        },
    })
    .map_err(|e| format!("queue pair: {e}"))?;
    // As a verbs context with a 16-deep send queue does for unsignaled sends.
    qp.set_ack_req_interval(ACK_REQ_INTERVAL);
    qp.register(MemoryRegion {
        va: REGION_VA,
        rkey: RKEY,
        remote_write: true,
        data: vec![0; MSG],
    });
    Ok(qp)
}

type Nic = RoceNic<FrameLink, QpTransport>;

/// Messages in a row that leave without asking for an ACK on the `-qp`
/// path (the verbs path's queue pairs, 16 deep, ask every 8 as well).
const ACK_REQ_INTERVAL: u32 = 8;

/// Posts round trip `i`'s message of `total` on the `-qp` path: as an
/// unsignaled verbs send (its ACK may be coalesced), but the last one,
/// whose ACK each end waits for before it stops.
fn post_qp(nic: &mut Nic, i: u64, total: u64, op: SendOp) -> Result<(), String> {
    let qp = nic.transport_mut().qp_mut();
    if i + 1 == total {
        qp.post_send(i, op)
    } else {
        qp.post_send_unsignaled(i, op)
    }
    .map_err(|e| format!("{e:?}"))
}

/// One entry's run: this process is domain 1 (creates and grants the
/// link), the child domain 2.
pub fn pingpong(
    op: Op,
    api: Api,
    iters: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    let dir = fresh_dir("rdma")?;
    let r = pingpong_in(&dir, op, api, iters + warmup, warmup, rec);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn pingpong_in(
    dir: &Path,
    op: Op,
    api: Api,
    total: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    let hv = HostedHypervisor::create(dir)
        .map_err(|e| format!("hosted hypervisor in {}: {e}", dir.display()))?;
    let plat = hv.join(ME).map_err(|e| format!("joining as {ME}: {e}"))?;
    let (link, grants) =
        FrameLink::create(&plat, PEER, SLOTS, mac(ME)).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let child = Command::new(exe)
        .env(
            RDMA_PEER_ROLE_ENV,
            format!(
                "{};{};{total};{}",
                dir.display(),
                op.name(api),
                grants.refs_string()
            ),
        )
        .spawn()
        .map_err(|e| format!("cannot start the RDMA peer process: {e}"))?;
    let mut child = ChildGuard(Some(child));
    let (a, _) = pin::pair();
    pin::pin_to(a);
    let start = Instant::now();
    match api {
        Api::Qp => {
            let mut nic = RoceNic::new(link, QpTransport::new(queue_pair(ME, PEER)?, RTO_NS));
            match op {
                Op::Send => send_round_trips(&mut nic, start, total, warmup, rec)?,
                Op::Write => write_round_trips(&mut nic, start, total, warmup, rec)?,
            }
            wait_child(&mut child, start, |t| {
                let _ = nic.poll(t);
            })?;
            check_clean(&nic)
        }
        Api::Verbs => {
            let mut v = Verbs::new(link, ME, PEER)?;
            match op {
                Op::Send => verbs_send_round_trips(&mut v, start, total, warmup, rec)?,
                Op::Write => verbs_write_round_trips(&mut v, start, total, warmup, rec)?,
            }
            wait_child(&mut child, start, |t| {
                let _ = v.nic.poll(t);
            })?;
            v.check_clean()
        }
    }
}

/// Polls this end (`poll`, given the time) until the child stops, which it
/// does once its last pong is acknowledged (sent by the poll that took the
/// pong).
fn wait_child(
    child: &mut ChildGuard,
    start: Instant,
    mut poll: impl FnMut(u64),
) -> Result<(), String> {
    if let Some(mut c) = child.0.take() {
        let end = Instant::now() + STEP_TIMEOUT;
        loop {
            poll(start.elapsed().as_nanos() as u64);
            match c.try_wait() {
                Ok(Some(s)) if s.success() => break,
                Ok(Some(s)) => return Err(format!("the RDMA peer process failed: {s}")),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_micros(100)),
                Ok(None) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err("the RDMA peer process did not stop".into());
                }
                Err(e) => return Err(format!("waiting for the RDMA peer: {e}")),
            }
        }
    }
    Ok(())
}

/// A lossless link carries nothing malformed, misaddressed or out of
/// sequence, and leaves the queue pair out of the error state; a resend
/// (see [`note_resends`]) is said, not failed.
fn check_clean(nic: &Nic) -> Result<(), String> {
    let s = nic.transport().qp().stats();
    if s.malformed + s.misaddressed + s.out_of_sequence > 0 || nic.transport().qp().is_error() {
        return Err(format!(
            "the queue pair saw trouble on a lossless link: {s:?}"
        ));
    }
    note_resends(s.retransmitted, s.duplicates, &format!("{s:?}"));
    Ok(())
}

/// Says on stderr that an end resent packets after its ACK timeout (1 s,
/// [`RTO_NS`]) and how many duplicates it dropped. On this lossless link
/// that happens when an end is kept off its core for longer than the
/// timeout (a machine loaded by other work) or a frame went missing; the
/// round trips around the stall are in the entry's figures, so the run
/// goes on and says it.
fn note_resends(retransmitted: u64, duplicates: u64, stats: &str) {
    if retransmitted + duplicates > 0 {
        eprintln!(
            "rdma bench: {retransmitted} packets resent after the {} s ACK timeout and {duplicates} \
             duplicates dropped on a lossless link: an end was kept off its core longer than the timeout \
             (or a frame went missing); the round trips around that stall are in this entry's figures \
             (queue pair: {stats})",
            RTO_NS / 1_000_000_000
        );
    }
}

/// Polls `nic` until `ready` returns a value; the clock is read once every
/// [`CLOCK_EVERY`] polls. Inlined into the measured loops.
#[inline(always)]
fn spin<T>(
    nic: &mut Nic,
    start: Instant,
    ready: impl FnMut(&mut Nic) -> Result<Option<T>, String>,
) -> Result<T, String> {
    let now = start.elapsed().as_nanos() as u64;
    spin_at(nic, start, now, ready)
}

/// [`spin`] from `now`, a time the caller read (see [`spin_on`]).
#[inline(always)]
fn spin_at<T>(
    nic: &mut Nic,
    start: Instant,
    now: u64,
    ready: impl FnMut(&mut Nic) -> Result<Option<T>, String>,
) -> Result<T, String> {
    spin_on(nic, start, now, |nic, now| nic.poll(now).map(drop), ready)
}

/// The loop of [`spin`] over any state that holds a [`RoceNic`]: `poll`
/// polls it at the bench's clock in nanoseconds (`now` at first: the time
/// the caller last read, so that no reading of the clock comes between a
/// post and the first poll), `ready` says whether the awaited completion
/// came; fails after [`STEP_TIMEOUT`].
#[inline(always)]
fn spin_on<S, T>(
    s: &mut S,
    start: Instant,
    mut now: u64,
    mut poll: impl FnMut(&mut S, u64) -> Result<(), netfront::frame::FrameError>,
    mut ready: impl FnMut(&mut S) -> Result<Option<T>, String>,
) -> Result<T, String> {
    let began = now;
    let mut polls = 0u32;
    loop {
        poll(s, now).map_err(|e| format!("frame link: {e}"))?;
        if let Some(v) = ready(s)? {
            return Ok(v);
        }
        polls += 1;
        if polls == CLOCK_EVERY {
            polls = 0;
            now = start.elapsed().as_nanos() as u64;
            if now - began > STEP_TIMEOUT.as_nanos() as u64 {
                return Err(
                    "timed out spinning on the queue pair: the peer stopped answering".into(),
                );
            }
        }
        std::hint::spin_loop();
    }
}

/// What a completion means for the ping-pong: a receive (its bytes), or
/// nothing the loop waits for.
#[inline(always)]
fn take_recv(nic: &mut Nic) -> Result<Option<Vec<u8>>, String> {
    while let Some(c) = nic.transport_mut().qp_mut().poll_completion() {
        if c.status != Status::Success {
            return Err(format!("completion {} failed: {:?}", c.wr_id, c.status));
        }
        if let CompletionKind::Recv { data, .. } = c.kind {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// Drains completions (the requester's, acknowledged), checking them.
#[inline(always)]
fn drain(nic: &mut Nic) -> Result<(), String> {
    while let Some(c) = nic.transport_mut().qp_mut().poll_completion() {
        if c.status != Status::Success {
            return Err(format!("completion {} failed: {:?}", c.wr_id, c.status));
        }
    }
    Ok(())
}

fn payload(i: u64) -> Vec<u8> {
    payload_bytes(i).to_vec()
}

/// The bytes of round trip `i`'s message, without allocating (the verbs
/// loops fill the region from them and compare with them).
fn payload_bytes(i: u64) -> [u8; MSG] {
    let mut p = [0u8; MSG];
    p[..8].copy_from_slice(&i.to_le_bytes());
    for (k, b) in p.iter_mut().enumerate().skip(8) {
        *b = (k as u8).wrapping_mul(13) ^ i as u8;
    }
    p[MSG - 1] = tag(i);
    p
}

/// The last byte of round trip `i`: never zero (the region starts zeroed)
/// and never that of the round trip before.
fn tag(i: u64) -> u8 {
    (i % 255) as u8 + 1
}

/// The measured loop of `rdma-send-64`. Out of line, so that its code does
/// not depend on how the set-up around it was compiled.
#[inline(never)]
fn send_round_trips(
    nic: &mut Nic,
    start: Instant,
    total: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    for i in 0..total {
        // The pong's receive and the ping's bytes, before the clock.
        nic.transport_mut().qp_mut().post_recv(i, MSG);
        let ping = payload(i);
        let t = Instant::now();
        let now = t.saturating_duration_since(start).as_nanos() as u64;
        post_qp(
            nic,
            i,
            total,
            SendOp::Send {
                data: ping,
                imm: None,
            },
        )?;
        let pong = spin_at(nic, start, now, take_recv)?;
        let dt = t.elapsed().as_nanos() as u64;
        if pong != payload(i) {
            return Err(format!(
                "round trip {i}: the pong's bytes differ from the ping's"
            ));
        }
        nic.transport_mut().qp_mut().recycle(pong);
        if i >= warmup {
            rec.record(dt);
        }
    }
    drain(nic)
}

/// The last byte of this end's region.
#[inline(always)]
fn last_byte(nic: &Nic) -> u8 {
    nic.transport()
        .qp()
        .region(0)
        .and_then(|r| r.data.last().copied())
        .unwrap_or(0)
}

/// The measured loop of `rdma-write-64`.
#[inline(never)]
fn write_round_trips(
    nic: &mut Nic,
    start: Instant,
    total: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    for i in 0..total {
        let ping = payload(i);
        let want = tag(i);
        let t = Instant::now();
        let now = t.saturating_duration_since(start).as_nanos() as u64;
        post_qp(
            nic,
            i,
            total,
            SendOp::Write {
                data: ping,
                va: REGION_VA,
                rkey: RKEY,
                imm: None,
            },
        )?;
        spin_at(nic, start, now, |n| {
            drain(n)?;
            Ok((last_byte(n) == want).then_some(()))
        })?;
        let dt = t.elapsed().as_nanos() as u64;
        let region = nic
            .transport()
            .qp()
            .region(0)
            .map(|r| r.data.clone())
            .unwrap_or_default();
        if region != payload(i) {
            return Err(format!(
                "round trip {i}: the peer's WRITE landed other bytes"
            ));
        }
        if i >= warmup {
            rec.record(dt);
        }
    }
    drain(nic)
}

/// The peer process: `PINGPONG_RDMA_PEER=<dir>;<op>;<round trips>;<refs>`.
/// Answers every ping, then waits for its last pong to be acknowledged.
pub fn peer_main(spec: &str) -> Result<(), String> {
    let mut parts = spec.split(';');
    let dir = PathBuf::from(parts.next().ok_or("missing directory")?);
    let (op, api) = parts
        .next()
        .and_then(Op::parse)
        .ok_or("missing or unknown operation")?;
    let total: u64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("missing round-trip count")?;
    let grants = LinkGrants::parse_refs(ME, parts.next().ok_or("missing grant refs")?)
        .map_err(|e| e.to_string())?;
    let (_, b) = pin::pair();
    pin::pin_to(b);
    let plat = HostedPlatform::join(&dir, PEER).map_err(|e| format!("joining as {PEER}: {e}"))?;
    let link = FrameLink::attach(&plat, &grants, mac(PEER)).map_err(|e| e.to_string())?;
    if api == Api::Verbs {
        return verbs_peer(op, link, total);
    }
    let mut nic = RoceNic::new(link, QpTransport::new(queue_pair(PEER, ME)?, RTO_NS));
    let start = Instant::now();
    serve(op, &mut nic, start, total)?;
    // The last pong's acknowledgement.
    let acked = |n: &mut Nic| -> Result<Option<()>, String> {
        drain(n)?;
        Ok(n.transport().next_deadline().is_none().then_some(()))
    };
    spin(&mut nic, start, acked)?;
    check_clean(&nic)
}

/// The peer's loop: `total` pongs.
#[inline(never)]
fn serve(op: Op, nic: &mut Nic, start: Instant, total: u64) -> Result<(), String> {
    match op {
        Op::Send => {
            // Two receives up: one is always posted when a ping comes.
            nic.transport_mut().qp_mut().post_recv(0, MSG);
            nic.transport_mut().qp_mut().post_recv(1, MSG);
            for i in 0..total {
                let ping = spin(nic, start, take_recv)?;
                post_qp(
                    nic,
                    i,
                    total,
                    SendOp::Send {
                        data: ping,
                        imm: None,
                    },
                )?;
                // The doorbell: the pong leaves at once; then the receive
                // taken is posted again.
                nic.flush().map_err(|e| format!("frame link: {e}"))?;
                nic.transport_mut().qp_mut().post_recv(i + 2, MSG);
                nic.poll(start.elapsed().as_nanos() as u64)
                    .map_err(|e| format!("frame link: {e}"))?;
            }
        }
        Op::Write => {
            for i in 0..total {
                let want = tag(i);
                spin(nic, start, |n| {
                    drain(n)?;
                    Ok((last_byte(n) == want).then_some(()))
                })?;
                let data = nic
                    .transport()
                    .qp()
                    .region(0)
                    .map(|r| r.data.clone())
                    .unwrap_or_default();
                post_qp(
                    nic,
                    i,
                    total,
                    SendOp::Write {
                        data,
                        va: REGION_VA,
                        rkey: RKEY,
                        imm: None,
                    },
                )?;
                nic.poll(start.elapsed().as_nanos() as u64)
                    .map_err(|e| format!("frame link: {e}"))?;
            }
        }
    }
    Ok(())
}

// The verbs path: what an application does with libibverbs.

/// The local ACK timeout code of the verbs queue pairs: 4.096 µs × 2^18,
/// about 1.07 s (see [`RTO_NS`]).
const VERBS_TIMEOUT: u8 = 18;
/// The region of each end: the send buffer at 0, the receive buffer (and
/// the peer's WRITE target) at [`MSG`].
const VERBS_REGION: usize = 2 * MSG;

type VerbsNic = RoceNic<FrameLink, Context>;

/// One end's verbs objects over its [`RoceNic`].
struct Verbs {
    nic: VerbsNic,
    cq: CqHandle,
    qp: QpHandle,
    mr: MrHandle,
    /// The region's address and keys (the peer's are the same: both ends
    /// create the same objects in the same order; a wrong guess fails the
    /// run with a remote access error).
    info: MrInfo,
    /// Where `poll_cq` puts completions (reused: `ibv_poll_cq`'s array).
    wcs: Vec<WorkCompletion>,
}

impl Verbs {
    /// PD, MR, CQ and an RC queue pair of domain `me` brought to RTS
    /// towards `peer`'s ([`OneEnd::new`]), over `link`.
    fn new(link: FrameLink, me: DomId, peer: DomId) -> Result<Verbs, String> {
        let OneEnd { ctx, cq, qp, mr, info } = OneEnd::new(me, peer)?;
        Ok(Verbs {
            nic: RoceNic::new(link, ctx),
            cq,
            qp,
            mr,
            info,
            wcs: Vec::with_capacity(4),
        })
    }

    fn ctx(&mut self) -> &mut Context {
        self.nic.transport_mut()
    }

    /// The scatter/gather entry of `MSG` bytes at `offset` in the region.
    fn sge(&self, offset: usize) -> Sge {
        Sge {
            addr: self.info.addr + offset as u64,
            length: MSG as u32,
            lkey: self.info.lkey,
        }
    }

    fn region(&self) -> &[u8] {
        self.nic.transport().mr_bytes(self.mr).unwrap_or(&[])
    }

    /// The receive buffer (the peer's SEND or WRITE lands there).
    fn received(&self) -> &[u8] {
        self.region().get(MSG..).unwrap_or(&[])
    }

    /// Polls the completion queue: `Ok(true)` when a receive completed.
    /// Every completion must be a success.
    #[inline(always)]
    fn poll_cq(&mut self) -> Result<bool, String> {
        let cq = self.cq;
        let mut wcs = std::mem::take(&mut self.wcs);
        wcs.clear();
        self.ctx()
            .poll_cq_into(cq, 4, &mut wcs)
            .map_err(|e| format!("poll_cq: {e}"))?;
        let mut recv = false;
        for wc in &wcs {
            if wc.status != WcStatus::Success {
                return Err(format!("work request {} failed: {:?}", wc.wr_id, wc.status));
            }
            recv |= wc.opcode == WcOpcode::Recv;
        }
        self.wcs = wcs;
        Ok(recv)
    }

    fn post_recv(&mut self, wr: &RecvWr) -> Result<(), String> {
        let qp = self.qp;
        self.ctx()
            .post_recv(qp, wr)
            .map_err(|e| format!("post_recv: {e}"))
    }

    fn post_send(&mut self, wr: &SendWr) -> Result<(), String> {
        let qp = self.qp;
        self.ctx()
            .post_send(qp, wr)
            .map_err(|e| format!("post_send: {e}"))
    }

    /// As [`check_clean`], through the verbs context.
    fn check_clean(&self) -> Result<(), String> {
        let ctx = self.nic.transport();
        let s = ctx
            .qp_stats(self.qp)
            .ok_or("the queue pair has no transport")?;
        let state = ctx
            .qp_state(self.qp)
            .map_err(|e| format!("qp_state: {e}"))?;
        if s.malformed + s.misaddressed + s.out_of_sequence > 0 || state != QpState::Rts {
            return Err(format!(
                "the queue pair saw trouble on a lossless link ({state:?}): {s:?}"
            ));
        }
        note_resends(s.retransmitted, s.duplicates, &format!("{s:?}"));
        Ok(())
    }

    /// Polls until `ready` returns a value (see [`spin`]).
    #[inline(always)]
    fn spin<T>(
        &mut self,
        start: Instant,
        ready: impl FnMut(&mut Verbs) -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        let now = start.elapsed().as_nanos() as u64;
        self.spin_from(start, now, ready)
    }

    /// [`Verbs::spin`] from `now`, a time the caller read (see
    /// [`spin_on`]).
    #[inline(always)]
    fn spin_from<T>(
        &mut self,
        start: Instant,
        now: u64,
        ready: impl FnMut(&mut Verbs) -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        spin_on(self, start, now, |v, now| v.nic.poll(now).map(drop), ready)
    }

    /// The SEND of the region's first `MSG` bytes (`at`: 0) or of the
    /// receive buffer (`at`: `MSG`), unsignaled.
    fn send_wr(&self, at: usize) -> SendWr {
        SendWr {
            wr_id: 0,
            sg_list: vec![self.sge(at)],
            opcode: WrOpcode::Send,
            signaled: false,
        }
    }

    /// The WRITE of `MSG` bytes at `at` into the peer's receive buffer.
    fn write_wr(&self, at: usize) -> SendWr {
        SendWr {
            wr_id: 0,
            sg_list: vec![self.sge(at)],
            opcode: WrOpcode::RdmaWrite {
                remote_addr: self.info.addr + MSG as u64,
                rkey: self.info.rkey,
            },
            signaled: false,
        }
    }

    fn recv_wr(&self) -> RecvWr {
        RecvWr {
            wr_id: 0,
            sg_list: vec![self.sge(MSG)],
        }
    }
}

/// The measured loop of `rdma-send-64`.
#[inline(never)]
fn verbs_send_round_trips(
    v: &mut Verbs,
    start: Instant,
    total: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    let mut send = v.send_wr(0);
    let mut recv = v.recv_wr();
    for i in 0..total {
        // The pong's receive and the ping's bytes, before the clock.
        recv.wr_id = i;
        v.post_recv(&recv)?;
        let expect = payload_bytes(i);
        let mr = v.mr;
        v.ctx()
            .mr_bytes_mut(mr)
            .map_err(|e| format!("mr_bytes_mut: {e}"))?
            .get_mut(..MSG)
            .ok_or("region too small")?
            .copy_from_slice(&expect);
        send.wr_id = i;
        // Unsignaled, but the last: its ACK ends the run.
        send.signaled = i + 1 == total;
        let t = Instant::now();
        let now = t.saturating_duration_since(start).as_nanos() as u64;
        v.post_send(&send)?;
        v.spin_from(start, now, |v| Ok(v.poll_cq()?.then_some(())))?;
        let dt = t.elapsed().as_nanos() as u64;
        if v.received() != expect {
            return Err(format!(
                "round trip {i}: the pong's bytes differ from the ping's"
            ));
        }
        if i >= warmup {
            rec.record(dt);
        }
    }
    v.poll_cq().map(drop)
}

/// The measured loop of `rdma-write-64`.
#[inline(never)]
fn verbs_write_round_trips(
    v: &mut Verbs,
    start: Instant,
    total: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    let mut write = v.write_wr(0);
    for i in 0..total {
        let want = tag(i);
        let expect = payload_bytes(i);
        let mr = v.mr;
        v.ctx()
            .mr_bytes_mut(mr)
            .map_err(|e| format!("mr_bytes_mut: {e}"))?
            .get_mut(..MSG)
            .ok_or("region too small")?
            .copy_from_slice(&expect);
        write.wr_id = i;
        write.signaled = i + 1 == total;
        let t = Instant::now();
        let now = t.saturating_duration_since(start).as_nanos() as u64;
        v.post_send(&write)?;
        v.spin_from(start, now, |v| {
            v.poll_cq()?;
            Ok((v.received().last() == Some(&want)).then_some(()))
        })?;
        let dt = t.elapsed().as_nanos() as u64;
        if v.received() != expect {
            return Err(format!(
                "round trip {i}: the peer's WRITE landed other bytes"
            ));
        }
        if i >= warmup {
            rec.record(dt);
        }
    }
    v.poll_cq().map(drop)
}

/// The peer process on the verbs path: answers every ping from its
/// receive buffer, then waits for its last pong to be acknowledged.
fn verbs_peer(op: Op, link: FrameLink, total: u64) -> Result<(), String> {
    let mut v = Verbs::new(link, PEER, ME)?;
    let start = Instant::now();
    match op {
        Op::Send => {
            let mut recv = v.recv_wr();
            let mut pong = v.send_wr(MSG);
            // Two receives up: one is always posted when a ping comes.
            for id in 0..2 {
                recv.wr_id = id;
                v.post_recv(&recv)?;
            }
            for i in 0..total {
                v.spin(start, |v| Ok(v.poll_cq()?.then_some(())))?;
                // The pong goes from the receive buffer (its frame built
                // straight from the region at post_send) and leaves at
                // once (the doorbell), then the receive taken is posted
                // again.
                pong.wr_id = i;
                pong.signaled = i + 1 == total;
                v.post_send(&pong)?;
                v.nic.flush().map_err(|e| format!("frame link: {e}"))?;
                recv.wr_id = i + 2;
                v.post_recv(&recv)?;
                v.nic
                    .poll(start.elapsed().as_nanos() as u64)
                    .map_err(|e| format!("frame link: {e}"))?;
            }
        }
        Op::Write => {
            let mut pong = v.write_wr(MSG);
            for i in 0..total {
                let want = tag(i);
                v.spin(start, |v| {
                    v.poll_cq()?;
                    Ok((v.received().last() == Some(&want)).then_some(()))
                })?;
                pong.wr_id = i;
                pong.signaled = i + 1 == total;
                v.post_send(&pong)?;
                v.nic
                    .poll(start.elapsed().as_nanos() as u64)
                    .map_err(|e| format!("frame link: {e}"))?;
            }
        }
    }
    v.spin(start, |v| {
        v.poll_cq()?;
        Ok(v.nic.transport().next_deadline().is_none().then_some(()))
    })?;
    v.check_clean()
}

/// A verbs context with a PD, a region, a CQ and a queue pair in RTS
/// towards `peer`'s (both ends' first queue pair has the same number):
/// one end of `rdma-send-64-1t`, and what [`Verbs`] drives over a link.
struct OneEnd {
    ctx: Context,
    cq: CqHandle,
    qp: QpHandle,
    mr: MrHandle,
    info: MrInfo,
}

impl OneEnd {
    fn new(me: DomId, peer: DomId) -> Result<OneEnd, String> {
        let ip = |d: DomId| [10, 0, 0, d.0 as u8];
        let psn = |d: DomId| 0x1000 * u32::from(d.0);
        let e = |what: &'static str| move |e: VerbsError| format!("verbs {what}: {e}");
        let mut ctx = Context::new(mac(me), ip(me));
        let pd = ctx.alloc_pd().map_err(e("alloc_pd"))?;
        let access = AccessFlags(AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0);
        let mr = ctx.reg_mr(pd, VERBS_REGION, access).map_err(e("reg_mr"))?;
        let cq = ctx.create_cq(64).map_err(e("create_cq"))?;
        let init = QpInitAttr {
            send_cq: cq,
            recv_cq: cq,
            max_send_wr: 16,
            max_recv_wr: 16,
            max_send_sge: 1,
            max_recv_sge: 1,
            sq_sig_all: false,
        };
        let qp = ctx.create_qp(pd, &init).map_err(e("create_qp"))?;
        let mut a = QpAttr::to(QpState::Init);
        a.pkey_index = Some(0);
        a.port_num = Some(1);
        a.qp_access_flags = Some(access);
        ctx.modify_qp(qp, &a).map_err(e("modify_qp to INIT"))?;
        let mut a = QpAttr::to(QpState::Rtr);
        a.ah_attr = Some(AhAttr {
            dgid: ipv4_gid(ip(peer)),
            dmac: mac(peer),
            hop_limit: 64,
            traffic_class: 0,
        });
        a.path_mtu = Some(PathMtu::Mtu1024);
        a.dest_qp_num = Some(qp.qp_num());
        a.rq_psn = Some(psn(peer));
        a.max_dest_rd_atomic = Some(1);
        a.min_rnr_timer = Some(1);
        ctx.modify_qp(qp, &a).map_err(e("modify_qp to RTR"))?;
        let mut a = QpAttr::to(QpState::Rts);
        a.sq_psn = Some(psn(me));
        a.timeout = Some(VERBS_TIMEOUT);
        a.retry_cnt = Some(7);
        a.rnr_retry = Some(7);
        a.max_rd_atomic = Some(1);
        ctx.modify_qp(qp, &a).map_err(e("modify_qp to RTS"))?;
        let info = ctx.mr_info(mr).map_err(e("mr_info"))?;
        Ok(OneEnd { ctx, cq, qp, mr, info })
    }

    fn sge(&self, offset: usize) -> Sge {
        Sge {
            addr: self.info.addr + offset as u64,
            length: MSG as u32,
            lkey: self.info.lkey,
        }
    }

    /// Polls the CQ: whether a receive completed (every completion must
    /// be a success).
    #[inline(always)]
    fn received(&mut self, wcs: &mut Vec<WorkCompletion>) -> Result<bool, String> {
        wcs.clear();
        self.ctx
            .poll_cq_into(self.cq, 4, wcs)
            .map_err(|e| format!("poll_cq: {e}"))?;
        let mut recv = false;
        for wc in wcs.iter() {
            if wc.status != WcStatus::Success {
                return Err(format!("work request {} failed: {:?}", wc.wr_id, wc.status));
            }
            recv |= wc.opcode == WcOpcode::Recv;
        }
        Ok(recv)
    }
}

/// Moves every frame `from` has to `to` as `RoceNic` does: written into a
/// transmit buffer (`tx`), copied into a private buffer (`rx`), handed
/// over. Returns how many moved.
#[inline(always)]
fn carry(from: &mut Context, to: &mut Context, tx: &mut [u8], rx: &mut Vec<u8>) -> usize {
    let mut n = 0;
    while let Some(len) = from.next_frame_len() {
        let Some(w) = tx.get_mut(..len).and_then(|b| from.emit_into(b)) else {
            break;
        };
        rx.clear();
        rx.extend_from_slice(tx.get(..w).unwrap_or(&[]));
        // The clock stands still: no timer may fire.
        to.handle_frame(rx, 0);
        n += 1;
    }
    n
}

/// `rdma-send-64-1t`: `warmup` round trips of `rdma-send-64`'s exchange
/// (unsignaled SENDs but the last, receives posted ahead), then `iters`
/// recorded, both ends on this thread, each round trip timed.
#[inline(never)]
fn one_thread_send(iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
    let total = iters + warmup;
    let mut a = OneEnd::new(ME, PEER)?;
    let mut b = OneEnd::new(PEER, ME)?;
    let mut ping = SendWr {
        wr_id: 0,
        sg_list: vec![a.sge(0)],
        opcode: WrOpcode::Send,
        signaled: false,
    };
    let mut pong = SendWr {
        wr_id: 0,
        sg_list: vec![b.sge(MSG)],
        opcode: WrOpcode::Send,
        signaled: false,
    };
    let recv_a = RecvWr {
        wr_id: 0,
        sg_list: vec![a.sge(MSG)],
    };
    let recv_b = RecvWr {
        wr_id: 0,
        sg_list: vec![b.sge(MSG)],
    };
    let (mut tx, mut rx) = (vec![0u8; 2048], Vec::with_capacity(2048));
    let mut wcs = Vec::with_capacity(4);
    let post = |e: VerbsError| format!("post: {e}");
    b.ctx.post_recv(b.qp, &recv_b).map_err(post)?;
    for i in 0..total {
        a.ctx.post_recv(a.qp, &recv_a).map_err(post)?;
        ping.wr_id = i;
        ping.signaled = i + 1 == total;
        pong.wr_id = i;
        pong.signaled = i + 1 == total;
        let t = Instant::now();
        a.ctx.post_send(a.qp, &ping).map_err(post)?;
        carry(&mut a.ctx, &mut b.ctx, &mut tx, &mut rx);
        if !b.received(&mut wcs)? {
            return Err(format!("round trip {i}: the ping did not arrive"));
        }
        b.ctx.post_send(b.qp, &pong).map_err(post)?;
        b.ctx.post_recv(b.qp, &recv_b).map_err(post)?;
        carry(&mut b.ctx, &mut a.ctx, &mut tx, &mut rx);
        if !a.received(&mut wcs)? {
            return Err(format!("round trip {i}: the pong did not arrive"));
        }
        let dt = t.elapsed().as_nanos() as u64;
        if i >= warmup {
            rec.record(dt);
        }
    }
    // The last ACKs; then nothing may wait.
    carry(&mut a.ctx, &mut b.ctx, &mut tx, &mut rx);
    carry(&mut b.ctx, &mut a.ctx, &mut tx, &mut rx);
    a.received(&mut wcs)?;
    b.received(&mut wcs)?;
    if a.ctx.next_deadline().is_some() || b.ctx.next_deadline().is_some() {
        return Err("a send was left unacknowledged".into());
    }
    Ok(())
}
