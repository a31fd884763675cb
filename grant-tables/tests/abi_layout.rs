//! The Rust ABI types and constants of `grant_tables::abi` against Xen's own
//! headers, as the C compiler lays them out (`xen-c-reference`'s layout
//! table, built from `<xen/grant_table.h>` and `<xen/io/ring.h>`).
//!
//! For every type: size, alignment, and each C field's offset and size must
//! match a Rust field exactly; Rust's explicit padding fields must cover
//! only C padding; and the listed Rust fields must cover every byte (the
//! zerocopy derives forbid implicit padding, so a forgotten field shows up
//! as missing bytes). Every mismatch is reported, not just the first.
#![cfg(target_os = "linux")]

use core::mem::{align_of, offset_of, size_of, size_of_val};

use grant_tables::abi::{
    gnttabop, GntCopyFlags, GntMapFlags, GntStatus, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef,
    GnttabQuerySize, GnttabSetupTable, GnttabUnmapGrantRef, GrantEntryV1, GrantFlags, GrantHandle,
    GrantRefNum, RingIdx, SharedRingHeader, DOMID_FIRST_RESERVED, DOMID_SELF,
    GNTTAB_NR_RESERVED_ENTRIES, GRANT_ENTRIES_V1_PER_PAGE, GTF_TYPE_MASK, PAGE_SHIFT, PAGE_SIZE,
    SRING_HEADER_SIZE,
};
use grant_tables::ring::entry_size;
use xen_c_reference::layout;
use xen_c_reference::{
    EchoRequest, EchoResponse, OddRequest, OddResponse, RingTag, WideRequest, WideResponse,
};
use zerocopy::FromZeros;

/// A field of a Rust ABI type, and the C field it stands for (`None` for
/// explicit padding).
struct RustField {
    name: &'static str,
    c_name: Option<&'static str>,
    offset: usize,
    size: usize,
}

/// The fields of a Rust type with their offsets and sizes:
/// `rust_fields!(T { rust_field => Some("c_field"), _pad => None })`.
macro_rules! rust_fields {
    ($t:ty { $($f:ident => $c:expr),* $(,)? }) => {{
        let zero = <$t as FromZeros>::new_zeroed();
        vec![$(RustField {
            name: stringify!($f),
            c_name: $c,
            offset: offset_of!($t, $f),
            size: size_of_val(&zero.$f),
        }),*]
    }};
}

/// Compares Rust type `rust` (size, align, fields) with C type `c_type`,
/// appending every difference to `errs`.
fn check_type(
    errs: &mut Vec<String>,
    c_type: &str,
    rust: &str,
    size: usize,
    align: usize,
    fields: &[RustField],
) {
    let Some(c) = layout::type_layout(c_type) else {
        errs.push(format!("{c_type}: not in the C layout table"));
        return;
    };
    if c.size != size {
        errs.push(format!("{rust}: size {size}, C {c_type} has {}", c.size));
    }
    if c.align != align {
        errs.push(format!("{rust}: align {align}, C {c_type} has {}", c.align));
    }

    let c_fields = layout::fields(c_type);
    if c_fields.is_empty() {
        errs.push(format!("{c_type}: the C layout table lists no fields"));
    }
    for cf in &c_fields {
        match fields.iter().find(|rf| rf.c_name == Some(cf.name)) {
            None => errs.push(format!("{rust}: no field for C {c_type}.{}", cf.name)),
            Some(rf) => {
                if rf.offset != cf.offset {
                    errs.push(format!(
                        "{rust}.{}: offset {}, C {c_type}.{} is at {}",
                        rf.name, rf.offset, cf.name, cf.offset
                    ));
                }
                if rf.size != cf.size {
                    errs.push(format!(
                        "{rust}.{}: size {}, C {c_type}.{} has {}",
                        rf.name, rf.size, cf.name, cf.size
                    ));
                }
            }
        }
    }
    for rf in fields {
        match rf.c_name {
            Some(name) if !c_fields.iter().any(|cf| cf.name == name) => {
                errs.push(format!(
                    "{rust}.{}: C {c_type} has no field {name}",
                    rf.name
                ));
            }
            Some(_) => {}
            // Explicit padding must lie in bytes no C field uses.
            None => {
                for cf in &c_fields {
                    if rf.offset < cf.offset + cf.size && cf.offset < rf.offset + rf.size {
                        errs.push(format!(
                            "{rust}.{} (padding, bytes {}..{}) overlaps C {c_type}.{} (bytes {}..{})",
                            rf.name,
                            rf.offset,
                            rf.offset + rf.size,
                            cf.name,
                            cf.offset,
                            cf.offset + cf.size
                        ));
                    }
                }
            }
        }
    }
    let covered: usize = fields.iter().map(|f| f.size).sum();
    if covered != size {
        errs.push(format!(
            "{rust}: the listed fields cover {covered} of {size} bytes (a field is not listed)"
        ));
    }
}

