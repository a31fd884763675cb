//! Xenstore node paths and permissions, as the daemon checks them.
//!
//! Shared by the client (to refuse obviously bad arguments before they
//! reach the wire) and by daemons (to validate what a client sends).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::wire::{parse_u32_strict, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX};

/// The special watch path fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special watch path fired when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// Why a path was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Empty path.
    Empty,
    /// Longer than the protocol allows.
    TooLong {
        /// Its length.
        len: usize,
        /// The limit that applies.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_@/-]`.
    BadChar {
        /// The byte.
        byte: u8,
        /// Where.
        at: usize,
    },
    /// `//` inside, or a trailing `/`.
    BadSlash,
    /// A special (`@...`) path that is not one of the known ones.
    UnknownSpecial,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => write!(f, "empty path"),
            PathError::TooLong { len, max } => write!(f, "path is {len} bytes long, the limit is {max}"),
            PathError::BadChar { byte, at } => write!(
                f,
                "byte 0x{byte:02x} at offset {at} is not allowed in a path (only A-Z a-z 0-9 - _ @ /)"
            ),
            PathError::BadSlash => write!(f, "path has an empty component (`//` or a trailing `/`)"),
            PathError::UnknownSpecial => write!(
                f,
                "unknown special path: only {INTRODUCE_DOMAIN} and {RELEASE_DOMAIN} exist"
            ),
        }
    }
}

fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@')
}

/// Whether a path names one of the special watch nodes.
pub fn is_special(path: &str) -> bool {
    path.starts_with('@')
}

/// Checks a path a client may send: absolute (`/...`), relative to the
/// caller's domain path, or special (`@...`, watches and permissions only).
/// The limits are those of `xs_wire.h`.
pub fn check_client_path(path: &str) -> Result<(), PathError> {
    let b = path.as_bytes();
    if b.is_empty() {
        return Err(PathError::Empty);
    }
    let max = if b[0] == b'/' || b[0] == b'@' {
        XENSTORE_ABS_PATH_MAX
    } else {
        XENSTORE_REL_PATH_MAX
    };
    if b.len() > max {
        return Err(PathError::TooLong { len: b.len(), max });
    }
    if let Some(at) = b.iter().position(|&c| !valid_char(c)) {
        return Err(PathError::BadChar { byte: b[at], at });
    }
    if b[0] != b'@' && (path.contains("//") || (b.len() > 1 && b[b.len() - 1] == b'/')) {
        return Err(PathError::BadSlash);
    }
    Ok(())
}

/// Checks an absolute node path the way xenstored's `is_valid_nodename`
/// does, and the relative limit for nodes under a domain's home.
pub fn check_absolute(path: &str) -> Result<(), PathError> {
    let b = path.as_bytes();
    if b.is_empty() {
        return Err(PathError::Empty);
    }
    if b[0] != b'/' {
        return Err(PathError::BadChar { byte: b[0], at: 0 });
    }
    if b.len() > XENSTORE_ABS_PATH_MAX {
        return Err(PathError::TooLong {
            len: b.len(),
            max: XENSTORE_ABS_PATH_MAX,
        });
    }
    if let Some(at) = b.iter().position(|&c| !valid_char(c)) {
        return Err(PathError::BadChar { byte: b[at], at });
    }
    if path.contains("//") || (b.len() > 1 && b[b.len() - 1] == b'/') {
        return Err(PathError::BadSlash);
    }
    if let Some(rel) = relative_to_domain_home(path) {
        if rel.len() > XENSTORE_REL_PATH_MAX {
            return Err(PathError::TooLong {
                len: rel.len(),
                max: XENSTORE_REL_PATH_MAX,
            });
        }
    }
    Ok(())
}

/// For `/local/domain/<id>/rest`, the `rest` part.
fn relative_to_domain_home(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/local/domain/")?;
    let slash = rest.find('/')?;
    let (id, tail) = rest.split_at(slash);
    parse_u32_strict(id.as_bytes())?;
    tail.strip_prefix('/')
}

