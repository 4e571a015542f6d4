//! The state changes of steps still in flight, kept apart so that a checkpoint holds only
//! the changes of completed steps.
//!
//! Steps of a run share one state value and see each other's changes at once (a step reads
//! what a sibling wrote a moment ago). A checkpoint written when one step completes must not
//! hold what a sibling still in flight has changed so far: after a crash that sibling runs
//! again and would apply its changes twice (a counter incremented twice, an item pushed
//! twice). The same holds for a step that changed the state and then failed.
//!
//! So while two or more steps of a durable run are in flight, every [`Cx::update`] records
//! what it changed as [`Change`]s, computed from the state's JSON before and after the
//! closure. When an execution completes, its changes are committed (forgotten here). A
//! checkpoint takes the live state's JSON and reverts every change not yet committed,
//! newest first. Changes are recorded in a form that reverts exactly even when a committed
//! sibling changed the same value later:
//!
//! - a number that changed is reverted by subtracting the difference (parallel counters and
//!   sums stay exact);
//! - an array that grew at its end loses the items it gained (parallel pushes);
//! - a string that grew at its end loses that text (parallel appends to a log);
//! - anything else (a field set, a key added or removed) is put back only if it still holds
//!   the value this change wrote: when a completed sibling overwrote it since, that write
//!   stands.
//!
//! A step alone in flight records nothing: no checkpoint can be written before it completes
//! (except one it asks for itself before waiting for a person, `Cx::ask`), so chains pay
//! nothing. Two parallel steps writing the same field with plain assignments race, with or
//! without a crash: the last write wins, so such a result depends on timing either way.
//!
//! [`Cx::update`]: crate::Cx::update

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Number, Value};

/// One step of a path into a JSON value.
#[derive(Clone, Debug, PartialEq)]
enum Key {
    Field(String),
    Index(usize),
}

/// What one update changed at one place, in a form that can be reverted.
#[derive(Clone, Debug, PartialEq)]
enum Edit {
    /// A number grew by an integer amount.
    AddInt(i128),
    /// A number grew by a float amount.
    AddFloat(f64),
    /// An array gained these items at its end.
    Append(Vec<Value>),
    /// A string gained this text at its end.
    AppendText(String),
    /// A value was set (`None`: the key was absent before / is absent after).
    Set { old: Option<Value>, new: Option<Value> },
}

/// A change at a place in the state.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Change {
    path: Vec<Key>,
    edit: Edit,
}

/// A durable run's record of uncommitted changes, with the state type's conversion to JSON
/// (kept as a function so that [`Cx::update`](crate::Cx::update) needs no `Serialize` bound).
pub(crate) struct StateLog<S> {
    pub changes: Uncommitted,
    to_json: fn(&S) -> Option<Value>,
    from_json: fn(Value) -> Option<S>,
}

impl<S: serde::Serialize + serde::de::DeserializeOwned> StateLog<S> {
    pub fn new() -> Self {
        StateLog {
            changes: Uncommitted::default(),
            to_json: |s| serde_json::to_value(s).ok(),
            from_json: |v| serde_json::from_value(v).ok(),
        }
    }
}

impl<S> StateLog<S> {
    /// Runs `change` on `state`, recording what it changed when it must (see the module's docs).
    pub fn update<R>(&self, execution: u64, state: &mut S, change: impl FnOnce(&mut S) -> R) -> R {
        if !self.changes.recording() {
            return change(state);
        }
        let before = (self.to_json)(state);
        let result = change(state);
        // A state that does not convert to JSON cannot be checkpointed at all: that error
        // surfaces at the checkpoint, not here.
        if let (Some(before), Some(after)) = (before, (self.to_json)(state)) {
            self.changes.record(execution, &before, &after);
        }
        result
    }

    /// Takes `execution`'s changes out of the live state (a failed attempt about to be retried)
    /// and forgets them; false when the state does not round-trip through JSON.
    pub fn revert_live(&self, execution: u64, state: &mut S) -> bool {
        let Some(mut value) = (self.to_json)(state) else { return false };
        self.changes.revert_execution(execution, &mut value);
        let Some(reverted) = (self.from_json)(value) else { return false };
        *state = reverted;
        true
    }

    /// The state's JSON without the uncommitted changes.
    pub fn committed_json(&self, state: &S) -> Option<Value> {
        let mut value = (self.to_json)(state)?;
        self.changes.revert(&mut value);
        Some(value)
    }
}

/// The uncommitted changes of a durable run's executions in flight.
#[derive(Default)]
pub(crate) struct Uncommitted {
    /// Executions launched and not yet completed (or failed).
    in_flight: AtomicUsize,
    /// Executions in flight whose step retries: their changes are recorded even when they run
    /// alone, so that a failed attempt's changes can be taken out before the next.
    retrying: AtomicUsize,
    /// `(execution, change)` in the order the changes were made.
    changes: Mutex<Vec<(u64, Change)>>,
}

impl Uncommitted {
    /// Whether an update now must record its changes: another execution is in flight, so a
    /// checkpoint may be written before this one completes.
    pub fn recording(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 1 || self.retrying.load(Ordering::Acquire) > 0
    }

