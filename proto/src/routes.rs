//! Route tables in bounded frames.
//!
//! A table of any size goes out as [`RoutesPart`]s of at most [`PART_ENTRIES`] entries,
//! each a frame far below [`crate::frame::MAX_FRAME`], back to back on the control
//! stream; the receiver's [`Assembler`] puts them together and hands out the table when
//! its last part arrives. A table that never completes (a part missing, another version
//! started) is dropped, never half-applied.

use serde::{Deserialize, Serialize};

use crate::messages::{RouteEntry, RouteTable};

/// Entries per part: about 22 bytes each in postcard, so a part stays near 22 KiB.
pub const PART_ENTRIES: usize = 1024;

/// One slice of a route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesPart {
    /// The table's version.
    pub version: u64,
    /// How many entries the whole table has.
    pub total: u32,
    /// Index of this part's first entry in the table.
    pub first: u32,
    /// The entries.
    pub entries: Vec<RouteEntry>,
}

impl RouteTable {
    /// The table as parts of at most [`PART_ENTRIES`] entries (one part if empty).
    pub fn parts(&self) -> Vec<RoutesPart> {
        let total = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        if self.entries.is_empty() {
            return vec![RoutesPart {
                version: self.version,
                total,
                first: 0,
                entries: Vec::new(),
            }];
        }
        self.entries
            .chunks(PART_ENTRIES)
            .enumerate()
            .map(|(i, c)| RoutesPart {
                version: self.version,
                total,
                first: u32::try_from(i * PART_ENTRIES).unwrap_or(u32::MAX),
                entries: c.to_vec(),
            })
            .collect()
    }
}

/// Puts parts back together.
#[derive(Debug, Default)]
pub struct Assembler {
    building: Option<RouteTable>,
    total: usize,
}

impl Assembler {
    /// Takes one part; returns the table once complete. A part that does not continue
    /// the table being built starts over (or is dropped if it is not a first part).
    pub fn push(&mut self, part: RoutesPart) -> Option<RouteTable> {
        // A part of another size is another table, even under the same version.
        let continues = self.building.as_ref().is_some_and(|t| {
            t.version == part.version
                && t.entries.len() == part.first as usize
                && part.total as usize == self.total
        });
        if !continues {
            self.building = None;
            if part.first != 0 {
                return None;
            }
            self.total = part.total as usize;
            self.building = Some(RouteTable {
                version: part.version,
                entries: Vec::with_capacity(self.total.min(PART_ENTRIES * 64)),
            });
        }
        let t = self.building.as_mut().expect("set above or continuing");
        t.entries.extend(part.entries);
        if t.entries.len() > self.total {
            self.building = None;
            return None;
        }
        if t.entries.len() == self.total {
            return self.building.take();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn table(n: usize, version: u64) -> RouteTable {
        let entries = (0..n)
            .map(|i| RouteEntry {
                network: format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap(),
                node: Some(crate::Id([7; 16])),
            })
            .collect();
        RouteTable { version, entries }
    }

    #[test]
    fn a_large_table_travels_in_bounded_frames_and_reassembles() {
        let t = table(12_501, 9);
        let parts = t.parts();
        assert_eq!(parts.len(), 13);
        let mut a = Assembler::default();
        let mut done = None;
        for p in parts {
            let msg = crate::CoordMsg::Routes(p.clone());
            let f = frame::encode(&msg).expect("a part fits in one frame");
            assert!(f.len() < frame::MAX_FRAME / 8);
            assert!(done.is_none());
            done = a.push(p);
        }
        assert_eq!(done, Some(t));
    }

    #[test]
    fn an_interrupted_table_is_dropped_not_half_applied() {
        let (old, new) = (table(3000, 1), table(2000, 2));
        let mut a = Assembler::default();
        let op = old.parts();
        assert_eq!(a.push(op[0].clone()), None);
        assert_eq!(a.push(op[2].clone()), None, "a gap restarts");
        let mut got = None;
        for p in new.parts() {
            got = a.push(p);
        }
        assert_eq!(got, Some(new));
        assert_eq!(a.push(table(0, 3).parts()[0].clone()), Some(table(0, 3)));
    }

    #[test]
    fn parts_that_disagree_on_the_size_are_not_one_table() {
        // Found by the `parse` fuzz target: a part continuing another by version and
        // index but declaring another size was appended, and a table handed out that
        // the last part said was incomplete (2 entries of 3).
        let e = table(3, 1).entries;
        let part = |total, first, entries: &[RouteEntry]| RoutesPart {
            version: 1,
            total,
            first,
            entries: entries.to_vec(),
        };
        let mut a = Assembler::default();
        assert_eq!(a.push(part(2, 0, &e[..1])), None);
        assert_eq!(
            a.push(part(3, 1, &e[1..2])),
            None,
            "not the first table's part"
        );
        assert_eq!(a.push(part(3, 2, &e[2..])), None, "nor a first part");
        assert_eq!(a.push(part(3, 0, &e[..1])), None);
        assert_eq!(a.push(part(3, 1, &e[1..2])), None);
        let whole = a
            .push(part(3, 2, &e[2..]))
            .expect("parts that agree complete");
        assert_eq!(whole.entries, e);
    }
}
