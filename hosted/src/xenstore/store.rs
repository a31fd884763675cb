//! The node tree of the hosted xenstore daemon.
//!
//! Nodes are kept in a map from absolute path to [`Node`]. Each node has a
//! value, an ordered list of child names, a permission list (owner first)
//! and a generation number that changes whenever the node changes (value,
//! children or permissions). Generations drive optimistic transactions: a
//! transaction works on a private copy of the tree, remembers the
//! generation of every node it looked at, and commits only if none of them
//! changed meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use xenbus::path::{self, Perm, PermAccess};

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The value (any bytes).
    pub value: Vec<u8>,
    /// Child names, in creation order.
    pub children: Vec<String>,
    /// Permissions, owner first.
    pub perms: Vec<Perm>,
    /// Changes whenever the node changes.
    pub generation: u64,
}

impl Node {
    /// The owner domain.
    pub fn owner(&self) -> u16 {
        self.perms.first().map_or(0, |p| p.domid)
    }
}

/// The tree, or a transaction's private copy of it.
#[derive(Clone, Debug)]
pub struct Store {
    nodes: BTreeMap<String, Node>,
    next_generation: u64,
    /// Nodes owned per domain, for quotas.
    owned: BTreeMap<u16, usize>,
    /// For a transaction's copy: the generation each node had when the
    /// transaction first looked at it (`None`: absent).
    accessed: Option<BTreeMap<String, Option<u64>>>,
    /// For a transaction's copy: the nodes it changed.
    changed: BTreeSet<String>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// A tree with `/`, `/local`, `/local/domain` and `/tool/xenstored`,
    /// owned by dom0, readable by nobody else (as xenstored starts).
    pub fn new() -> Store {
        let mut s = Store {
            nodes: BTreeMap::new(),
            next_generation: 1,
            owned: BTreeMap::new(),
            accessed: None,
            changed: BTreeSet::new(),
        };
        let perms = vec![Perm::new(0, PermAccess::None)];
        for p in ["/", "/local", "/local/domain", "/tool", "/tool/xenstored"] {
            s.insert_new(p, Vec::new(), perms.clone());
        }
        s
    }

    fn insert_new(&mut self, p: &str, value: Vec<u8>, perms: Vec<Perm>) {
        if p != "/" {
            let parent = path::parent(p).to_string();
            let name = path::basename(p).to_string();
            if let Some(mut parent_node) = self.get(&parent).cloned() {
                if !parent_node.children.contains(&name) {
                    parent_node.children.push(name);
                    self.put(&parent, parent_node);
                }
            }
        }
        self.put(
            p,
            Node {
                value,
                children: Vec::new(),
                perms,
                generation: 0,
            },
        );
    }

    /// A private copy for a transaction, recording what it accesses.
    pub fn begin_transaction(&self) -> Store {
        let mut copy = self.clone();
        copy.accessed = Some(BTreeMap::new());
        copy.changed = BTreeSet::new();
        copy
    }

    fn record(&mut self, p: &str) {
        if let Some(acc) = &mut self.accessed {
            if !acc.contains_key(p) {
                let generation = self.nodes.get(p).map(|n| n.generation);
                acc.insert(p.to_string(), generation);
            }
        }
    }

    /// The node at `p` (recorded as accessed in a transaction).
    pub fn get(&mut self, p: &str) -> Option<&Node> {
        self.record(p);
        self.nodes.get(p)
    }

    /// The node at `p` without recording the access.
    pub fn peek(&self, p: &str) -> Option<&Node> {
        self.nodes.get(p)
    }

    /// Stores a node (new generation), keeping ownership counts.
    pub fn put(&mut self, p: &str, mut node: Node) {
        self.record(p);
        node.generation = self.next_generation;
        self.next_generation += 1;
        if let Some(old) = self.nodes.get(p) {
            let owner = old.owner();
            self.uncount(owner);
        }
        *self.owned.entry(node.owner()).or_insert(0) += 1;
        self.nodes.insert(p.to_string(), node);
        if self.accessed.is_some() {
            self.changed.insert(p.to_string());
        }
    }

