//! Input data model: the shape of `data/catalogue.json`.
//!
//! Only `Deserialize` is derived here; the output types live in `report.rs`
//! so the input schema can evolve without changing what we print.

use serde::Deserialize;

/// The whole embedded document.
#[derive(Debug, Deserialize)]
// Reject typos in the embedded document at startup instead of silently
// ignoring them.
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    pub registry: String,
    pub schema: u32,
    pub crates: Vec<CrateEntry>,
}

/// One crate as listed in the catalogue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrateEntry {
    pub name: String,
    pub version: String,
    /// An SPDX-ish expression such as `MIT OR Apache-2.0`.
    pub license: String,
    // Older catalogue entries may omit these, so default to empty.
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
}

/// A dependency edge with its version requirement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub name: String,
    pub req: String,
    #[serde(default)]
    pub optional: bool,
}
