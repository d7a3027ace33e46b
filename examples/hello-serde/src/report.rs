//! Turns a parsed `Catalogue` into a deterministic `Report`.
//!
//! Determinism matters: the binary must be bit-reproducible *and* its output
//! must be byte-identical across runs, so we only use ordered collections
//! (`BTreeMap`/`BTreeSet`, sorted `Vec`s) and never `HashMap` iteration order.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use serde::Serialize;

use crate::model::{Catalogue, CrateEntry};

/// Regexes compiled once and shared by every analysis step.
pub struct Patterns {
    /// User-selectable crate-name filter.
    name_filter: Regex,
    /// A (simplified) SemVer 2.0 version: `MAJOR.MINOR.PATCH[-pre][+build]`.
    semver: Regex,
    /// A Cargo version requirement such as `=1.0.152`, `^1.0`, `0.12`.
    requirement: Regex,
    /// Separators inside an SPDX expression: operators and parentheses.
    license_split: Regex,
}

impl Patterns {
    pub fn new(name_filter: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            name_filter: Regex::new(name_filter)?,
            semver: Regex::new(
                r"^(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$",
            )?,
            requirement: Regex::new(
                r"^(?P<op>=|\^|~|>=|<=|>|<)?(?P<major>\d+)(?:\.(?P<minor>\d+))?(?:\.(?P<patch>\d+))?$",
            )?,
            license_split: Regex::new(r"\s+(?:OR|AND|WITH)\s+|[()]")?,
        })
    }
}

/// Top-level output document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub registry: String,
    pub schema: u32,
    pub filter: String,
    pub total_crates: usize,
    /// Crates whose name matched the filter, sorted by name.
    pub matched: Vec<CrateSummary>,
    /// License identifier -> number of crates (all crates, not just matched)
    /// that offer it.
    pub licenses: BTreeMap<String, usize>,
    /// Category -> crate names in that category.
    pub categories: BTreeMap<String, BTreeSet<String>>,
    /// Dependency edges whose target is not in the catalogue.
    pub missing_dependencies: Vec<MissingDependency>,
    /// Crates whose version string is not valid SemVer.
    pub invalid_versions: Vec<InvalidVersion>,
}

#[derive(Debug, Serialize)]
pub struct CrateSummary {
    pub name: String,
    pub version: Version,
    pub required_deps: Vec<String>,
    pub optional_deps: Vec<String>,
    /// Whether every dependency requirement is satisfied by the catalogue.
    pub deps_satisfied: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

#[derive(Debug, Serialize)]
pub struct MissingDependency {
    pub from: String,
    pub to: String,
    pub optional: bool,
}

#[derive(Debug, Serialize)]
pub struct InvalidVersion {
    pub name: String,
    pub version: String,
}

impl Patterns {
    fn parse_version(&self, s: &str) -> Option<Version> {
        let caps = self.semver.captures(s)?;
        // The regex guarantees these groups are all-digit; `parse` can only
        // fail on overflow, which we treat as "not a version".
        Some(Version {
            major: caps["major"].parse().ok()?,
            minor: caps["minor"].parse().ok()?,
            patch: caps["patch"].parse().ok()?,
        })
    }

    /// Minimal Cargo requirement matching: enough to sanity-check the
    /// catalogue, not a full implementation of Cargo's rules.
    fn satisfies(&self, req: &str, v: Version) -> bool {
        let caps = match self.requirement.captures(req) {
            Some(c) => c,
            None => return false,
        };
        let num = |g: &str| caps.name(g).and_then(|m| m.as_str().parse::<u64>().ok());
        let major = num("major").unwrap_or(0);
        let minor = num("minor");
        let patch = num("patch");
        let want = Version {
            major,
            minor: minor.unwrap_or(0),
            patch: patch.unwrap_or(0),
        };
        match caps.name("op").map(|m| m.as_str()).unwrap_or("^") {
            "=" => {
                v.major == major
                    && minor.map_or(true, |m| v.minor == m)
                    && patch.map_or(true, |p| v.patch == p)
            }
            ">=" => v >= want,
            ">" => v > want,
            "<=" => v <= want,
            "<" => v < want,
            "~" => v >= want && v.major == major && minor.map_or(true, |m| v.minor == m),
            // Caret (also the default): the left-most non-zero component
            // must match exactly.
            _ => {
                if v < want || v.major != major {
                    false
                } else if major == 0 {
                    match minor {
                        Some(m) if v.minor != m => false,
                        Some(0) => patch.map_or(true, |p| v.patch == p),
                        _ => true,
                    }
                } else {
                    true
                }
            }
        }
    }

