//! State deltas: a checkpoint of a large state writes what changed, not the whole state.
//!
//! A delta is text-level: the state's JSON text at the previous checkpoint and at this one
//! share a prefix and a suffix, and the delta replaces what lies between. It is computed in
//! one pass over the bytes (no JSON tree, no allocation but the delta), is exact by
//! construction (the text is restored byte for byte), and is small whenever a step changes
//! one region of the state: a field, an item of a list, an appended message. A step that
//! changes the state in several far-apart places gets a delta spanning them, and when that is
//! not much smaller than the state the checkpoint is written whole instead.
//!
//! A store keeps a run's **chain**: the full text of its last whole checkpoint, then the deltas
//! written since, in order; the state is the chain applied in order. A whole checkpoint starts
//! a new chain (the stores keep a large whole state in the chain's table too, out of the run's row,
//! so that updating the run's status or lease does not rewrite it). How often one is written is [`DeltaPolicy`]: a chain never grows past
//! `max_chain` deltas nor past the state's own size in delta bytes, so reading a run back
//! costs at most about twice its state.

use serde::{Deserialize, Serialize};

/// A state's JSON text as edits of the previous checkpoint's: each replaces `cut` bytes at
/// `at` (an offset in the previous text; edits in order, not overlapping) with `put`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDelta {
    /// The edits, in order of `at`.
    pub edits: Vec<Edit>,
}

/// One edit of a [`StateDelta`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    /// Where it starts in the previous text (bytes).
    pub at: usize,
    /// How many bytes of the previous text it replaces.
    pub cut: usize,
    /// What replaces them.
    pub put: String,
}

/// How deep the search for unchanged runs inside a changed region goes: up to `2^DEPTH` edits.
const DEPTH: u32 = 5;
/// The length of the probe looked up in the previous text; shorter regions are one edit.
const PROBE: usize = 48;

impl StateDelta {
    /// The delta from `old` to `new`: the changed regions, found by trimming what both texts
    /// share at each end and then looking up a probe from the middle of what remains in the
    /// old text (a memchr search), splitting there, and again on each side.
    pub fn between(old: &str, new: &str) -> StateDelta {
        let mut edits = Vec::new();
        diff(old, new, 0, 0, DEPTH, &mut edits);
        StateDelta { edits }
    }

    /// Applies the delta to the text it was computed from; `None` if it does not fit it (a
    /// damaged chain).
    pub fn apply(&self, old: &str) -> Option<String> {
        let mut text = String::with_capacity(old.len() + self.weight());
        let mut pos = 0;
        for edit in &self.edits {
            let end = edit.at.checked_add(edit.cut)?;
            text.push_str(old.get(pos..edit.at)?);
            text.push_str(&edit.put);
            old.get(edit.at..end)?;
            pos = end;
        }
        text.push_str(old.get(pos..)?);
        Some(text)
    }

    /// About how many bytes the delta takes when stored.
    pub fn weight(&self) -> usize {
        self.edits.iter().map(|e| e.put.len() + 24).sum::<usize>() + 12
    }
}

/// Appends the edits turning `old` into `new`; `base_old` / `base_new` are their offsets in
/// the whole texts.
fn diff(old: &str, new: &str, base_old: usize, base_new: usize, depth: u32, edits: &mut Vec<Edit>) {
    let (o, n) = (old.as_bytes(), new.as_bytes());
    let mut prefix = common_prefix(o, n);
    while !old.is_char_boundary(prefix) || !new.is_char_boundary(prefix) {
        prefix -= 1;
    }
    let most = o.len().min(n.len()) - prefix;
    let mut suffix = common_suffix(&o[o.len() - most..], &n[n.len() - most..]);
    while !old.is_char_boundary(o.len() - suffix) || !new.is_char_boundary(n.len() - suffix) {
        suffix -= 1;
    }
    let (old_mid, new_mid) = (&old[prefix..o.len() - suffix], &new[prefix..n.len() - suffix]);
    if old_mid.is_empty() && new_mid.is_empty() {
        return;
    }
    let (base_old, base_new) = (base_old + prefix, base_new + prefix);
    if depth > 0
        && old_mid.len() >= 2 * PROBE
        && new_mid.len() >= 2 * PROBE
        && let Some((o_at, n_at, len)) = common_run(old_mid, new_mid)
    {
        diff(&old_mid[..o_at], &new_mid[..n_at], base_old, base_new, depth - 1, edits);
        let (o_end, n_end) = (o_at + len, n_at + len);
        diff(&old_mid[o_end..], &new_mid[n_end..], base_old + o_end, base_new + n_end, depth - 1, edits);
        return;
    }
    edits.push(Edit { at: base_old, cut: old_mid.len(), put: new_mid.to_string() });
}

