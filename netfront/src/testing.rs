//! An in-process test backend (feature `testing`): the netback end of a
//! vif, enough to run the driver against in tests, on any platform that
//! implements the backend seam ([`ForeignGrants`]) and event channels (the
//! fake platform, the hosted platform).
//!
//! [`TestBackend`] maps the frontend's rings, binds its event channels and
//! plays netback: it takes TX packets (mapping each slot's grant read-only
//! and copying the data out, checking the rules netback checks), answers
//! them, and lays received frames into the posted RX buffers exactly as
//! Linux 6.1's netback does (data slots of `4096 - headroom` bytes, extras
//! after the first slot, the XDP headroom's `status` convention). It also
//! has raw hooks for hostile tests: answering with any response, writing
//! any extra, moving a producer index anywhere.
//!
//! It is test support, not a backend for real use: no switch, no limits
//! on what it buffers, errors as strings.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use grant_tables::{
    map_back_ring, Access, BackRing, DomId, EventChannels, ForeignGrants, ForeignMapping, MapOp,
    Port,
};

use crate::abi::{
    ExtraGso, ExtraXdp, GrantRefNum, NetifExtraInfo, NetifRxRequest, NetifRxResponse,
    NetifTxRequest, NetifTxResponse, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_CSUM_BLANK,
    NETRXF_DATA_VALIDATED, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, NETTXF_EXTRA_INFO,
    NETTXF_MORE_DATA, PAGE_SIZE, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_NR_SLOTS_MIN,
};
use crate::features::{BackendFeatures, FrontendInfo, MacAddr};

/// The keys a backend with `features` writes in its directory.
pub fn backend_keys(f: &BackendFeatures) -> Vec<(String, String)> {
    let b = |v: bool| String::from(if v { "1" } else { "0" });
    let mut keys = vec![
        ("feature-sg".to_string(), b(f.sg)),
        ("feature-gso-tcpv4".to_string(), b(f.gso_tcpv4)),
        ("feature-gso-tcpv6".to_string(), b(f.gso_tcpv6)),
        (
            "feature-ipv6-csum-offload".to_string(),
            b(f.ipv6_csum_offload),
        ),
        ("feature-rx-copy".to_string(), b(f.rx_copy)),
        ("feature-rx-flip".to_string(), "0".to_string()),
        (
            "feature-split-event-channels".to_string(),
            b(f.split_event_channels),
        ),
        ("feature-xdp-headroom".to_string(), b(f.xdp_headroom)),
    ];
    if let Some(n) = f.max_queues {
        keys.push(("multi-queue-max-queues".to_string(), n.to_string()));
    }
    keys
}

/// Linux's netback's offer: SG, GSO both ways, IPv6 checksum offload,
/// rx-copy, split channels, up to `queues` queues, the XDP headroom.
pub fn linux_like(queues: u32) -> BackendFeatures {
    BackendFeatures {
        sg: true,
        gso_tcpv4: true,
        gso_tcpv6: true,
        ipv6_csum_offload: true,
        rx_copy: true,
        split_event_channels: true,
        max_queues: Some(queues),
        xdp_headroom: true,
        ctrl_ring: false,
        multicast_control: false,
        dynamic_multicast_control: false,
    }
}

/// What the toolstack writes for a vif: `mac`, trusted, no MTU.
pub fn toolstack(mac: [u8; 6]) -> FrontendInfo {
    FrontendInfo {
        mac: MacAddr(mac),
        trusted: true,
        mtu: None,
    }
}

/// A frame the frontend sent, as the backend took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentFrame {
    /// The frame's bytes.
    pub data: Vec<u8>,
    /// The first slot's `NETTXF_*` flags.
    pub flags: u16,
    /// The GSO extra's (type, size), if any.
    pub gso: Option<(u8, u16)>,
    /// Request slots the packet took.
    pub slots: usize,
    /// The queue it came on.
    pub queue: u16,
}