    fn licenses<'a>(&'a self, expr: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.license_split
            .split(expr)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

pub fn build(catalogue: &Catalogue, filter: &str, p: &Patterns) -> Report {
    // Index crates by name so dependency lookups are O(log n) and ordered.
    let by_name: BTreeMap<&str, &CrateEntry> =
        catalogue.crates.iter().map(|c| (c.name.as_str(), c)).collect();

    let mut licenses: BTreeMap<String, usize> = BTreeMap::new();
    let mut categories: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut invalid = Vec::new();
    let mut matched = Vec::new();

    for c in &catalogue.crates {
        // A crate offering "MIT OR MIT" should still count once.
        let ids: BTreeSet<&str> = p.licenses(&c.license).collect();
        for id in ids {
            *licenses.entry(id.to_owned()).or_default() += 1;
        }
        for cat in &c.categories {
            categories
                .entry(cat.clone())
                .or_default()
                .insert(c.name.clone());
        }
        for d in &c.dependencies {
            if !by_name.contains_key(d.name.as_str()) {
                missing.push(MissingDependency {
                    from: c.name.clone(),
                    to: d.name.clone(),
                    optional: d.optional,
                });
            }
        }

        let version = match p.parse_version(&c.version) {
            Some(v) => v,
            None => {
                invalid.push(InvalidVersion {
                    name: c.name.clone(),
                    version: c.version.clone(),
                });
                continue;
            }
        };

        if !p.name_filter.is_match(&c.name) {
            continue;
        }

        let mut required_deps = Vec::new();
        let mut optional_deps = Vec::new();
        let mut deps_satisfied = true;
        for d in &c.dependencies {
            let target = by_name
                .get(d.name.as_str())
                .and_then(|t| p.parse_version(&t.version));
            // Missing optional deps are fine: the feature just can't be enabled.
            let ok = match target {
                Some(tv) => p.satisfies(&d.req, tv),
                None => d.optional,
            };
            deps_satisfied &= ok;
            let label = format!("{} {}", d.name, d.req);
            if d.optional {
                optional_deps.push(label);
            } else {
                required_deps.push(label);
            }
        }
        required_deps.sort();
        optional_deps.sort();

        matched.push(CrateSummary {
            name: c.name.clone(),
            version,
            required_deps,
            optional_deps,
            deps_satisfied,
        });
    }

    matched.sort_by(|a, b| a.name.cmp(&b.name));
    missing.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    invalid.sort_by(|a, b| a.name.cmp(&b.name));

    Report {
        registry: catalogue.registry.clone(),
        schema: catalogue.schema,
        filter: filter.to_owned(),
        total_crates: catalogue.crates.len(),
        matched,
        licenses,
        categories,
        missing_dependencies: missing,
        invalid_versions: invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u64, minor: u64, patch: u64) -> Version {
        Version { major, minor, patch }
    }

    #[test]
    fn caret_and_exact_requirements() {
        let p = Patterns::new(".").unwrap();
        assert!(p.satisfies("1.0", v(1, 0, 152)));
        assert!(p.satisfies("=1.0.152", v(1, 0, 152)));
        assert!(!p.satisfies("=1.0.152", v(1, 0, 151)));
        assert!(p.satisfies("0.12", v(0, 12, 3)));
        assert!(!p.satisfies("0.12", v(0, 13, 0)));
        assert!(!p.satisfies("1.0.104", v(1, 0, 103)));
    }

    #[test]
    fn semver_parsing() {
        let p = Patterns::new(".").unwrap();
        assert_eq!(p.parse_version("1.0.152"), Some(v(1, 0, 152)));
        assert_eq!(p.parse_version("1.0.0-alpha.5"), Some(v(1, 0, 0)));
        assert_eq!(p.parse_version("not-a-version"), None);
        assert_eq!(p.parse_version("01.0.0"), None);
    }

    #[test]
    fn license_split() {
        let p = Patterns::new(".").unwrap();
        let ids: Vec<_> = p.licenses("(MIT OR Apache-2.0) AND Unicode-DFS-2016").collect();
        assert_eq!(ids, ["MIT", "Apache-2.0", "Unicode-DFS-2016"]);
    }
}