/// A run both texts share, found from a probe in the middle of `new`: (where in `old`, where
/// in `new`, how long), widened to char boundaries.
fn common_run(old: &str, new: &str) -> Option<(usize, usize, usize)> {
    let (o, n) = (old.as_bytes(), new.as_bytes());
    let mut start = n.len() / 2 - PROBE / 2;
    while !new.is_char_boundary(start) {
        start -= 1;
    }
    let probe = &n[start..start + PROBE];
    // Where the probe sits if the text around it did not move (measured from the region's
    // start or from its end) comes first: repetitive text would match too early elsewhere.
    let from_end = (start + o.len()).checked_sub(n.len());
    let aligned = [Some(start), from_end].into_iter().flatten().find(|&at| o.get(at..at + PROBE) == Some(probe));
    let found = match aligned {
        Some(at) => at,
        None => memchr::memmem::find(o, probe)?,
    };
    // Widen the match both ways.
    let back = common_suffix(&o[..found], &n[..start]);
    let fwd = common_prefix(&o[found..], &n[start..]);
    let (mut o_at, mut n_at, mut end) = (found - back, start - back, fwd + back);
    while !old.is_char_boundary(o_at) || !new.is_char_boundary(n_at) {
        o_at += 1;
        n_at += 1;
        end -= 1;
    }
    while !old.is_char_boundary(o_at + end) || !new.is_char_boundary(n_at + end) {
        end -= 1;
    }
    (end > 0).then_some((o_at, n_at, end))
}

/// How many bytes `a` and `b` share at their start. Compared 32 bytes at a time (a vector
/// compare), since a checkpoint scans most of a large state here.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let (blocks_a, _) = a[..len].as_chunks::<32>();
    let (blocks_b, _) = b[..len].as_chunks::<32>();
    let same = blocks_a.iter().zip(blocks_b).take_while(|(x, y)| x == y).count() * 32;
    same + a[same..len].iter().zip(&b[same..len]).take_while(|(x, y)| x == y).count()
}

/// How many bytes `a` and `b` share at their end (see [`common_prefix`]).
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let (a, b) = (&a[a.len() - len..], &b[b.len() - len..]);
    let (_, blocks_a) = a.as_rchunks::<32>();
    let (_, blocks_b) = b.as_rchunks::<32>();
    let same = blocks_a.iter().rev().zip(blocks_b.iter().rev()).take_while(|(x, y)| x == y).count() * 32;
    same + a[..len - same].iter().rev().zip(b[..len - same].iter().rev()).take_while(|(x, y)| x == y).count()
}

/// Applies a run's chain of stored deltas (each as JSON text) to the full text that starts
/// it: what a store's `load_run` returns as the state.
pub fn apply_chain<'a>(full: &str, deltas: impl IntoIterator<Item = &'a str>) -> Result<String, String> {
    let mut text = full.to_string();
    for (i, delta) in deltas.into_iter().enumerate() {
        let delta: StateDelta =
            serde_json::from_str(delta).map_err(|e| format!("state delta {} does not parse: {e}", i + 1))?;
        text = delta
            .apply(&text)
            .ok_or_else(|| format!("state delta {} does not fit the state before it (the chain is damaged)", i + 1))?;
    }
    Ok(text)
}

/// When a checkpoint writes a delta instead of the whole state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaPolicy {
    /// States smaller than this are always written whole (a delta saves nothing worth its
    /// bookkeeping). Default 4 KiB.
    pub min_state: usize,
    /// At most this many deltas between two full checkpoints. Default 32.
    pub max_chain: u32,
}

