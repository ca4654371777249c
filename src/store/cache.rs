//! What resource calls read on every call but seldom changes (entities and
//! their use lists, the catalog, licenses and their versions), kept in memory
//! under the database's change generations (migration `cache_generations`).
//!
//! A call reads the generations in the same query as its token and consent
//! (see [`Store::consent_for_call`]). A value loaded after seeing generation
//! `g` reflects every change up to `g` (later snapshots never see less), so
//! it may serve any call that saw `g`; a call that sees a newer generation
//! drops everything kept under older ones and loads again. A change made on
//! any node thus applies to the very next call on every node, as if nothing
//! were cached.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use sqlx::any::AnyRow;

use super::consent::ConsentRow;
use super::entities::{EntityRow, ScenarioRow};
use super::licenses::{LicenseRow, VersionRow};
use super::{col, Store};
use crate::consent::GrantedAccess;
use crate::error::Result;
use crate::licenses::catalog::LicenseType;

/// The change generations a call saw (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Generations {
    /// Entities, scenarios and the catalog.
    pub facts: i64,
    /// Licenses and their versions.
    pub licenses: i64,
}

impl Generations {
    /// From a row with the columns `facts_generation` and `licenses_generation`.
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Generations {
            facts: col(r, "facts_generation")?,
            licenses: col(r, "licenses_generation")?,
        })
    }
}

/// Most values one map keeps; it starts over when full (a bound, not a policy:
/// hot values come back at once).
const CAPACITY: usize = 10_000;

/// Inserts into a map bounded by [`CAPACITY`]: a full map starts over.
fn insert_bounded<K: Eq + Hash, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CAPACITY {
        map.clear();
    }
    map.insert(key, value);
}

/// Answers that never go stale, kept in memory up to [`CAPACITY`] (the
/// verified access tokens, the policy engine's decisions): what stays true
/// for the same key, with no generation to watch.
pub(crate) struct Kept<K, V>(Mutex<HashMap<K, V>>);

impl<K, V> Default for Kept<K, V> {
    fn default() -> Self {
        Kept(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V: Clone> Kept<K, V> {
    /// The value kept under `key`, if any.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.0.lock().ok()?.get(key).cloned()
    }

    /// Keeps `value` under `key`.
    pub(crate) fn put(&self, key: K, value: V) {
        if let Ok(mut map) = self.0.lock() {
            insert_bounded(&mut map, key, value);
        }
    }
    /// Forgets what is kept under `key`.
    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if let Ok(mut map) = self.0.lock() {
            map.remove(key);
        }
    }
}

/// Values valid for one generation.
struct Generational<K, V> {
    state: Mutex<(i64, HashMap<K, Arc<V>>)>,
}

impl<K: Eq + Hash, V> Generational<K, V> {
    fn new() -> Self {
        Generational {
            state: Mutex::new((i64::MIN, HashMap::new())),
        }
    }

    fn get<Q>(&self, generation: i64, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let state = self.state.lock().ok()?;
        (state.0 == generation)
            .then(|| state.1.get(key).cloned())
            .flatten()
    }

    fn put(&self, generation: i64, key: K, value: Arc<V>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if generation > state.0 {
            *state = (generation, HashMap::new());
        }
        if generation == state.0 {
            insert_bounded(&mut state.1, key, value);
        }
    }

