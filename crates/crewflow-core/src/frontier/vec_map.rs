//! A map kept as a sorted vector: the frontier's maps hold a handful of entries per run, where
//! a `BTreeMap` would allocate a node sized for eleven on first insert.

use serde::{Deserialize, Serialize};

/// A sorted-vector map.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord + Copy, V> VecMap<K, V> {
    /// A map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        VecMap(Vec::with_capacity(n))
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        // Keys usually arrive in increasing order, so look at the end first.
        match self.0.last() {
            Some((last, _)) if *last < *key => Err(self.0.len()),
            _ => self.0.binary_search_by(|(k, _)| k.cmp(key)),
        }
    }

    pub fn insert(&mut self, key: K, value: V) {
        match self.find(&key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => {
                // A first entry gets room for one, not `Vec`'s four: most maps of a run
                // never hold a second, and every run in flight holds its maps.
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (key, value))
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::VecMap;

    #[test]
    fn behaves_like_a_map() {
        let mut m = VecMap::default();
        for k in [5u64, 1, 9, 3, 9] {
            m.insert(k, k * 10);
        }
        assert_eq!(m.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 3, 5, 9]);
        assert_eq!(m.get(&9), Some(&90));
        assert_eq!(m.remove(&3), Some(30));
        assert_eq!(m.remove(&3), None);
        assert_eq!(m.len(), 3);
        *m.get_mut(&1).unwrap() = 7;
        assert_eq!(m.get(&1), Some(&7));
    }
}