    /// Removes one node (not its children, not the parent's entry).
    pub fn remove(&mut self, p: &str) -> Option<Node> {
        self.record(p);
        let old = self.nodes.remove(p)?;
        self.uncount(old.owner());
        if self.accessed.is_some() {
            self.changed.insert(p.to_string());
        }
        Some(old)
    }

    fn uncount(&mut self, owner: u16) {
        if let Some(c) = self.owned.get_mut(&owner) {
            *c = c.saturating_sub(1);
        }
    }

    /// How many nodes `domid` owns.
    pub fn owned_by(&self, domid: u16) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is empty (never: `/` always exists).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The closest existing ancestor of `p` (strictly above it).
    pub fn closest_ancestor(&mut self, p: &str) -> Option<(String, Node)> {
        let mut cur = p;
        while cur != "/" {
            cur = path::parent(cur);
            if let Some(n) = self.get(cur) {
                return Some((cur.to_string(), n.clone()));
            }
        }
        None
    }

    /// Every path at or below `p`, children before parents.
    pub fn subtree_post_order(&mut self, p: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![(p.to_string(), false)];
        while let Some((cur, expanded)) = stack.pop() {
            if expanded {
                out.push(cur);
                continue;
            }
            let children = self
                .get(&cur)
                .map(|n| n.children.clone())
                .unwrap_or_default();
            stack.push((cur.clone(), true));
            for c in children.iter().rev() {
                stack.push((path::join(&cur, c), false));
            }
        }
        out
    }

    /// Whether a transaction's copy can commit into `self`: it is one, and
    /// nothing it accessed changed since.
    pub fn can_commit(&self, tx: &Store) -> bool {
        tx.accessed.as_ref().is_some_and(|accessed| {
            accessed
                .iter()
                .all(|(p, generation)| self.nodes.get(p).map(|n| n.generation) == *generation)
        })
    }

    /// How many more nodes each domain would own once a transaction's copy
    /// is committed into `self` (domains whose count grows only). Each
    /// transaction's copy counts against the quota on its own, so the
    /// commit has to check again against the tree as it is now.
    pub fn commit_growth(&self, tx: &Store) -> BTreeMap<u16, usize> {
        let mut delta: BTreeMap<u16, isize> = BTreeMap::new();
        for p in &tx.changed {
            if let Some(old) = self.nodes.get(p) {
                *delta.entry(old.owner()).or_insert(0) -= 1;
            }
            if let Some(new) = tx.nodes.get(p) {
                *delta.entry(new.owner()).or_insert(0) += 1;
            }
        }
        delta
            .into_iter()
            .filter_map(|(domid, d)| {
                usize::try_from(d)
                    .ok()
                    .filter(|&d| d > 0)
                    .map(|d| (domid, d))
            })
            .collect()
    }

    /// Commits a transaction's copy into `self` if nothing it accessed
    /// changed since; returns the changed paths, or `None` on conflict.
    pub fn commit(&mut self, tx: &Store) -> Option<Vec<String>> {
        if !self.can_commit(tx) {
            return None;
        }
        let mut changed = Vec::with_capacity(tx.changed.len());
        for p in &tx.changed {
            match tx.nodes.get(p) {
                Some(node) => self.put(p, node.clone()),
                None => {
                    self.remove(p);
                }
            }
            changed.push(p.clone());
        }
        Some(changed)
    }

    /// All paths and nodes, in path order (for dumps and checks).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Rewrites permissions after a domain is gone, as xenstored does:
    /// nodes it owned pass to dom0, entries naming it are dropped (a later
    /// domain reusing the id gets nothing).
    pub fn forget_domain(&mut self, domid: u16) {
        let affected: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.perms.iter().any(|p| p.domid == domid))
            .map(|(k, _)| k.clone())
            .collect();
        for p in affected {
            if let Some(mut node) = self.nodes.get(&p).cloned() {
                if let Some(owner) = node.perms.first_mut() {
                    if owner.domid == domid {
                        owner.domid = 0;
                    }
                }
                let mut first = true;
                node.perms
                    .retain(|perm| std::mem::replace(&mut first, false) || perm.domid != domid);
                self.put(&p, node);
            }
        }
    }
}