impl DeltaPolicy {
    /// Whether a state of `len` bytes starts a chain under `policy`.
    pub(crate) fn chains(policy: Option<DeltaPolicy>, len: usize) -> bool {
        policy.is_some_and(|p| len >= p.min_state)
    }
}

impl Default for DeltaPolicy {
    fn default() -> Self {
        DeltaPolicy { min_state: 4096, max_chain: 32 }
    }
}

/// A run's chain as the driver tracks it: the last text written, and what the chain holds
/// since its last whole state. A new driver (a resumed run) starts with none, so its first
/// checkpoint is whole.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    last: Option<String>,
    deltas: u32,
    bytes: usize,
    /// The store may hold a chain for the run.
    pub stored: bool,
}

impl Chain {
    /// The chain of a run that starts now, from `first` when its first state went into one, or
    /// of a resumed run (`stored`, and no text: its first checkpoint is whole).
    pub fn new(stored: bool, first: Option<String>) -> Chain {
        Chain { stored, last: first, ..Chain::default() }
    }

    /// The delta to write for `text`, or `None` to write it whole. Either way `text` becomes
    /// the chain's last text: with a delta it is moved into the chain (and `text` left empty,
    /// as the checkpoint then writes no whole state), so a delta costs no copy of the state.
    pub fn next(&mut self, text: &mut String, policy: Option<DeltaPolicy>) -> Option<StateDelta> {
        let policy = policy?;
        let delta = match &self.last {
            Some(last) if text.len() >= policy.min_state && self.deltas < policy.max_chain => {
                let delta = StateDelta::between(last, text);
                // Whole when the delta is not much smaller, or the chain would outweigh the state.
                (delta.weight() * 4 < text.len() && self.bytes + delta.weight() <= text.len()).then_some(delta)
            }
            _ => None,
        };
        // A whole state too small to start a chain goes into the run's row, and no delta
        // follows it: a store may keep the row's state in another form than this text
        // (PostgreSQL's `jsonb`), so deltas apply only to a chain's own whole state.
        if delta.is_none() && !DeltaPolicy::chains(Some(policy), text.len()) {
            self.last = None;
        } else if delta.is_some() {
            let mut taken = std::mem::take(text);
            if let Some(last) = &mut self.last {
                std::mem::swap(last, &mut taken);
            } else {
                self.last = Some(taken);
            }
        } else {
            // Written whole and kept for the next delta: one copy, into the chain's buffer.
            let last = self.last.get_or_insert_with(String::new);
            last.clear();
            last.push_str(text);
        }
        match &delta {
            Some(d) => {
                self.deltas += 1;
                self.bytes += d.weight();
            }
            None => {
                self.deltas = 0;
                self.bytes = 0;
            }
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_change_in_the_middle_is_a_small_delta() {
        let old = r#"{"items":["aaaa","bbbb","cccc"],"n":1}"#;
        let new = r#"{"items":["aaaa","bXXb","cccc"],"n":1}"#;
        let delta = StateDelta::between(old, new);
        assert_eq!(delta.edits, [Edit { at: 19, cut: 2, put: "XX".into() }]);
        assert_eq!(delta.apply(old).as_deref(), Some(new));
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let (old, new) = ("{\"s\":\"é\"}", "{\"s\":\"è\"}");
        let delta = StateDelta::between(old, new);
        assert_eq!(delta.apply(old).as_deref(), Some(new));
        assert_eq!(delta.edits.len(), 1);
        assert_eq!(delta.edits[0].put, "è");
    }

    #[test]
    fn a_delta_that_does_not_fit_is_refused() {
        let delta = StateDelta { edits: vec![Edit { at: 10, cut: 5, put: "x".into() }] };
        assert_eq!(delta.apply("short"), None);
        let err = apply_chain("{}", [r#"{"edits":[{"at":1,"cut":9,"put":""}]}"#]).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
    }

    #[test]
    fn a_delta_moves_the_text_into_the_chain_and_the_next_delta_is_from_it() {
        let policy = Some(DeltaPolicy { min_state: 100, max_chain: 8 });
        let big = |c: char| format!("{{\"s\":\"{}\",\"tail\":\"{}\"}}", c, "x".repeat(200));
        let mut chain = Chain::default();
        let mut a = big('a');
        assert!(chain.next(&mut a, policy).is_none());
        assert_eq!(a, big('a'), "a whole state stays for the checkpoint to write");
        let mut b = big('b');
        let d = chain.next(&mut b, policy).expect("a delta");
        assert!(b.is_empty(), "the text moved into the chain");
        assert_eq!(d.apply(&big('a')).as_deref(), Some(big('b').as_str()));
        let d = chain.next(&mut big('c'), policy).expect("a delta");
        assert_eq!(d.apply(&big('b')).as_deref(), Some(big('c').as_str()));
    }

    #[test]
    fn the_chain_writes_whole_states_when_deltas_do_not_pay() {
        let policy = Some(DeltaPolicy { min_state: 100, max_chain: 2 });
        let big = |c: char| format!("{{\"s\":\"{}\",\"tail\":\"{}\"}}", c, "x".repeat(200));
        let mut chain = Chain::default();
        assert!(chain.next(&mut big('a'), policy).is_none(), "the first checkpoint is whole");
        assert!(chain.next(&mut big('b'), policy).is_some());
        assert!(chain.next(&mut big('c'), policy).is_some());
        assert!(chain.next(&mut big('d'), policy).is_none(), "max_chain reached");
        assert!(chain.next(&mut big('e'), policy).is_some());
        assert!(chain.next(&mut "{}".to_string(), policy).is_none(), "small states are whole");
        assert!(chain.next(&mut big('f'), policy).is_none(), "no delta over a state kept in the row");
        assert!(chain.next(&mut big('g'), policy).is_some());
        assert!(chain.next(&mut big('g'), None).is_none(), "no policy: always whole");
        // Everything changed: a delta would be as large as the state.
        let other = format!("{{\"t\":\"{}\"}}", "y".repeat(220));
        assert!(chain.next(&mut other.clone(), policy).is_none());
    }

    #[test]
    fn far_apart_changes_are_separate_edits() {
        // One item of a large list changes, and a counter at the end: two small edits, not
        // everything in between.
        let state = |item: &str, n: u32| {
            let items: Vec<String> =
                (0..50).map(|i| if i == 10 { item.to_string() } else { format!("{i}:{}", "x".repeat(200)) }).collect();
            serde_json::json!({ "items": items, "n": n }).to_string()
        };
        let (old, new) = (state("old", 1), state("new", 2));
        let delta = StateDelta::between(&old, &new);
        assert_eq!(delta.apply(&old).as_deref(), Some(new.as_str()));
        assert_eq!(delta.edits.len(), 2, "{delta:?}");
        assert!(delta.weight() < 100, "{}", delta.weight());
    }

    proptest! {
        /// Any chain of edits restores the last text exactly.
        #[test]
        fn chains_restore_exactly(texts in proptest::collection::vec("[ab]{0,300}|[a-zé\"{}:,0-9]{0,200}", 1..8)) {
            let mut deltas = Vec::new();
            for pair in texts.windows(2) {
                deltas.push(serde_json::to_string(&StateDelta::between(&pair[0], &pair[1])).unwrap());
            }
            let restored = apply_chain(&texts[0], deltas.iter().map(String::as_str)).unwrap();
            prop_assert_eq!(&restored, texts.last().unwrap());
        }

        /// The block-wise scans agree with a byte-by-byte count, wherever the first difference
        /// falls relative to the 32-byte blocks.
        #[test]
        fn shared_ends_match_a_bytewise_count(
            shared in 0usize..200, a in "[ab]{0,70}", b in "[ab]{0,70}",
        ) {
            let base = "x".repeat(shared);
            let (x, y) = (format!("{base}{a}"), format!("{base}{b}"));
            let bytewise = x.bytes().zip(y.bytes()).take_while(|(p, q)| p == q).count();
            prop_assert_eq!(common_prefix(x.as_bytes(), y.as_bytes()), bytewise);
            let (x, y) = (format!("{a}{base}"), format!("{b}{base}"));
            let bytewise = x.bytes().rev().zip(y.bytes().rev()).take_while(|(p, q)| p == q).count();
            prop_assert_eq!(common_suffix(x.as_bytes(), y.as_bytes()), bytewise);
        }
    }
}
