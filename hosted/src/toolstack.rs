//! The toolstack's part of plugging a split device, as libxl does it
//! (`libxl__device_generic_add`): the frontend and backend xenstore
//! directories with their permissions and initial nodes, written in one
//! transaction by a privileged (dom0) connection.
//!
//! ```text
//! /local/domain/<backend>/backend/<type>/<frontend>/<devid>/
//!     frontend     = /local/domain/<frontend>/device/<type>/<devid>
//!     frontend-id  = <frontend>
//!     online       = 1
//!     state        = 1            (XenbusStateInitialising)
//!     ...device-specific nodes
//!   perms: n<backend>,r<frontend>   (owned by the backend, readable by the frontend)
//!
//! /local/domain/<frontend>/device/<type>/<devid>/
//!     backend      = /local/domain/<backend>/backend/<type>/<frontend>/<devid>
//!     backend-id   = <backend>
//!     state        = 1
//!     ...device-specific nodes
//!   perms: n<frontend>,r<backend>   (owned by the frontend, readable by the backend)
//! ```
//!
//! Nodes written inside a directory inherit its permissions (xenstored's
//! rule for nodes a privileged connection creates).

use std::fmt;

use grant_tables::DomId;
use xenbus::{Perm, PermAccess, Transport, XenbusState, XsError, Xenstore};

/// A device to plug: its type (`vif`, `vbd`, ...), the two domains, its
/// device id, and the device-specific nodes of each end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The device type, as in the xenstore paths (`vif`, `vbd`, `pci`, ...).
    pub kind: String,
    /// The frontend's domain.
    pub frontend: DomId,
    /// The backend's domain.
    pub backend: DomId,
    /// The device id (`handle` for vif, the virtual device number for vbd).
    pub devid: u32,
    /// Extra frontend nodes (key relative to the frontend directory, value).
    pub frontend_nodes: Vec<(String, String)>,
    /// Extra backend nodes.
    pub backend_nodes: Vec<(String, String)>,
}

impl DeviceSpec {
    /// A device of type `kind` with no extra nodes.
    pub fn new(kind: &str, frontend: DomId, backend: DomId, devid: u32) -> Self {
        DeviceSpec {
            kind: kind.to_string(),
            frontend,
            backend,
            devid,
            frontend_nodes: Vec::new(),
            backend_nodes: Vec::new(),
        }
    }

    /// Adds a frontend node (e.g. `mac`, `handle`).
    pub fn frontend_node(mut self, key: &str, value: &str) -> Self {
        self.frontend_nodes.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a backend node (e.g. `mac`, `bridge`, `params`).
    pub fn backend_node(mut self, key: &str, value: &str) -> Self {
        self.backend_nodes.push((key.to_string(), value.to_string()));
        self
    }

    /// `/local/domain/<frontend>/device/<type>/<devid>`.
    pub fn frontend_path(&self) -> String {
        format!("/local/domain/{}/device/{}/{}", self.frontend.0, self.kind, self.devid)
    }

    /// `/local/domain/<backend>/backend/<type>/<frontend>/<devid>`.
    pub fn backend_path(&self) -> String {
        format!("/local/domain/{}/backend/{}/{}/{}", self.backend.0, self.kind, self.frontend.0, self.devid)
    }

    fn check(&self) -> Result<(), ToolstackError> {
        check_name("device type", &self.kind, false)?;
        for (k, _) in self.frontend_nodes.iter().chain(&self.backend_nodes) {
            check_name("node key", k, true)?;
            if matches!(k.as_str(), "frontend" | "frontend-id" | "backend" | "backend-id" | "state" | "online") {
                return Err(ToolstackError::BadName {
                    what: "node key",
                    name: k.clone(),
                    why: "the toolstack writes this node itself",
                });
            }
        }
        for d in [self.frontend, self.backend] {
            if !d.is_real() {
                return Err(ToolstackError::BadName {
                    what: "domain",
                    name: format!("{:#x}", d.0),
                    why: "a reserved domain id",
                });
            }
        }
        Ok(())
    }
}

fn check_name(what: &'static str, name: &str, nested: bool) -> Result<(), ToolstackError> {
    let bad = |why| Err(ToolstackError::BadName { what, name: name.to_string(), why });
    if name.is_empty() || name.len() > 64 {
        return bad("must be 1 to 64 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || (nested && b == b'/')) {
        return bad("may hold only letters, digits, '-', '_', '.' (and '/' between key components)");
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("must be a relative key without empty, '.' or '..' components");
    }
    Ok(())
}

/// Why plugging or unplugging a device failed.
#[derive(Debug)]
pub enum ToolstackError {
    /// A name that cannot go into a xenstore path.
    BadName {
        /// What the name is.
        what: &'static str,
        /// The name.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// Xenstore refused (the connection must be dom0's, or the store is
    /// unreachable).
    Store {
        /// What was being done.
        what: String,
        /// The error.
        source: XsError,
    },
}

impl fmt::Display for ToolstackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolstackError::BadName { what, name, why } => write!(f, "bad {what} {name:?}: {why}"),
            ToolstackError::Store { what, source } => {
                write!(f, "{what}: {source}; the toolstack needs a privileged (dom0) xenstore connection")
            }
        }
    }
}