/// One TX packet's slots as taken off the ring: its requests and its
/// extras, in ring order.
pub type TxPacketSlots = (Vec<NetifTxRequest>, Vec<NetifExtraInfo>);

/// How to lay a frame into the frontend's RX buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxOpts {
    /// Set `NETRXF_csum_blank` (and data_validated, as netback does).
    pub csum_blank: bool,
    /// Set `NETRXF_data_validated`.
    pub data_validated: bool,
    /// Add a GSO extra (type, size).
    pub gso: Option<(u8, u16)>,
}

struct BackQueue<G: ForeignGrants> {
    tx: BackRing<NetifTxRequest, NetifTxResponse, G::RingMapping>,
    rx: BackRing<NetifRxRequest, NetifRxResponse, G::RingMapping>,
    rx_ring_ref: GrantRefNum,
    tx_port: Port,
    rx_port: Port,
    /// RX requests taken off the ring and not yet answered.
    posted: VecDeque<NetifRxRequest>,
}

/// The backend end of a vif (see the [module docs](self)).
pub struct TestBackend<G: ForeignGrants + EventChannels> {
    platform: G,
    frontend: DomId,
    queues: Vec<BackQueue<G>>,
    headroom: u16,
    /// What the frontend wrote for its features.
    pub frontend_features: Vec<(String, String)>,
    /// Frames the frontend sent, oldest first.
    pub sent: VecDeque<SentFrame>,
}

type Keys<'a> = &'a mut dyn FnMut(&str) -> Option<String>;

fn num(keys: Keys<'_>, key: &str) -> Result<u32, String> {
    let v = keys(key).ok_or_else(|| format!("the frontend did not write {key}"))?;
    v.parse()
        .map_err(|_| format!("the frontend's {key} is {v:?}, not a number"))
}

impl<G: ForeignGrants + EventChannels> TestBackend<G> {
    /// Attaches to the frontend of domain `frontend` whose keys `keys`
    /// reads (relative to its directory): maps every queue's rings, binds
    /// its event channels.
    pub fn attach(
        platform: G,
        frontend: DomId,
        keys: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let nq = match keys("multi-queue-num-queues") {
            None => 1,
            Some(_) => num(keys, "multi-queue-num-queues")?,
        };
        let headroom = match keys("xdp-headroom") {
            None => 0,
            Some(_) => num(keys, "xdp-headroom")? as u16,
        };
        let mut frontend_features = Vec::new();
        for k in [
            "request-rx-copy",
            "feature-rx-notify",
            "feature-sg",
            "feature-gso-tcpv4",
            "feature-gso-tcpv6",
            "feature-ipv6-csum-offload",
            "feature-no-csum-offload",
            "xdp-headroom",
        ] {
            if let Some(v) = keys(k) {
                frontend_features.push((k.to_string(), v));
            }
        }
        let mut queues = Vec::new();
        for i in 0..nq {
            let prefix = if nq == 1 {
                String::new()
            } else {
                format!("queue-{i}/")
            };
            let tx_ref = num(keys, &format!("{prefix}tx-ring-ref"))?;
            let rx_ref = num(keys, &format!("{prefix}rx-ring-ref"))?;
            let (tp, rp) = match keys(&format!("{prefix}event-channel")) {
                Some(_) => {
                    let p = num(keys, &format!("{prefix}event-channel"))?;
                    (p, None)
                }
                None => (
                    num(keys, &format!("{prefix}event-channel-tx"))?,
                    Some(num(keys, &format!("{prefix}event-channel-rx"))?),
                ),
            };
            let tx = map_back_ring(&platform, frontend, &[tx_ref]).map_err(|e| e.to_string())?;
            let rx = map_back_ring(&platform, frontend, &[rx_ref]).map_err(|e| e.to_string())?;
            let tx_port = platform
                .bind_interdomain(frontend, Port(tp))
                .map_err(|e| e.to_string())?;
            let rx_port = match rp {
                None => tx_port,
                Some(p) => platform
                    .bind_interdomain(frontend, Port(p))
                    .map_err(|e| e.to_string())?,
            };
            queues.push(BackQueue {
                tx,
                rx,
                rx_ring_ref: rx_ref,
                tx_port,
                rx_port,
                posted: VecDeque::new(),
            });
        }
        Ok(TestBackend {
            platform,
            frontend,
            queues,
            headroom,
            frontend_features,
            sent: VecDeque::new(),
        })
    }

