//! `blkfront::abi` against Xen's own `io/blkif.h`, as the C compiler lays
//! it out on this (x86_64) host.
//!
//! The test compiles `tests/c/blkif_layout.c` with the system C compiler
//! (`$CC`, else `cc`) against Xen's public headers (`/usr/include/xen`,
//! Debian's `libxen-dev`; another include directory through
//! `$XEN_INCLUDE_DIR`), runs it, and compares its table of sizes,
//! alignments, field offsets, constants and ring sizes with the Rust types.
//! For every type: size, alignment, each C field's offset and size; Rust's
//! explicit padding must cover only C padding, and the Rust fields must
//! cover every byte. Every mismatch is reported, not just the first.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of, size_of_val};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use blkfront::abi::*;
use zerocopy::FromZeros;

#[derive(Default)]
struct CTable {
    types: BTreeMap<String, (usize, usize)>,
    fields: BTreeMap<String, Vec<(String, usize, usize)>>,
    consts: BTreeMap<String, i64>,
    rings: BTreeMap<u32, u32>,
}

/// The C table, built once per test process.
fn c_table() -> &'static CTable {
    static TABLE: OnceLock<CTable> = OnceLock::new();
    TABLE.get_or_init(build_c_table)
}

fn build_c_table() -> CTable {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = manifest.join("tests/c/blkif_layout.c");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("blkif_layout-{}", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(&cc);
    cmd.arg("-std=gnu11")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__")
        .arg("-o")
        .arg(&out)
        .arg(&src);
    if let Ok(dir) = std::env::var("XEN_INCLUDE_DIR") {
        cmd.arg("-I").arg(dir);
    }
    let status = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run the C compiler `{cc}`: {e}; install a C compiler or set CC")
    });
    assert!(
        status.status.success(),
        "compiling {} failed:\n{}\nXen's public headers are needed: install Debian's libxen-dev \
         (cargo xtask ci does this) or set XEN_INCLUDE_DIR",
        src.display(),
        String::from_utf8_lossy(&status.stderr)
    );
    let run = Command::new(&out).output().expect("run the layout program");
    let _ = std::fs::remove_file(&out);
    assert!(run.status.success());
    let text = String::from_utf8(run.stdout).expect("ASCII output");
    let mut t = CTable::default();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| {
            w[i].parse::<i64>()
                .unwrap_or_else(|_| panic!("bad row {line:?}"))
        };
        match w[0] {
            "type" => {
                t.types
                    .insert(w[1].into(), (num(2) as usize, num(3) as usize));
            }
            "field" => {
                let (ty, f) = w[1].split_once('.').expect("TYPE.FIELD");
                t.fields.entry(ty.into()).or_default().push((
                    f.into(),
                    num(2) as usize,
                    num(3) as usize,
                ));
            }
            "const" => {
                t.consts.insert(w[1].into(), num(2));
            }
            "ring" => {
                t.rings.insert(num(1) as u32, num(2) as u32);
            }
            _ => panic!("unknown row {line:?}"),
        }
    }
    t
}

/// A Rust field and the C member it stands for (`None`: explicit padding).
struct RustField {
    name: &'static str,
    c_name: Option<&'static str>,
    offset: usize,
    size: usize,
}

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

fn check_type(
    errs: &mut Vec<String>,
    t: &CTable,
    c_type: &str,
    size: usize,
    align: usize,
    fields: &[RustField],
) {
    let Some(&(c_size, c_align)) = t.types.get(c_type) else {
        errs.push(format!("{c_type}: not in the C table"));
        return;
    };
    if c_size != size {
        errs.push(format!("{c_type}: Rust size {size}, C {c_size}"));
    }
    if c_align != align {
        errs.push(format!("{c_type}: Rust align {align}, C {c_align}"));
    }
    let c_fields = t.fields.get(c_type).cloned().unwrap_or_default();
    if c_fields.is_empty() {
        errs.push(format!("{c_type}: the C table lists no fields"));
    }
    for (name, off, sz) in &c_fields {
        match fields.iter().find(|f| f.c_name == Some(name.as_str())) {
            None => errs.push(format!("{c_type}: no Rust field for C member {name}")),
            Some(f) => {
                if (f.offset, f.size) != (*off, *sz) {
                    errs.push(format!(
                        "{c_type}.{name}: Rust {} at {} size {}, C at {off} size {sz}",
                        f.name, f.offset, f.size
                    ));
                }
            }
        }
    }
    // Padding covers no C member; together the fields cover every byte once.
    let mut covered = vec![0u8; size];
    for f in fields {
        if f.c_name.is_none() {
            for (name, off, sz) in &c_fields {
                if f.offset < off + sz && *off < f.offset + f.size {
                    errs.push(format!(
                        "{c_type}: Rust padding {} overlaps C member {name}",
                        f.name
                    ));
                }
            }
        }
        for b in covered.iter_mut().skip(f.offset).take(f.size) {
            *b += 1;
        }
    }
    if covered.iter().any(|&c| c != 1) {
        errs.push(format!(
            "{c_type}: Rust fields do not cover each byte exactly once: {covered:?}"
        ));
    }
}

