//! The grant table and ring ABI as laid out by Xen's own headers.
//!
//! The C side (`c/abi_layout.c`) exports a table of rows: types with their
//! size and alignment, fields (`"type.field"`) with their offset and size,
//! and constants with their value. Names are the C names: `grant_entry_v1`,
//! `gnttab_copy.source`, `GTF_permit_access`. The ring header, which has no
//! C type of its own, is `sring_header` (size = `offsetof(NAME_sring, ring)`).

use std::ffi::CStr;
use std::sync::OnceLock;

use crate::ffi;

/// What a [`LayoutEntry`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// A type: `size` and `align` are meaningful.
    Type,
    /// A field, named `"type.field"`: `size` and `offset` are meaningful.
    Field,
    /// A constant: `value` is meaningful.
    Constant,
}

/// One row of the C layout table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutEntry {
    /// The C name (`"gnttab_copy"`, `"gnttab_copy.source"`, `"GNTST_okay"`).
    pub name: &'static str,
    /// What the row describes.
    pub kind: LayoutKind,
    /// `sizeof` of the type or field (of the constant's expression for constants).
    pub size: usize,
    /// `_Alignof` of a type; 0 otherwise.
    pub align: usize,
    /// `offsetof` of a field; 0 otherwise.
    pub offset: usize,
    /// The value of a constant; 0 otherwise.
    pub value: i64,
}

/// Size and alignment of a C type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeLayout {
    /// `sizeof`.
    pub size: usize,
    /// `_Alignof`.
    pub align: usize,
}

/// Offset and size of a C field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    /// The field's name within its type.
    pub name: &'static str,
    /// `offsetof`.
    pub offset: usize,
    /// `sizeof` of the member.
    pub size: usize,
}

/// Every row of the C layout table, in table order.
pub fn entries() -> &'static [LayoutEntry] {
    static TABLE: OnceLock<Vec<LayoutEntry>> = OnceLock::new();
    TABLE.get_or_init(read_table)
}

fn read_table() -> Vec<LayoutEntry> {
    let mut count = 0usize;
    // SAFETY: `c_abi_layout` only writes `count` and returns a pointer to a
    // static array of that many rows.
    let rows = unsafe { ffi::c_abi_layout(&mut count) };
    // SAFETY: `rows` points to `count` initialised rows of a static const
    // array that is never written, so a shared slice of it is valid forever.
    let rows = unsafe { std::slice::from_raw_parts(rows, count) };
    rows.iter()
        .map(|row| {
            // SAFETY: every row's name is a NUL-terminated string literal.
            let name = unsafe { CStr::from_ptr(row.name) };
            LayoutEntry {
                name: name.to_str().expect("layout names are ASCII"),
                kind: match row.kind {
                    0 => LayoutKind::Type,
                    1 => LayoutKind::Field,
                    _ => LayoutKind::Constant,
                },
                size: row.size as usize,
                align: row.align as usize,
                offset: row.offset as usize,
                value: row.value,
            }
        })
        .collect()
}

/// Size and alignment of C type `name`, if the table has it.
pub fn type_layout(name: &str) -> Option<TypeLayout> {
    entries()
        .iter()
        .find(|e| e.kind == LayoutKind::Type && e.name == name)
        .map(|e| TypeLayout {
            size: e.size,
            align: e.align,
        })
}

/// Every field the table lists for C type `ty`, in declaration order.
pub fn fields(ty: &str) -> Vec<FieldLayout> {
    entries()
        .iter()
        .filter(|e| e.kind == LayoutKind::Field)
        .filter_map(|e| {
            let (t, f) = e.name.split_once('.')?;
            (t == ty).then_some(FieldLayout {
                name: f,
                offset: e.offset,
                size: e.size,
            })
        })
        .collect()
}

/// Offset and size of field `field` of C type `ty`.
pub fn field(ty: &str, field: &str) -> Option<FieldLayout> {
    fields(ty).into_iter().find(|f| f.name == field)
}

/// The value of C constant `name`, if the table has it.
pub fn constant(name: &str) -> Option<i64> {
    entries()
        .iter()
        .find(|e| e.kind == LayoutKind::Constant && e.name == name)
        .map(|e| e.value)
}

/// Every constant in the table, as (name, value).
pub fn constants() -> impl Iterator<Item = (&'static str, i64)> {
    entries()
        .iter()
        .filter(|e| e.kind == LayoutKind::Constant)
        .map(|e| (e.name, e.value))
}