    /// The backend's platform.
    pub fn platform(&self) -> &G {
        &self.platform
    }

    /// Queues attached.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// The event channel ports of every queue (TX and RX; the same port
    /// twice when they are shared).
    pub fn ports(&self) -> Vec<Port> {
        let mut v = Vec::new();
        for q in &self.queues {
            v.push(q.tx_port);
            if q.rx_port != q.tx_port {
                v.push(q.rx_port);
            }
        }
        v
    }

    /// Unbinds the event channels (the backend going away); the rings are
    /// unmapped when the backend is dropped.
    pub fn close_ports(&mut self) {
        for q in &self.queues {
            let _ = self.platform.close(q.tx_port);
            if q.rx_port != q.tx_port {
                let _ = self.platform.close(q.rx_port);
            }
        }
    }

    fn queue(&mut self, queue: usize) -> Result<&mut BackQueue<G>, String> {
        self.queues
            .get_mut(queue)
            .ok_or_else(|| format!("no queue {queue}"))
    }

    fn read_grant(&self, gref: GrantRefNum, offset: usize, out: &mut [u8]) -> Result<(), String> {
        let mut maps = Vec::new();
        self.platform.map_batch(
            &[MapOp {
                granter: self.frontend,
                gref,
                access: Access::ReadOnly,
            }],
            &mut maps,
        );
        let m = maps.pop().ok_or("no mapping")?.map_err(|e| e.to_string())?;
        m.read_at(offset, out).map_err(|e| e.to_string())
    }

    fn write_grant(&self, gref: GrantRefNum, offset: usize, data: &[u8]) -> Result<(), String> {
        let mut maps = Vec::new();
        self.platform.map_batch(
            &[MapOp {
                granter: self.frontend,
                gref,
                access: Access::ReadWrite,
            }],
            &mut maps,
        );
        let m = maps.pop().ok_or("no mapping")?.map_err(|e| e.to_string())?;
        m.write_at(offset, data).map_err(|e| e.to_string())
    }