    /// `count` executions started, `retrying` of them of steps that retry.
    pub fn launched(&self, count: usize, retrying: usize) {
        self.in_flight.fetch_add(count, Ordering::AcqRel);
        self.retrying.fetch_add(retrying, Ordering::AcqRel);
    }

    /// An execution ended: `committed` when it completed (its changes are the run's now),
    /// not when it failed (its changes stay out of every checkpoint).
    pub fn ended(&self, execution: u64, committed: bool, retrying: bool) {
        let less = |n: usize| Some(n.saturating_sub(1));
        let _ = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, less);
        if retrying {
            let _ = self.retrying.fetch_update(Ordering::AcqRel, Ordering::Acquire, less);
        }
        if committed {
            self.with_changes(|c| c.retain(|(e, _)| *e != execution));
        }
    }

    /// Reverts `execution`'s changes on `state` and forgets them.
    fn revert_execution(&self, execution: u64, state: &mut Value) {
        self.with_changes(|c| {
            for (_, change) in c.iter().rev().filter(|(e, _)| *e == execution) {
                revert(state, change);
            }
            c.retain(|(e, _)| *e != execution);
        });
    }

    /// Records what one update of `execution` changed.
    pub fn record(&self, execution: u64, before: &Value, after: &Value) {
        let mut found = Vec::new();
        diff(&mut Vec::new(), before, after, &mut found);
        if !found.is_empty() {
            self.with_changes(|c| c.extend(found.into_iter().map(|change| (execution, change))));
        }
    }

    /// Whether some change is not committed (a checkpoint must revert it).
    pub fn is_empty(&self) -> bool {
        self.with_changes(|c| c.is_empty())
    }

    /// `state` without the uncommitted changes.
    pub fn revert(&self, state: &mut Value) {
        self.with_changes(|c| {
            for (_, change) in c.iter().rev() {
                revert(state, change);
            }
        });
    }

    fn with_changes<R>(&self, f: impl FnOnce(&mut Vec<(u64, Change)>) -> R) -> R {
        f(&mut self.changes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The changes that turn `before` into `after`, most specific first.
fn diff(path: &mut Vec<Key>, before: &Value, after: &Value, out: &mut Vec<Change>) {
    if before == after {
        return;
    }
    let edit = match (before, after) {
        (Value::Object(b), Value::Object(a)) => return diff_objects(path, b, a, out),
        (Value::Array(b), Value::Array(a)) if a.len() > b.len() && a[..b.len()] == b[..] => {
            Edit::Append(a[b.len()..].to_vec())
        }
        (Value::Array(b), Value::Array(a)) if a.len() == b.len() => {
            for (i, (x, y)) in b.iter().zip(a).enumerate() {
                path.push(Key::Index(i));
                diff(path, x, y, out);
                path.pop();
            }
            return;
        }
        (Value::String(b), Value::String(a)) if a.len() > b.len() && a.starts_with(b.as_str()) => {
            Edit::AppendText(a[b.len()..].to_string())
        }
        (Value::Number(b), Value::Number(a)) => {
            number_delta(b, a).unwrap_or_else(|| Edit::Set { old: Some(before.clone()), new: Some(after.clone()) })
        }
        _ => Edit::Set { old: Some(before.clone()), new: Some(after.clone()) },
    };
    out.push(Change { path: path.clone(), edit });
}

fn diff_objects(path: &mut Vec<Key>, before: &Map<String, Value>, after: &Map<String, Value>, out: &mut Vec<Change>) {
    for (key, b) in before {
        path.push(Key::Field(key.clone()));
        match after.get(key) {
            Some(a) => diff(path, b, a, out),
            None => out.push(Change { path: path.clone(), edit: Edit::Set { old: Some(b.clone()), new: None } }),
        }
        path.pop();
    }
    for (key, a) in after {
        if !before.contains_key(key) {
            path.push(Key::Field(key.clone()));
            out.push(Change { path: path.clone(), edit: Edit::Set { old: None, new: Some(a.clone()) } });
            path.pop();
        }
    }
}

fn integer(n: &Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

fn number_delta(before: &Number, after: &Number) -> Option<Edit> {
    match (integer(before), integer(after)) {
        (Some(b), Some(a)) => Some(Edit::AddInt(a - b)),
        _ => Some(Edit::AddFloat(after.as_f64()? - before.as_f64()?)),
    }
}

fn number_from(n: i128) -> Option<Value> {
    i64::try_from(n).map(Value::from).ok().or_else(|| u64::try_from(n).ok().map(Value::from))
}

/// Undoes one change on the current value (see the module's docs for the rules).
fn revert(root: &mut Value, change: &Change) {
    let Some((last, parents)) = change.path.split_last() else {
        return revert_here(root, &change.edit);
    };
    let Some(parent) = walk(root, parents) else { return };
    match (parent, last) {
        (Value::Object(map), Key::Field(key)) => match (&change.edit, map.get_mut(key)) {
            (Edit::Set { old, new }, current) => {
                if current.as_deref() != new.as_ref() {
                    return; // a completed step wrote here since: its value stands
                }
                match old {
                    Some(old) => {
                        map.insert(key.clone(), old.clone());
                    }
                    None => {
                        map.remove(key);
                    }
                }
            }
            (edit, Some(current)) => revert_here(current, edit),
            (_, None) => {}
        },
        (Value::Array(items), Key::Index(i)) => {
            if let Some(current) = items.get_mut(*i) {
                revert_here(current, &change.edit);
            }
        }
        _ => {}
    }
}

fn walk<'a>(mut value: &'a mut Value, path: &[Key]) -> Option<&'a mut Value> {
    for key in path {
        value = match (value, key) {
            (Value::Object(map), Key::Field(k)) => map.get_mut(k)?,
            (Value::Array(items), Key::Index(i)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(value)
}

fn revert_here(current: &mut Value, edit: &Edit) {
    match (edit, &mut *current) {
        (Edit::AddInt(delta), Value::Number(n)) => {
            if let Some(v) = integer(n).and_then(|n| number_from(n - delta)) {
                *current = v;
            }
        }
        (Edit::AddFloat(delta), Value::Number(n)) => {
            if let Some(v) = n.as_f64().and_then(|n| Number::from_f64(n - delta)) {
                *current = Value::Number(v);
            }
        }
        (Edit::Append(added), Value::Array(items)) => {
            for item in added.iter().rev() {
                if let Some(at) = items.iter().rposition(|x| x == item) {
                    items.remove(at);
                }
            }
        }
        (Edit::AppendText(added), Value::String(text)) => {
            if let Some(at) = text.rfind(added.as_str()) {
                text.replace_range(at..at + added.len(), "");
            }
        }
        (Edit::Set { old: Some(old), new: Some(new) }, current) if current == new => *current = old.clone(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Applies `steps` (execution, before → after) in order, commits `committed`, and returns
    /// the reverted state.
    fn replay(start: Value, steps: &[(u64, Value)], committed: &[u64]) -> Value {
        let log = Uncommitted::default();
        let mut state = start;
        for (execution, after) in steps {
            log.record(*execution, &state, after);
            state = after.clone();
        }
        for e in committed {
            log.ended(*e, true, false);
        }
        log.revert(&mut state);
        state
    }

    #[test]
    fn parallel_counters_keep_committed_increments_only() {
        let steps = [(1, json!({"sum": 1100})), (2, json!({"sum": 1120})), (3, json!({"sum": 1121}))];
        assert_eq!(replay(json!({"sum": 1000}), &steps, &[2]), json!({"sum": 1020}));
        assert_eq!(replay(json!({"sum": 1000}), &steps, &[1, 3]), json!({"sum": 1101}));
    }

    #[test]
    fn parallel_pushes_keep_committed_items_in_order() {
        let steps = [(1, json!({"xs": ["a"]})), (2, json!({"xs": ["a", "b"]})), (1, json!({"xs": ["a", "b", "c"]}))];
        assert_eq!(replay(json!({"xs": []}), &steps, &[2]), json!({"xs": ["b"]}));
        assert_eq!(replay(json!({"xs": []}), &steps, &[1]), json!({"xs": ["a", "c"]}));
    }

    #[test]
    fn appended_text_and_new_keys_revert() {
        let steps = [(1, json!({"log": "x;", "m": {"k1": 1}})), (2, json!({"log": "x;y;", "m": {"k1": 1, "k2": 2}}))];
        assert_eq!(replay(json!({"log": "", "m": {}}), &steps, &[2]), json!({"log": "y;", "m": {"k2": 2}}));
    }

    #[test]
    fn a_set_overwritten_by_a_committed_step_stands() {
        let steps = [(1, json!({"s": "one"})), (2, json!({"s": "two"}))];
        assert_eq!(replay(json!({"s": null}), &steps, &[2]), json!({"s": "two"}));
        assert_eq!(replay(json!({"s": null}), &steps, &[1]), json!({"s": "one"}));
        assert_eq!(replay(json!({"s": null}), &steps, &[]), json!({"s": null}));
    }

    #[test]
    fn nested_array_elements_and_removed_keys_revert() {
        let start = json!({"items": [{"done": false}, {"done": false}], "gone": 1});
        let steps = [
            (1, json!({"items": [{"done": true}, {"done": false}], "gone": 1})),
            (2, json!({"items": [{"done": true}, {"done": true}]})),
        ];
        assert_eq!(replay(start.clone(), &steps, &[2]), json!({"items": [{"done": false}, {"done": true}]}));
        assert_eq!(replay(start, &steps, &[1]), json!({"items": [{"done": true}, {"done": false}], "gone": 1}));
    }

    #[test]
    fn nothing_uncommitted_changes_nothing() {
        let steps = [(1, json!({"n": 2, "xs": [1]}))];
        assert_eq!(replay(json!({"n": 1, "xs": []}), &steps, &[1]), json!({"n": 2, "xs": [1]}));
    }
}