    /// The value under `key` at `generation`, loading it when not kept.
    /// Absent values are not kept (a miss reads again). The key is copied
    /// only when a loaded value is kept, never on a hit.
    async fn get_or_load<Q, F>(&self, generation: i64, key: &Q, load: F) -> Result<Option<Arc<V>>>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
        F: std::future::Future<Output = Result<Option<V>>>,
    {
        if let Some(v) = self.get(generation, key) {
            return Ok(Some(v));
        }
        let Some(v) = load.await?.map(Arc::new) else {
            return Ok(None);
        };
        self.put(generation, key.to_owned(), v.clone());
        Ok(Some(v))
    }
}

/// The maps behind [`Store`]'s `*_at` reads.
pub(crate) struct ReadCache {
    /// By token id: the consent and generations a call with that token last
    /// read and found good (see [`Store::kept_call`]).
    calls: Kept<String, Arc<KeptCall>>,
    entities: Generational<String, (EntityRow, Vec<ScenarioRow>)>,
    license_types: Generational<String, LicenseType>,
    licenses: Generational<String, (LicenseRow, VersionRow)>,
}

impl ReadCache {
    pub(crate) fn new() -> Self {
        ReadCache {
            calls: Kept::default(),
            entities: Generational::new(),
            license_types: Generational::new(),
            licenses: Generational::new(),
        }
    }
}

/// What the last fresh check of a token found good (see [`Store::kept_call`]).
#[derive(Debug)]
pub struct KeptCall {
    /// Its consent.
    pub consent: std::sync::Arc<ConsentRow>,
    /// What the consent grants, parsed from its details.
    pub granted: std::sync::Arc<Vec<GrantedAccess>>,
    /// The change generations the check saw.
    pub generations: Generations,
}

impl Store {
    /// The consent (parsed grants included) and generations that the last fresh call with the token
    /// `jti` read and found good (active entity, token not revoked, consent
    /// active and unexpired), to be confirmed in the group commit of what the
    /// call does (`audit::Expected`) instead of read again before it.
    pub fn kept_call(&self, jti: &str) -> Option<Arc<KeptCall>> {
        self.cache.calls.get(jti)
    }

    /// Keeps what a fresh call with the token `jti` found good.
    pub fn keep_call(&self, jti: &str, call: KeptCall) {
        self.cache.calls.put(jti.to_owned(), Arc::new(call));
    }

    /// Forgets what was kept for the token `jti`.
    pub fn forget_call(&self, jti: &str) {
        self.cache.calls.remove(jti);
    }

    /// [`Store::entity_with_scenarios`] as of `g`.
    pub async fn entity_with_scenarios_at(
        &self,
        g: Generations,
        id: &str,
    ) -> Result<Option<Arc<(EntityRow, Vec<ScenarioRow>)>>> {
        self.cache
            .entities
            .get_or_load(g.facts, id, self.entity_with_scenarios(id))
            .await
    }

    /// [`Store::license_type`] as of `g`.
    pub async fn license_type_at(
        &self,
        g: Generations,
        code: &str,
    ) -> Result<Option<Arc<LicenseType>>> {
        self.cache
            .license_types
            .get_or_load(g.facts, code, self.license_type(code))
            .await
    }

    /// A license (by base id) with its current version, as of `g`.
    pub async fn current_license_at(
        &self,
        g: Generations,
        base: &str,
    ) -> Result<Option<Arc<(LicenseRow, VersionRow)>>> {
        let load = async {
            let Some(license) = self.license(base).await? else {
                return Ok(None);
            };
            let version = self
                .license_version(base, license.current_version)
                .await?
                .ok_or_else(|| {
                    crate::error::Error::internal("a license without its current version")
                })?;
            Ok(Some((license, version)))
        };
        self.cache
            .licenses
            .get_or_load(g.licenses, base, load)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_generation_drops_what_older_ones_kept() {
        let c: Generational<&str, i32> = Generational::new();
        c.put(3, "a", Arc::new(1));
        assert_eq!(c.get(3, &"a").as_deref(), Some(&1));
        // A call that saw a newer generation does not get the old value…
        assert_eq!(c.get(4, &"a"), None);
        c.put(4, "b", Arc::new(2));
        // …and once something is kept under it, the old values are gone.
        assert_eq!(c.get(3, &"a"), None);
        assert_eq!(c.get(4, &"a"), None);
        // A value loaded under an older generation than the kept one is not kept.
        c.put(3, "a", Arc::new(1));
        assert_eq!(c.get(4, &"a"), None);
        assert_eq!(c.get(4, &"b").as_deref(), Some(&2));
    }

    #[test]
    fn a_full_map_starts_over() {
        let c: Generational<usize, usize> = Generational::new();
        for i in 0..=CAPACITY {
            c.put(1, i, Arc::new(i));
        }
        assert_eq!(c.get(1, &CAPACITY).as_deref(), Some(&CAPACITY));
        assert_eq!(c.get(1, &0), None);
    }
}