fn report(what: &str, errs: Vec<String>) {
    assert!(
        errs.is_empty(),
        "{what}: {} mismatch(es) with Xen's headers:\n  {}",
        errs.len(),
        errs.join("\n  ")
    );
}

macro_rules! check {
    ($errs:expr, $c:literal, $t:ty { $($f:ident => $cf:expr),* $(,)? }) => {
        check_type(
            $errs,
            $c,
            stringify!($t),
            size_of::<$t>(),
            align_of::<$t>(),
            &rust_fields!($t { $($f => $cf),* }),
        )
    };
}

#[test]
fn abi_structures_match_xen_headers() {
    let mut errs = Vec::new();
    let e = &mut errs;

    check!(e, "grant_entry_v1", GrantEntryV1 {
        flags => Some("flags"),
        domid => Some("domid"),
        frame => Some("frame"),
    });
    check!(e, "gnttab_map_grant_ref", GnttabMapGrantRef {
        host_addr => Some("host_addr"),
        flags => Some("flags"),
        ref_ => Some("ref"),
        dom => Some("dom"),
        status => Some("status"),
        handle => Some("handle"),
        dev_bus_addr => Some("dev_bus_addr"),
    });
    check!(e, "gnttab_unmap_grant_ref", GnttabUnmapGrantRef {
        host_addr => Some("host_addr"),
        dev_bus_addr => Some("dev_bus_addr"),
        handle => Some("handle"),
        status => Some("status"),
        _pad => None,
    });
    check!(e, "gnttab_setup_table", GnttabSetupTable {
        dom => Some("dom"),
        _pad0 => None,
        nr_frames => Some("nr_frames"),
        status => Some("status"),
        _pad1 => None,
        frame_list => Some("frame_list"),
    });
    check!(e, "gnttab_query_size", GnttabQuerySize {
        dom => Some("dom"),
        _pad0 => None,
        nr_frames => Some("nr_frames"),
        max_nr_frames => Some("max_nr_frames"),
        status => Some("status"),
        _pad1 => None,
    });
    check!(e, "gnttab_copy_ptr", GnttabCopyPtr {
        u => Some("u"),
        domid => Some("domid"),
        offset => Some("offset"),
        _pad => None,
    });
    check!(e, "gnttab_copy", GnttabCopy {
        source => Some("source"),
        dest => Some("dest"),
        len => Some("len"),
        flags => Some("flags"),
        status => Some("status"),
        _pad => None,
    });
    check!(e, "sring_header", SharedRingHeader {
        req_prod => Some("req_prod"),
        req_event => Some("req_event"),
        rsp_prod => Some("rsp_prod"),
        rsp_event => Some("rsp_event"),
        pvt => Some("pvt"),
        _pad => Some("__pad"),
    });

    report("ABI structures", errs);
}

#[test]
fn scalar_types_match_xen_headers() {
    let mut errs = Vec::new();
    let mut scalar = |c: &str, rust: &str, size: usize, align: usize| match layout::type_layout(c) {
        None => errs.push(format!("{c}: not in the C layout table")),
        Some(l) if (l.size, l.align) != (size, align) => errs.push(format!(
            "{rust}: size {size} align {align}, C {c} has size {} align {}",
            l.size, l.align
        )),
        Some(_) => {}
    };
    scalar(
        "grant_ref_t",
        "GrantRefNum",
        size_of::<GrantRefNum>(),
        align_of::<GrantRefNum>(),
    );
    scalar(
        "grant_handle_t",
        "GrantHandle",
        size_of::<GrantHandle>(),
        align_of::<GrantHandle>(),
    );
    scalar(
        "RING_IDX",
        "RingIdx",
        size_of::<RingIdx>(),
        align_of::<RingIdx>(),
    );
    let zero = GrantEntryV1::new_zeroed();
    scalar(
        "domid_t",
        "GrantEntryV1::domid",
        size_of_val(&zero.domid),
        align_of::<u16>(),
    );
    let zero = GnttabCopyPtr::new_zeroed();
    scalar(
        "xen_pfn_t",
        "GnttabCopyPtr::u",
        size_of_val(&zero.u),
        align_of::<u64>(),
    );
    report("scalar types", errs);
}

