//! Who owns a Gearman function name (pure: no I/O).
//!
//! Function names are global in a broker: two pools that serve one name would both scale on its
//! one queue and both take its jobs. So one pool owns each name, and the others that name it get
//! the `Conflict` phase and condition, and zero replicas for it, until the owner lets it go.
//!
//! The owner is the pool that served the name first. The pools' statuses record it: a pool serves
//! a function when its status lists it in a phase other than `Conflict`. Of the pools serving a
//! name, the one created first owns it (two can claim it only after a race); when none serves it
//! yet, the pool created first among those that name it. Ties go by namespace, then name. A pool
//! being deleted claims nothing, so deleting the owner hands the name over at the next reconcile
//! of the others.

use gearfleet_crd::{FunctionPhase, WorkerPool};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// A pool as far as ownership goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`.
    pub pool: String,
    /// Its creation time (`None` sorts first: not stored yet, which only tests build).
    pub created: Option<Timestamp>,
    /// The functions its spec names.
    pub names: Vec<String>,
    /// Those its status shows it serving (listed in a phase other than `Conflict`).
    pub serving: Vec<String>,
}

impl Claim {
    /// The claim of `pool`; `None` for a pool being deleted.
    pub fn of(pool: &WorkerPool) -> Option<Claim> {
        if pool.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let names: Vec<String> = pool.spec.functions.iter().map(|f| f.name.clone()).collect();
        let serving = pool
            .status
            .iter()
            .flat_map(|s| &s.functions)
            .filter(|f| f.phase.is_some_and(|p| p != FunctionPhase::Conflict) && names.contains(&f.name))
            .map(|f| f.name.clone())
            .collect();
        Some(Claim { pool: key(pool), created: pool.metadata.creation_timestamp.as_ref().map(|t| t.0), names, serving })
    }

    fn rank(&self) -> (Option<Timestamp>, &str) {
        (self.created, &self.pool)
    }
}

/// `namespace/name` of a pool.
pub fn key(pool: &WorkerPool) -> String {
    format!("{}/{}", pool.namespace().unwrap_or_default(), pool.name_any())
}

/// The pool (`namespace/name`) that owns `function` among `claims`; `None` when no pool names it.
pub fn owner<'a>(function: &str, claims: &'a [Claim]) -> Option<&'a str> {
    let first = |serving: bool| {
        claims
            .iter()
            .filter(|c| {
                if serving { c.serving.iter().any(|f| f == function) } else { c.names.iter().any(|f| f == function) }
            })
            .min_by(|a, b| a.rank().cmp(&b.rank()))
    };
    first(true).or_else(|| first(false)).map(|c| c.pool.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(pool: &str, created: i64, names: &[&str], serving: &[&str]) -> Claim {
        Claim {
            pool: pool.to_string(),
            created: Some(Timestamp::from_second(created).unwrap()),
            names: names.iter().map(|s| s.to_string()).collect(),
            serving: serving.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_pool_created_first_owns_a_name_nobody_serves_yet() {
        let claims = [claim("b/late", 20, &["resize"], &[]), claim("a/early", 10, &["resize", "echo"], &[])];
        assert_eq!(owner("resize", &claims), Some("a/early"));
        assert_eq!(owner("echo", &claims), Some("a/early"));
        assert_eq!(owner("other", &claims), None);
    }

    #[test]
    fn a_pool_that_serves_a_name_keeps_it_against_an_older_pool_that_names_it_later() {
        let claims = [claim("a/old", 10, &["resize"], &[]), claim("b/young", 20, &["resize"], &["resize"])];
        assert_eq!(owner("resize", &claims), Some("b/young"));
    }

    #[test]
    fn after_a_race_the_older_server_wins_and_ties_go_by_namespace_and_name() {
        let claims = [claim("b/two", 20, &["f"], &["f"]), claim("a/one", 10, &["f"], &["f"])];
        assert_eq!(owner("f", &claims), Some("a/one"));
        let tied = [claim("ns2/p", 10, &["f"], &[]), claim("ns1/p", 10, &["f"], &[])];
        assert_eq!(owner("f", &tied), Some("ns1/p"));
    }

    #[test]
    fn deleting_the_owner_hands_the_name_over() {
        let owner_pool: WorkerPool = serde_yaml::from_str(
            "apiVersion: gearfleet.dev/v1alpha1\nkind: WorkerPool\nmetadata: {name: a, namespace: x, creationTimestamp: '2026-01-01T00:00:00Z'}\n\
             spec: {functions: [{name: f}], template: {spec: {containers: [{name: w, image: i}]}}}\n\
             status: {functions: [{name: f, phase: Ready}]}",
        )
        .unwrap();
        let other = claim("y/b", 1_900_000_000, &["f"], &[]);
        let claims = [Claim::of(&owner_pool).unwrap(), other.clone()];
        assert_eq!(claims[0].serving, ["f"]);
        assert_eq!(owner("f", &claims), Some("x/a"));

        let mut deleting = owner_pool.clone();
        deleting.metadata.deletion_timestamp = owner_pool.metadata.creation_timestamp.clone();
        assert_eq!(Claim::of(&deleting), None, "a pool being deleted claims nothing");
        assert_eq!(owner("f", &[other]), Some("y/b"));
    }

    #[test]
    fn a_function_in_conflict_is_not_served() {
        let pool: WorkerPool = serde_yaml::from_str(
            "apiVersion: gearfleet.dev/v1alpha1\nkind: WorkerPool\nmetadata: {name: b, namespace: y}\n\
             spec: {functions: [{name: f}, {name: g}], template: {spec: {containers: [{name: w, image: i}]}}}\n\
             status: {functions: [{name: f, phase: Conflict}, {name: g, phase: Idle}, {name: gone, phase: Ready}]}",
        )
        .unwrap();
        let claim = Claim::of(&pool).unwrap();
        assert_eq!(claim.names, ["f", "g"]);
        assert_eq!(claim.serving, ["g"], "not the one in Conflict, nor one no longer in the spec");
    }
}