impl std::error::Error for ToolstackError {}

fn initialising() -> String {
    (XenbusState::Initialising as u8).to_string()
}

/// Creates both ends' directories of `dev`, as libxl does, in one
/// transaction (retried on conflict). Anything already at either path is
/// removed first. `xs` must be a privileged (dom0) connection.
pub fn add_device<T: Transport>(xs: &mut Xenstore<T>, dev: &DeviceSpec) -> Result<(), ToolstackError> {
    dev.check()?;
    let fe = dev.frontend_path();
    let be = dev.backend_path();
    let (fd, bd) = (dev.frontend.0, dev.backend.0);
    let fe_perms = [Perm::new(fd, PermAccess::None), Perm::new(bd, PermAccess::Read)];
    let be_perms = [Perm::new(bd, PermAccess::None), Perm::new(fd, PermAccess::Read)];
    let state = initialising();
    xs.transaction(|t| {
        for p in [&fe, &be] {
            match t.rm(p) {
                Err(e) if e.is_not_found() => {}
                r => r?,
            }
        }
        t.mkdir(&fe)?;
        t.set_perms(&fe, &fe_perms)?;
        t.write(&format!("{fe}/backend"), &be)?;
        t.write(&format!("{fe}/backend-id"), bd.to_string())?;
        t.write(&format!("{fe}/state"), &state)?;
        for (k, v) in &dev.frontend_nodes {
            t.write(&format!("{fe}/{k}"), v)?;
        }
        t.mkdir(&be)?;
        t.set_perms(&be, &be_perms)?;
        t.write(&format!("{be}/frontend"), &fe)?;
        t.write(&format!("{be}/frontend-id"), fd.to_string())?;
        t.write(&format!("{be}/online"), "1")?;
        t.write(&format!("{be}/state"), &state)?;
        for (k, v) in &dev.backend_nodes {
            t.write(&format!("{be}/{k}"), v)?;
        }
        Ok(())
    })
    .map_err(|source| ToolstackError::Store {
        what: format!("adding {} {} of dom{} (backend dom{})", dev.kind, dev.devid, fd, bd),
        source,
    })?;
    log::info!("toolstack: added {} {} of dom{fd} with backend dom{bd}", dev.kind, dev.devid);
    Ok(())
}

/// Removes both ends' directories of `dev` (missing ones are fine).
pub fn remove_device<T: Transport>(xs: &mut Xenstore<T>, dev: &DeviceSpec) -> Result<(), ToolstackError> {
    dev.check()?;
    let (fe, be) = (dev.frontend_path(), dev.backend_path());
    xs.transaction(|t| {
        for p in [&fe, &be] {
            match t.rm(p) {
                Err(e) if e.is_not_found() => {}
                r => r?,
            }
        }
        Ok(())
    })
    .map_err(|source| ToolstackError::Store {
        what: format!("removing {} {} of dom{} (backend dom{})", dev.kind, dev.devid, dev.frontend.0, dev.backend.0),
        source,
    })
}