#[test]
fn constants_match_xen_headers() {
    let status = |s: GntStatus| i64::from(s.raw());
    let rust: &[(&str, i64)] = &[
        ("GTF_invalid", i64::from(GrantFlags::empty().bits())),
        (
            "GTF_permit_access",
            i64::from(GrantFlags::PERMIT_ACCESS.bits()),
        ),
        (
            "GTF_accept_transfer",
            i64::from(GrantFlags::ACCEPT_TRANSFER.bits()),
        ),
        ("GTF_type_mask", i64::from(GTF_TYPE_MASK)),
        ("GTF_readonly", i64::from(GrantFlags::READONLY.bits())),
        ("GTF_reading", i64::from(GrantFlags::READING.bits())),
        ("GTF_writing", i64::from(GrantFlags::WRITING.bits())),
        ("GTF_PWT", i64::from(GrantFlags::PWT.bits())),
        ("GTF_PCD", i64::from(GrantFlags::PCD.bits())),
        ("GTF_PAT", i64::from(GrantFlags::PAT.bits())),
        ("GTF_sub_page", i64::from(GrantFlags::SUB_PAGE.bits())),
        ("GNTTABOP_map_grant_ref", i64::from(gnttabop::MAP_GRANT_REF)),
        (
            "GNTTABOP_unmap_grant_ref",
            i64::from(gnttabop::UNMAP_GRANT_REF),
        ),
        ("GNTTABOP_setup_table", i64::from(gnttabop::SETUP_TABLE)),
        ("GNTTABOP_dump_table", i64::from(gnttabop::DUMP_TABLE)),
        ("GNTTABOP_transfer", i64::from(gnttabop::TRANSFER)),
        ("GNTTABOP_copy", i64::from(gnttabop::COPY)),
        ("GNTTABOP_query_size", i64::from(gnttabop::QUERY_SIZE)),
        (
            "GNTTABOP_unmap_and_replace",
            i64::from(gnttabop::UNMAP_AND_REPLACE),
        ),
        ("GNTTABOP_set_version", i64::from(gnttabop::SET_VERSION)),
        (
            "GNTTABOP_get_status_frames",
            i64::from(gnttabop::GET_STATUS_FRAMES),
        ),
        ("GNTTABOP_get_version", i64::from(gnttabop::GET_VERSION)),
        (
            "GNTMAP_device_map",
            i64::from(GntMapFlags::DEVICE_MAP.bits()),
        ),
        ("GNTMAP_host_map", i64::from(GntMapFlags::HOST_MAP.bits())),
        ("GNTMAP_readonly", i64::from(GntMapFlags::READONLY.bits())),
        (
            "GNTMAP_application_map",
            i64::from(GntMapFlags::APPLICATION_MAP.bits()),
        ),
        (
            "GNTMAP_contains_pte",
            i64::from(GntMapFlags::CONTAINS_PTE.bits()),
        ),
        (
            "GNTCOPY_source_gref",
            i64::from(GntCopyFlags::SOURCE_GREF.bits()),
        ),
        (
            "GNTCOPY_dest_gref",
            i64::from(GntCopyFlags::DEST_GREF.bits()),
        ),
        ("GNTST_okay", status(GntStatus::Okay)),
        ("GNTST_general_error", status(GntStatus::GeneralError)),
        ("GNTST_bad_domain", status(GntStatus::BadDomain)),
        ("GNTST_bad_gntref", status(GntStatus::BadGntref)),
        ("GNTST_bad_handle", status(GntStatus::BadHandle)),
        ("GNTST_bad_virt_addr", status(GntStatus::BadVirtAddr)),
        ("GNTST_bad_dev_addr", status(GntStatus::BadDevAddr)),
        ("GNTST_no_device_space", status(GntStatus::NoDeviceSpace)),
        (
            "GNTST_permission_denied",
            status(GntStatus::PermissionDenied),
        ),
        ("GNTST_bad_page", status(GntStatus::BadPage)),
        ("GNTST_bad_copy_arg", status(GntStatus::BadCopyArg)),
        ("GNTST_address_too_big", status(GntStatus::AddressTooBig)),
        ("GNTST_eagain", status(GntStatus::Eagain)),
        ("GNTST_no_space", status(GntStatus::NoSpace)),
        ("DOMID_SELF", i64::from(DOMID_SELF)),
        ("DOMID_FIRST_RESERVED", i64::from(DOMID_FIRST_RESERVED)),
        (
            "GNTTAB_NR_RESERVED_ENTRIES",
            i64::from(GNTTAB_NR_RESERVED_ENTRIES),
        ),
        ("XEN_PAGE_SHIFT", i64::from(PAGE_SHIFT)),
    ];
    // C constants with no Rust counterpart (yet). Listing them keeps this
    // test honest: a constant added to the C table must be placed here or
    // above.
    let not_mirrored = [
        "GTF_transitive",
        "GTF_transfer_committed",
        "GTF_transfer_completed",
        "GNTTABOP_swap_grant_ref",
        "GNTTABOP_cache_flush",
    ];

    let mut errs = Vec::new();
    for &(name, value) in rust {
        match layout::constant(name) {
            None => errs.push(format!("{name}: not in the C layout table")),
            Some(c) if c != value => {
                errs.push(format!("{name}: Rust {value} ({value:#x}), C {c} ({c:#x})"))
            }
            Some(_) => {}
        }
    }
    for (name, _) in layout::constants() {
        if !rust.iter().any(|&(n, _)| n == name) && !not_mirrored.contains(&name) {
            errs.push(format!(
                "{name}: in the C table but neither checked nor listed as not mirrored"
            ));
        }
    }
    if PAGE_SIZE != 1 << PAGE_SHIFT {
        errs.push(format!("PAGE_SIZE {PAGE_SIZE} is not 1 << PAGE_SHIFT"));
    }
    match layout::type_layout("grant_entry_v1") {
        Some(l) if GRANT_ENTRIES_V1_PER_PAGE != PAGE_SIZE / l.size => errs.push(format!(
            "GRANT_ENTRIES_V1_PER_PAGE {GRANT_ENTRIES_V1_PER_PAGE}, C gives {}",
            PAGE_SIZE / l.size
        )),
        _ => {}
    }
    // Every GNTST_* decodes to the variant with that value.
    for (name, value) in layout::constants().filter(|(n, _)| n.starts_with("GNTST_")) {
        match i16::try_from(value).ok().and_then(GntStatus::from_raw) {
            Some(s) if i64::from(s.raw()) == value => {}
            other => errs.push(format!(
                "GntStatus::from_raw({value}) for {name} gives {other:?}"
            )),
        }
    }
    report("constants", errs);
}

