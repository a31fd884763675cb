//! `netfront::abi` against Xen's own `io/netif.h`, as the C compiler lays
//! it out.
//!
//! The test compiles `netif_layout.c` with the system C compiler (`$CC` or
//! `cc`) against the headers in `/usr/include/xen` (Debian's `libxen-dev`,
//! or `$XEN_INCLUDE_DIR`), runs it, and compares every type's size and
//! alignment, every field's offset and size, the ring slot sizes and ring
//! sizes, and every constant with the Rust definitions. Every mismatch is
//! reported, not just the first.
//!
//! The XDP extra is not in Xen 4.17's header (it is Linux's); its layout is
//! checked against the union's size and against Xen's
//! `XEN_NETIF_EXTRA_TYPE_MAX`, the type number Linux gave it.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use grant_tables::ring::{entry_size, ring_entries};
use netfront::abi::*;

struct CLayout {
    types: BTreeMap<String, (usize, usize)>,
    fields: BTreeMap<String, (usize, usize)>,
    consts: BTreeMap<String, i64>,
}

/// The C layout, probed once for all tests.
fn c_layout() -> &'static CLayout {
    static LAYOUT: OnceLock<CLayout> = OnceLock::new();
    LAYOUT.get_or_init(probe)
}

/// Compiles and runs the C probe; panics with what to install when the
/// headers are missing.
fn probe() -> CLayout {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("netif-layout");
    std::fs::create_dir_all(&dir).expect("create the probe's directory");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netif_layout.c");
    let exe = dir.join("netif_layout");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(&cc);
    cmd.args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src);
    if let Ok(inc) = std::env::var("XEN_INCLUDE_DIR") {
        cmd.arg("-I").arg(inc);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}; install gcc"));
    assert!(
        out.status.success(),
        "compiling {} failed (are Xen's headers installed? apt-get install -y libxen-dev, or set XEN_INCLUDE_DIR):\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("run the C probe");
    assert!(run.status.success(), "the C probe failed");
    let text = String::from_utf8(run.stdout).expect("the probe prints ASCII");

    let mut l = CLayout {
        types: BTreeMap::new(),
        fields: BTreeMap::new(),
        consts: BTreeMap::new(),
    };
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| w[i].parse::<i64>().expect("a number");
        match w[0] {
            "T" => {
                l.types
                    .insert(w[1].into(), (num(2) as usize, num(3) as usize));
            }
            "F" => {
                l.fields
                    .insert(w[1].into(), (num(2) as usize, num(3) as usize));
            }
            "C" => {
                l.consts.insert(w[1].into(), num(2));
            }
            other => panic!("unknown probe row kind {other}"),
        }
    }
    l
}

/// One Rust field: (C member name, offset, size).
type Field = (&'static str, usize, usize);

macro_rules! fields {
    ($t:ty { $($f:ident => $c:literal),* $(,)? }) => {{
        let z = <$t as zerocopy::FromZeros>::new_zeroed();
        vec![$(($c, offset_of!($t, $f), std::mem::size_of_val(&z.$f))),*]
    }};
}

fn check_type(
    errs: &mut Vec<String>,
    c: &CLayout,
    c_type: &str,
    rust: &str,
    size: usize,
    align: usize,
    fields: &[Field],
) {
    match c.types.get(c_type) {
        None => errs.push(format!("{c_type}: not printed by the C probe")),
        Some(&(cs, ca)) => {
            if (cs, ca) != (size, align) {
                errs.push(format!(
                    "{rust}: size {size} align {align}, C {c_type} has size {cs} align {ca}"
                ));
            }
        }
    }
    let prefix = format!("{c_type}.");
    let c_fields: Vec<(&str, (usize, usize))> = c
        .fields
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|n| (n, *v)))
        .collect();
    if c_fields.is_empty() {
        errs.push(format!("{c_type}: the C probe printed no fields"));
    }
    for (name, (off, sz)) in &c_fields {
        match fields.iter().find(|f| f.0 == *name) {
            None => errs.push(format!("{rust}: no field for C {c_type}.{name}")),
            Some(&(_, ro, rs)) => {
                if (ro, rs) != (*off, *sz) {
                    errs.push(format!(
                        "{rust}.{name}: offset {ro} size {rs}, C has offset {off} size {sz}"
                    ));
                }
            }
        }
    }
    for f in fields {
        if !c_fields.iter().any(|(n, _)| *n == f.0) {
            errs.push(format!("{rust}: C {c_type} has no field {}", f.0));
        }
    }
    let covered: usize = fields.iter().map(|f| f.2).sum();
    if covered != size {
        errs.push(format!("{rust}: fields cover {covered} of {size} bytes"));
    }
}