    /// Takes one TX packet's slots off queue `queue` without answering
    /// them: the requests and the extras, in ring order. `None` when no
    /// whole packet waits.
    pub fn take_tx_packet(&mut self, queue: usize) -> Result<Option<TxPacketSlots>, String> {
        let q = self.queue(queue)?;
        let Some(first) = q.tx.take_request().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let mut reqs = vec![first];
        let mut extras = Vec::new();
        if first.flags & NETTXF_EXTRA_INFO != 0 {
            loop {
                let e: NetifExtraInfo =
                    q.tx.take_request_as()
                        .map_err(|e| e.to_string())?
                        .ok_or("a TX packet cut short after its first slot")?;
                extras.push(e);
                if e.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                    break;
                }
            }
        }
        let mut last = first;
        while last.flags & NETTXF_MORE_DATA != 0 {
            last =
                q.tx.take_request()
                    .map_err(|e| e.to_string())?
                    .ok_or("a TX packet continues past the published requests")?;
            reqs.push(last);
        }
        Ok(Some((reqs, extras)))
    }

    /// Writes a TX response as is (hostile tests) on queue `queue`; call
    /// [`Self::push`] to publish it.
    pub fn respond_tx(&mut self, queue: usize, rsp: NetifTxResponse) -> Result<(), String> {
        self.queue(queue)?
            .tx
            .put_response(rsp)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Publishes the responses written on queue `queue` and notifies the
    /// frontend if it asked.
    pub fn push(&mut self, queue: usize) -> Result<(), String> {
        let q = self
            .queues
            .get_mut(queue)
            .ok_or_else(|| format!("no queue {queue}"))?;
        let (tx_port, rx_port) = (q.tx_port, q.rx_port);
        let t = q.tx.push_responses();
        let r = q.rx.push_responses();
        if t {
            self.platform.notify(tx_port).map_err(|e| e.to_string())?;
        }
        if r && (rx_port != tx_port || !t) {
            self.platform.notify(rx_port).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Takes every TX packet on every queue, copies its data out (checking
    /// netback's rules), answers it OKAY and publishes the answers. Returns
    /// how many packets were taken.
    pub fn pump_tx(&mut self) -> Result<usize, String> {
        let mut n = 0;
        for qi in 0..self.queues.len() {
            while let Some((reqs, extras)) = self.take_tx_packet(qi)? {
                if reqs.len() > XEN_NETIF_NR_SLOTS_MIN {
                    return Err(format!("a TX packet of {} slots", reqs.len()));
                }
                let total = usize::from(reqs[0].size);
                let rest: usize = reqs[1..].iter().map(|r| usize::from(r.size)).sum();
                let first_len = total
                    .checked_sub(rest)
                    .ok_or("a TX packet whose first size is below the others' sum")?;
                let mut data = vec![0u8; total];
                let mut at = 0;
                for (i, r) in reqs.iter().enumerate() {
                    let len = if i == 0 {
                        first_len
                    } else {
                        usize::from(r.size)
                    };
                    if usize::from(r.offset) + len > PAGE_SIZE {
                        return Err(format!("a TX slot crosses its page: {r:?}"));
                    }
                    self.read_grant(r.gref, usize::from(r.offset), &mut data[at..at + len])?;
                    at += len;
                }
                let gso = extras
                    .iter()
                    .find(|e| e.type_ == XEN_NETIF_EXTRA_TYPE_GSO)
                    .map(|e| (e.gso().type_, e.gso().size));
                self.sent.push_back(SentFrame {
                    data,
                    flags: reqs[0].flags,
                    gso,
                    slots: reqs.len(),
                    queue: qi as u16,
                });
                // Responses in slot order: the first request, NULLs for the
                // extras, the other requests.
                let ok = |id| NetifTxResponse {
                    id,
                    status: NETIF_RSP_OKAY,
                };
                self.respond_tx(qi, ok(reqs[0].id))?;
                for _ in &extras {
                    self.respond_tx(
                        qi,
                        NetifTxResponse {
                            id: 0,
                            status: NETIF_RSP_NULL,
                        },
                    )?;
                }
                for r in &reqs[1..] {
                    self.respond_tx(qi, ok(r.id))?;
                }
                n += 1;
            }
            self.push(qi)?;
        }
        Ok(n)
    }

    /// Takes every RX request the frontend posted on queue `queue` into
    /// the backend's list; returns how many it holds.
    pub fn take_rx_requests(&mut self, queue: usize) -> Result<usize, String> {
        let q = self.queue(queue)?;
        while let Some(r) = q.rx.take_request().map_err(|e| e.to_string())? {
            q.posted.push_back(r);
        }
        Ok(q.posted.len())
    }

    /// Writes one RX response slot as is (hostile tests), consuming a
    /// posted request; call [`Self::push`] to publish it.
    pub fn respond_rx_raw(&mut self, queue: usize, rsp: NetifRxResponse) -> Result<(), String> {
        self.take_rx_requests(queue)?;
        let q = self.queue(queue)?;
        q.posted.pop_front().ok_or("no RX request posted")?;
        q.rx.put_response(rsp).map(drop).map_err(|e| e.to_string())
    }

    /// Writes one RX extra-info slot as is (hostile tests), consuming a
    /// posted request.
    pub fn respond_rx_extra(&mut self, queue: usize, extra: NetifExtraInfo) -> Result<(), String> {
        self.take_rx_requests(queue)?;
        let q = self.queue(queue)?;
        q.posted.pop_front().ok_or("no RX request posted")?;
        q.rx.put_response_as(&extra)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The id of the next posted RX request on `queue`.
    pub fn next_rx_id(&mut self, queue: usize) -> Result<Option<u16>, String> {
        self.take_rx_requests(queue)?;
        Ok(self.queue(queue)?.posted.front().map(|r| r.id))
    }

    /// Overwrites the RX ring's `rsp_prod` (hostile tests: a producer index
    /// moving backwards), through a separate mapping of the ring page.
    pub fn poke_rx_rsp_prod(&mut self, queue: usize, value: u32) -> Result<(), String> {
        let gref = self.queue(queue)?.rx_ring_ref;
        self.write_grant(gref, 8, &value.to_le_bytes())
    }

    /// Lays `frame` into the RX buffers posted on queue `queue` as netback
    /// does and publishes it. `Ok(false)` when too few buffers are posted
    /// (nothing is consumed then).
    pub fn deliver(&mut self, queue: usize, frame: &[u8], opts: RxOpts) -> Result<bool, String> {
        let headroom = usize::from(self.headroom);
        let per_slot = PAGE_SIZE - headroom;
        let data_slots = frame.len().div_ceil(per_slot).max(1);
        let extras = usize::from(opts.gso.is_some()) + usize::from(headroom > 0);
        let have = self.take_rx_requests(queue)?;
        if have < data_slots + extras {
            return Ok(false);
        }
        let mut reqs = Vec::new();
        {
            let q = self.queue(queue)?;
            for _ in 0..data_slots + extras {
                reqs.push(q.posted.pop_front().ok_or("posted request vanished")?);
            }
        }
        // Data slot i uses request: 0 for the first, then after the extras.
        let mut responses: Vec<NetifRxResponse> = Vec::new();
        let mut chunks = frame.chunks(per_slot).collect::<Vec<_>>();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let req = if i == 0 { reqs[0] } else { reqs[extras + i] };
            self.write_grant(req.gref, headroom, chunk)?;
            let mut flags = 0;
            if i == 0 {
                if opts.csum_blank {
                    flags |= NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED;
                }
                if opts.data_validated {
                    flags |= NETRXF_DATA_VALIDATED;
                }
                if extras > 0 {
                    flags |= NETRXF_EXTRA_INFO;
                }
            }
            if i + 1 < chunks.len() {
                flags |= NETRXF_MORE_DATA;
            }
            responses.push(NetifRxResponse {
                id: req.id,
                offset: 0,
                flags,
                status: (headroom + chunk.len()) as i16,
            });
        }
        let q = self.queue(queue)?;
        q.rx.put_response(responses[0]).map_err(|e| e.to_string())?;
        let mut extra_list = Vec::new();
        if let Some((ty, size)) = opts.gso {
            extra_list.push(NetifExtraInfo::new_gso(
                0,
                ExtraGso {
                    size,
                    type_: ty,
                    pad: 0,
                    features: 0,
                },
            ));
        }
        if headroom > 0 {
            extra_list.push(NetifExtraInfo::new_xdp(
                0,
                ExtraXdp {
                    headroom: headroom as u16,
                    pad: [0; 2],
                },
            ));
        }
        let last = extra_list.len();
        for (i, mut e) in extra_list.into_iter().enumerate() {
            if i + 1 < last {
                e.flags |= XEN_NETIF_EXTRA_FLAG_MORE;
            }
            q.rx.put_response_as(&e).map_err(|e| e.to_string())?;
        }
        for r in &responses[1..] {
            q.rx.put_response(*r).map_err(|e| e.to_string())?;
        }
        self.push(queue)?;
        Ok(true)
    }
}
