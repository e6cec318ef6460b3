//! A member's connections, as a small set.

use lockstep_shared::bus::ConnId;

/// Almost always one or two connections, so a vector (16 bytes each) rather than a B-tree
/// set, whose first node costs ~200 bytes even for one entry: in a room of thousands that
/// was the larger part of each member's memory. No duplicates; order is insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conns(Vec<ConnId>);

impl Conns {
    pub fn one(conn: ConnId) -> Conns {
        Conns(vec![conn])
    }

    /// Adds `conn` unless present.
    pub fn insert(&mut self, conn: ConnId) {
        if !self.contains(&conn) {
            self.0.push(conn);
        }
    }

    /// Removes `conn`; false when it was not there.
    pub fn remove(&mut self, conn: &ConnId) -> bool {
        match self.0.iter().position(|c| c == conn) {
            Some(i) => {
                self.0.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, conn: &ConnId) -> bool {
        self.0.contains(conn)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConnId> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(local: u64) -> ConnId {
        ConnId { gateway: 1, local }
    }

    #[test]
    fn behaves_as_a_set() {
        let mut s = Conns::one(c(1));
        s.insert(c(1));
        s.insert(c(2));
        assert_eq!(s.iter().count(), 2);
        assert!(s.contains(&c(2)));
        assert!(s.remove(&c(1)));
        assert!(!s.remove(&c(1)));
        assert!(!s.is_empty());
        assert!(s.remove(&c(2)));
        assert!(s.is_empty());
    }
}