/// Checks a watch path: an absolute or relative node path, or one of the
/// special paths.
pub fn check_watch_path(path: &str) -> Result<(), PathError> {
    if is_special(path) {
        if path == INTRODUCE_DOMAIN || path == RELEASE_DOMAIN {
            return Ok(());
        }
        return Err(PathError::UnknownSpecial);
    }
    check_client_path(path)
}

/// The home of a domain: `/local/domain/<domid>`.
pub fn domain_path(domid: u32) -> String {
    let mut s = String::from("/local/domain/");
    s.push_str(&crate::wire::u32_string(domid));
    s
}

/// The parent of an absolute path (`/` for top-level nodes and for `/`).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last component of an absolute path (empty for `/`).
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `child` is `parent` or below it (component-wise: `/a/bc` is not below
/// `/a/b`).
pub fn is_at_or_below(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return child.starts_with('/');
    }
    if parent.is_empty() {
        return false;
    }
    match child.strip_prefix(parent) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// Joins a directory path and a child name.
pub fn join(dir: &str, child: &str) -> String {
    let mut s = String::with_capacity(dir.len() + 1 + child.len());
    s.push_str(dir);
    if !dir.ends_with('/') {
        s.push('/');
    }
    s.push_str(child);
    s
}

/// What a permission entry grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PermAccess {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl PermAccess {
    /// Whether it allows reading.
    pub fn can_read(self) -> bool {
        matches!(self, PermAccess::Read | PermAccess::Both)
    }
    /// Whether it allows writing.
    pub fn can_write(self) -> bool {
        matches!(self, PermAccess::Write | PermAccess::Both)
    }
    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            PermAccess::None => 'n',
            PermAccess::Read => 'r',
            PermAccess::Write => 'w',
            PermAccess::Both => 'b',
        }
    }
}

/// One permission entry: `<letter><domid>` on the wire.
///
/// In a node's list, the first entry names the owner (who may do
/// everything) and the access of every domain not listed after it; later
/// entries give specific domains their access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: u16,
    /// What it may do.
    pub access: PermAccess,
}

impl Perm {
    /// A permission entry.
    pub const fn new(domid: u16, access: PermAccess) -> Perm {
        Perm { domid, access }
    }

    /// Parses `<n|r|w|b><domid>` strictly.
    pub fn parse(s: &[u8]) -> Option<Perm> {
        let (&letter, id) = s.split_first()?;
        let access = match letter {
            b'n' => PermAccess::None,
            b'r' => PermAccess::Read,
            b'w' => PermAccess::Write,
            b'b' => PermAccess::Both,
            _ => return None,
        };
        let domid = u16::try_from(parse_u32_strict(id)?).ok()?;
        Some(Perm { domid, access })
    }

    /// The wire form.
    pub fn to_wire(&self) -> String {
        let mut s = String::new();
        s.push(self.access.letter());
        s.push_str(&crate::wire::u32_string(u32::from(self.domid)));
        s
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// What a domain may do with a node, given its permission list, following
/// xenstored's `perm_for_conn`: privileged callers and the owner get
/// everything; otherwise the first later entry naming the domain decides,
/// and the owner entry's access applies to everyone else.
pub fn access_for(perms: &[Perm], domid: u16, privileged: bool) -> Effective {
    let Some(owner) = perms.first() else {
        return if privileged {
            Effective::ALL
        } else {
            Effective::NONE
        };
    };
    if privileged || owner.domid == domid {
        return Effective::ALL;
    }
    let access = perms[1..]
        .iter()
        .find(|p| p.domid == domid)
        .map_or(owner.access, |p| p.access);
    Effective {
        read: access.can_read(),
        write: access.can_write(),
        owner: false,
    }
}

/// The access a caller has to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    /// May read.
    pub read: bool,
    /// May write.
    pub write: bool,
    /// Owns the node (may change its permissions).
    pub owner: bool,
}

impl Effective {
    /// Everything.
    pub const ALL: Effective = Effective {
        read: true,
        write: true,
        owner: true,
    };
    /// Nothing.
    pub const NONE: Effective = Effective {
        read: false,
        write: false,
        owner: false,
    };
}

/// Parses a list of permission strings.
pub fn parse_perms(parts: &[&[u8]]) -> Option<Vec<Perm>> {
    parts.iter().map(|p| Perm::parse(p)).collect()
}