#[test]
fn ring_header_and_entries_match_xen_headers() {
    let mut errs = Vec::new();
    // Every ring Xen's headers define starts its entries right after the
    // same 64-byte header.
    for ring in [
        "echo_sring",
        "odd_sring",
        "wide_sring",
        "blkif_sring",
        "netif_tx_sring",
        "netif_rx_sring",
    ] {
        match layout::field(ring, "ring") {
            Some(f) if f.offset == SRING_HEADER_SIZE => {}
            other => errs.push(format!(
                "{ring}.ring at {other:?}, SRING_HEADER_SIZE is {SRING_HEADER_SIZE}"
            )),
        }
    }
    // entry_size is the size of C's request/response union.
    let mut entry = |tag: RingTag, rust: usize| match layout::type_layout(tag.entry_type_name()) {
        Some(l) if l.size == rust => {}
        other => errs.push(format!(
            "entry_size for {tag:?} is {rust}, C {} is {other:?}",
            tag.entry_type_name()
        )),
    };
    entry(RingTag::Echo, entry_size::<EchoRequest, EchoResponse>());
    entry(RingTag::Odd, entry_size::<OddRequest, OddResponse>());
    entry(RingTag::Wide, entry_size::<WideRequest, WideResponse>());
    report("ring layout", errs);
}
