//! Pure: the configured streams' states, in key order for every walk, and
//! found by key through a hash index for the lookup every frame makes (a
//! `BTreeMap` compared symbols at each level of its search: about 200
//! instructions a frame with 10 streams, more with a thousand).

use std::collections::BTreeMap;
use std::ops::Index;

use rustc_hash::FxHashMap;

use crate::domain::StreamKey;
use crate::recorder::hour::StreamState;

/// The streams a state records: fixed once made (a stream never comes or
/// goes while the process runs).
#[derive(Debug, Default)]
pub(in crate::recorder) struct Streams {
    /// In key order.
    entries: Vec<(StreamKey, StreamState)>,
    /// Each key's place in `entries`.
    index: FxHashMap<StreamKey, usize>,
}

impl Streams {
    /// One empty state per key (a key given twice is one stream).
    pub(in crate::recorder) fn new(keys: impl IntoIterator<Item = StreamKey>) -> Streams {
        let entries: Vec<(StreamKey, StreamState)> = keys
            .into_iter()
            .map(|key| (key, StreamState::default()))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let index = entries
            .iter()
            .enumerate()
            .map(|(at, (key, _))| (key.clone(), at))
            .collect();
        Streams { entries, index }
    }

    pub(in crate::recorder) fn get(&self, key: &StreamKey) -> Option<&StreamState> {
        let at = *self.index.get(key)?;
        Some(&self.entries[at].1)
    }

    pub(in crate::recorder) fn get_mut(&mut self, key: &StreamKey) -> Option<&mut StreamState> {
        let at = *self.index.get(key)?;
        Some(&mut self.entries[at].1)
    }

    /// In key order.
    pub(in crate::recorder) fn iter(&self) -> impl Iterator<Item = (&StreamKey, &StreamState)> {
        self.entries.iter().map(|(key, stream)| (key, stream))
    }

    /// In key order.
    pub(in crate::recorder) fn iter_mut(
        &mut self,
    ) -> impl Iterator<Item = (&StreamKey, &mut StreamState)> {
        self.entries.iter_mut().map(|(key, stream)| (&*key, stream))
    }

    /// In key order.
    pub(in crate::recorder) fn values(&self) -> impl Iterator<Item = &StreamState> {
        self.entries.iter().map(|(_, stream)| stream)
    }
}

impl<'a> IntoIterator for &'a Streams {
    type Item = (&'a StreamKey, &'a StreamState);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (StreamKey, StreamState)>,
        fn(&'a (StreamKey, StreamState)) -> (&'a StreamKey, &'a StreamState),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(key, stream)| (key, stream))
    }
}

impl Index<&StreamKey> for Streams {
    type Output = StreamState;

    fn index(&self, key: &StreamKey) -> &StreamState {
        self.get(key).expect("a configured stream")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Market, StreamKind, Symbol};

    fn key(symbol: &str, kind: StreamKind) -> StreamKey {
        StreamKey {
            market: Market::Spot,
            symbol: Symbol::new(symbol).expect("valid"),
            kind,
        }
    }

    /// Walks go in key order whatever the order given; each key is found,
    /// once, and an unknown one is not.
    #[test]
    fn streams_walk_in_key_order_and_are_found_by_key() {
        let given = [
            key("ETHUSDT", StreamKind::Trade),
            key("BTCUSDT", StreamKind::AggTrade),
            key("BTCUSDT", StreamKind::Trade),
            key("ETHUSDT", StreamKind::Trade),
        ];
        let mut streams = Streams::new(given.clone());
        let mut sorted = given.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            streams
                .iter()
                .map(|(key, _)| key.clone())
                .collect::<Vec<_>>(),
            sorted
        );
        assert_eq!((&streams).into_iter().count(), 3);
        assert_eq!(streams.values().count(), 3);
        streams.get_mut(&given[1]).expect("configured").sealed_any = true;
        let marked: Vec<StreamKey> = streams
            .iter_mut()
            .filter(|(_, stream)| stream.sealed_any)
            .map(|(key, _)| key.clone())
            .collect();
        assert_eq!(marked, [given[1].clone()]);
        assert!(streams[&given[1]].sealed_any);
        assert!(!streams.get(&given[0]).expect("configured").sealed_any);
        assert!(streams.get(&key("SOLUSDT", StreamKind::Trade)).is_none());
    }
}