macro_rules! check {
    ($errs:expr, $c:expr, $cname:literal, $t:ty { $($f:ident => $cf:literal),* $(,)? }) => {
        check_type(
            $errs,
            $c,
            $cname,
            stringify!($t),
            size_of::<$t>(),
            align_of::<$t>(),
            &fields!($t { $($f => $cf),* }),
        )
    };
}

fn report(what: &str, errs: Vec<String>) {
    assert!(
        errs.is_empty(),
        "{what}: {} mismatch(es) with Xen's io/netif.h:\n  {}",
        errs.len(),
        errs.join("\n  ")
    );
}

#[test]
fn structures_match_xen_netif_h() {
    let c = c_layout();
    let mut errs = Vec::new();
    let e = &mut errs;
    check!(e, c, "netif_tx_request", NetifTxRequest {
        gref => "gref", offset => "offset", flags => "flags", id => "id", size => "size",
    });
    check!(e, c, "netif_tx_response", NetifTxResponse { id => "id", status => "status" });
    check!(e, c, "netif_rx_request", NetifRxRequest { id => "id", pad => "pad", gref => "gref" });
    check!(e, c, "netif_rx_response", NetifRxResponse {
        id => "id", offset => "offset", flags => "flags", status => "status",
    });
    check!(e, c, "netif_extra_info", NetifExtraInfo { type_ => "type", flags => "flags", u => "u" });
    check!(e, c, "extra_gso", ExtraGso {
        size => "size", type_ => "type", pad => "pad", features => "features",
    });
    check!(e, c, "extra_mcast", ExtraMcast { addr => "addr" });
    check!(e, c, "extra_hash", ExtraHash { type_ => "type", algorithm => "algorithm", value => "value" });
    report("netif structures", errs);
}

#[test]
fn ring_slots_match_xen_netif_h() {
    let c = c_layout();
    let mut errs = Vec::new();
    let tx_entry = entry_size::<NetifTxRequest, NetifTxResponse>();
    let rx_entry = entry_size::<NetifRxRequest, NetifRxResponse>();
    let slot = |name: &str| c.types.get(name).map(|t| t.0);
    if slot("netif_tx_sring_entry") != Some(tx_entry) || tx_entry != TX_SLOT_SIZE {
        errs.push(format!(
            "TX slot: Rust entry {tx_entry}, TX_SLOT_SIZE {TX_SLOT_SIZE}, C {:?}",
            slot("netif_tx_sring_entry")
        ));
    }
    if slot("netif_rx_sring_entry") != Some(rx_entry) || rx_entry != RX_SLOT_SIZE {
        errs.push(format!(
            "RX slot: Rust entry {rx_entry}, RX_SLOT_SIZE {RX_SLOT_SIZE}, C {:?}",
            slot("netif_rx_sring_entry")
        ));
    }
    // Both shapes of each slot fit it.
    if size_of::<NetifExtraInfo>() > TX_SLOT_SIZE.min(RX_SLOT_SIZE)
        || size_of::<TxSlotBytes>() != TX_SLOT_SIZE
        || size_of::<RxSlotBytes>() != RX_SLOT_SIZE
    {
        errs.push("an extra-info does not fit both rings' slots".into());
    }
    for (name, entry) in [
        ("NET_TX_RING_SIZE", tx_entry),
        ("NET_RX_RING_SIZE", rx_entry),
    ] {
        let rust = i64::from(ring_entries(PAGE_SIZE, entry));
        if c.consts.get(name) != Some(&rust) {
            errs.push(format!("{name}: Rust {rust}, C {:?}", c.consts.get(name)));
        }
    }
    report("netif ring slots", errs);
}

#[test]
fn xdp_extra_takes_the_slot_xen_reserves() {
    let c = c_layout();
    // Xen 4.17's header ends the extra types at MAX = 5; Linux's gave 5 to
    // XDP and moved MAX to 6.
    assert_eq!(c.consts.get("XEN_NETIF_EXTRA_TYPE_MAX"), Some(&5));
    assert_eq!(XEN_NETIF_EXTRA_TYPE_XDP, 5);
    assert_eq!(XEN_NETIF_EXTRA_TYPE_MAX, 6);
    // u.xdp: a 16-bit headroom at the start of the 6-byte union.
    let union_size = c.fields.get("netif_extra_info.u").map(|f| f.1);
    assert_eq!(union_size, Some(size_of::<ExtraXdp>()));
    assert_eq!(offset_of!(ExtraXdp, headroom), 0);
    assert_eq!(align_of::<ExtraXdp>(), 2);
    let e = NetifExtraInfo::new_xdp(
        0,
        ExtraXdp {
            headroom: 0x1234,
            pad: [0; 2],
        },
    );
    assert_eq!(zerocopy::IntoBytes::as_bytes(&e)[2..4], [0x34, 0x12]);
}