#[test]
fn wire_types_match_xens_header() {
    let t = c_table();
    let mut errs = Vec::new();

    check_type(
        &mut errs,
        t,
        "blkif_request_segment",
        size_of::<BlkifRequestSegment>(),
        align_of::<BlkifRequestSegment>(),
        &rust_fields!(BlkifRequestSegment {
            gref => Some("gref"),
            first_sect => Some("first_sect"),
            last_sect => Some("last_sect"),
            _pad => None,
        }),
    );
    check_type(
        &mut errs,
        t,
        "blkif_request",
        size_of::<BlkifRequest>(),
        align_of::<BlkifRequest>(),
        &rust_fields!(BlkifRequest {
            operation => Some("operation"),
            nr_segments => Some("nr_segments"),
            handle => Some("handle"),
            _pad0 => None,
            id => Some("id"),
            sector_number => Some("sector_number"),
            seg => Some("seg"),
        }),
    );
    check_type(
        &mut errs,
        t,
        "blkif_request_discard",
        size_of::<BlkifRequestDiscard>(),
        align_of::<BlkifRequestDiscard>(),
        &rust_fields!(BlkifRequestDiscard {
            operation => Some("operation"),
            flag => Some("flag"),
            handle => Some("handle"),
            _pad0 => None,
            id => Some("id"),
            sector_number => Some("sector_number"),
            nr_sectors => Some("nr_sectors"),
        }),
    );
    check_type(
        &mut errs,
        t,
        "blkif_request_indirect",
        size_of::<BlkifRequestIndirect>(),
        align_of::<BlkifRequestIndirect>(),
        &rust_fields!(BlkifRequestIndirect {
            operation => Some("operation"),
            indirect_op => Some("indirect_op"),
            nr_segments => Some("nr_segments"),
            _pad0 => None,
            id => Some("id"),
            sector_number => Some("sector_number"),
            handle => Some("handle"),
            _pad1 => None,
            indirect_grefs => Some("indirect_grefs"),
            _pad2 => None,
        }),
    );
    check_type(
        &mut errs,
        t,
        "blkif_response",
        size_of::<BlkifResponse>(),
        align_of::<BlkifResponse>(),
        &rust_fields!(BlkifResponse {
            id => Some("id"),
            operation => Some("operation"),
            _pad0 => None,
            status => Some("status"),
            _pad1 => None,
        }),
    );

    // The ring's slot: the union of request and response.
    match t.types.get("blkif_sring_entry") {
        Some(&(size, _)) if size == RING_SLOT_SIZE => {}
        other => errs.push(format!(
            "blkif_sring_entry: C {other:?}, Rust slot {RING_SLOT_SIZE}"
        )),
    }
    match t.fields.get("blkif_sring").and_then(|f| f.first()) {
        Some((_, off, _)) if *off == grant_tables::abi::SRING_HEADER_SIZE => {}
        other => errs.push(format!("blkif_sring.ring: C {other:?}")),
    }
    for (order, &entries) in &t.rings {
        if ring_size(*order) != entries {
            errs.push(format!(
                "ring of order {order}: Rust {} entries, C {entries}",
                ring_size(*order)
            ));
        }
    }
    if t.rings.len() != 5 {
        errs.push(format!("C ring sizes: {:?}", t.rings));
    }

    assert!(
        errs.is_empty(),
        "blkif ABI mismatches:\n{}",
        errs.join("\n")
    );
}

#[test]
fn constants_match_xens_header() {
    let t = c_table();
    let rust: &[(&str, i64)] = &[
        ("BLKIF_OP_READ", op::READ.into()),
        ("BLKIF_OP_WRITE", op::WRITE.into()),
        ("BLKIF_OP_WRITE_BARRIER", op::WRITE_BARRIER.into()),
        ("BLKIF_OP_FLUSH_DISKCACHE", op::FLUSH_DISKCACHE.into()),
        ("BLKIF_OP_RESERVED_1", op::RESERVED_1.into()),
        ("BLKIF_OP_DISCARD", op::DISCARD.into()),
        ("BLKIF_OP_INDIRECT", op::INDIRECT.into()),
        (
            "BLKIF_MAX_SEGMENTS_PER_REQUEST",
            BLKIF_MAX_SEGMENTS_PER_REQUEST as i64,
        ),
        (
            "BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST",
            BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST as i64,
        ),
        ("BLKIF_DISCARD_SECURE", BLKIF_DISCARD_SECURE.into()),
        ("BLKIF_RSP_EOPNOTSUPP", status::EOPNOTSUPP.into()),
        ("BLKIF_RSP_ERROR", status::ERROR.into()),
        ("BLKIF_RSP_OKAY", status::OKAY.into()),
        ("VDISK_CDROM", VDISK_CDROM.into()),
        ("VDISK_REMOVABLE", VDISK_REMOVABLE.into()),
        ("VDISK_READONLY", VDISK_READONLY.into()),
    ];
    let mut errs = Vec::new();
    for (name, value) in rust {
        match t.consts.get(*name) {
            Some(c) if c == value => {}
            other => errs.push(format!("{name}: Rust {value}, C {other:?}")),
        }
    }
    if t.consts.len() != rust.len() {
        errs.push(format!(
            "the C table has {} constants, Rust checks {}",
            t.consts.len(),
            rust.len()
        ));
    }
    assert!(
        errs.is_empty(),
        "blkif constants differ:\n{}",
        errs.join("\n")
    );
}

/// The ring sizes also agree with the C reference crate's `io/ring.h` build.
#[test]
fn ring_sizes_match_the_c_reference() {
    for order in 0..=4u32 {
        let bytes = 4096usize << order;
        assert_eq!(
            ring_size(order),
            xen_c_reference::const_ring_size(xen_c_reference::RingTag::Blkif, bytes),
            "order {order}"
        );
        assert_eq!(
            ring_size(order),
            xen_c_reference::attached_ring_size(xen_c_reference::RingTag::Blkif, bytes),
            "order {order}"
        );
    }
}