#[test]
fn constants_match_xen_netif_h() {
    let c = c_layout();
    let rust: &[(&str, i64)] = &[
        ("XEN_NETIF_NR_SLOTS_MIN", XEN_NETIF_NR_SLOTS_MIN as i64),
        ("XEN_NETIF_MAX_TX_SIZE", XEN_NETIF_MAX_TX_SIZE as i64),
        ("NETTXF_csum_blank", NETTXF_CSUM_BLANK.into()),
        ("NETTXF_data_validated", NETTXF_DATA_VALIDATED.into()),
        ("NETTXF_more_data", NETTXF_MORE_DATA.into()),
        ("NETTXF_extra_info", NETTXF_EXTRA_INFO.into()),
        ("NETRXF_data_validated", NETRXF_DATA_VALIDATED.into()),
        ("NETRXF_csum_blank", NETRXF_CSUM_BLANK.into()),
        ("NETRXF_more_data", NETRXF_MORE_DATA.into()),
        ("NETRXF_extra_info", NETRXF_EXTRA_INFO.into()),
        ("NETRXF_gso_prefix", NETRXF_GSO_PREFIX.into()),
        (
            "XEN_NETIF_EXTRA_TYPE_NONE",
            XEN_NETIF_EXTRA_TYPE_NONE.into(),
        ),
        ("XEN_NETIF_EXTRA_TYPE_GSO", XEN_NETIF_EXTRA_TYPE_GSO.into()),
        (
            "XEN_NETIF_EXTRA_TYPE_MCAST_ADD",
            XEN_NETIF_EXTRA_TYPE_MCAST_ADD.into(),
        ),
        (
            "XEN_NETIF_EXTRA_TYPE_MCAST_DEL",
            XEN_NETIF_EXTRA_TYPE_MCAST_DEL.into(),
        ),
        (
            "XEN_NETIF_EXTRA_TYPE_HASH",
            XEN_NETIF_EXTRA_TYPE_HASH.into(),
        ),
        (
            "XEN_NETIF_EXTRA_FLAG_MORE",
            XEN_NETIF_EXTRA_FLAG_MORE.into(),
        ),
        ("XEN_NETIF_GSO_TYPE_NONE", XEN_NETIF_GSO_TYPE_NONE.into()),
        ("XEN_NETIF_GSO_TYPE_TCPV4", XEN_NETIF_GSO_TYPE_TCPV4.into()),
        ("XEN_NETIF_GSO_TYPE_TCPV6", XEN_NETIF_GSO_TYPE_TCPV6.into()),
        (
            "_XEN_NETIF_CTRL_HASH_TYPE_IPV4",
            XEN_NETIF_CTRL_HASH_TYPE_IPV4.into(),
        ),
        (
            "_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP",
            XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP.into(),
        ),
        (
            "_XEN_NETIF_CTRL_HASH_TYPE_IPV6",
            XEN_NETIF_CTRL_HASH_TYPE_IPV6.into(),
        ),
        (
            "_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP",
            XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP.into(),
        ),
        (
            "XEN_NETIF_CTRL_HASH_ALGORITHM_NONE",
            XEN_NETIF_CTRL_HASH_ALGORITHM_NONE.into(),
        ),
        (
            "XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ",
            XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ.into(),
        ),
        ("NETIF_RSP_DROPPED", NETIF_RSP_DROPPED.into()),
        ("NETIF_RSP_ERROR", NETIF_RSP_ERROR.into()),
        ("NETIF_RSP_OKAY", NETIF_RSP_OKAY.into()),
        ("NETIF_RSP_NULL", NETIF_RSP_NULL.into()),
    ];
    let mut errs = Vec::new();
    for (name, v) in rust {
        match c.consts.get(*name) {
            None => errs.push(format!("{name}: not printed by the C probe")),
            Some(cv) if cv != v => errs.push(format!("{name}: Rust {v}, C {cv}")),
            Some(_) => {}
        }
    }
    report("netif constants", errs);
}
