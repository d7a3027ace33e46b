//! hello-serde: parse an embedded JSON crate catalogue, filter it with a
//! regex and print a deterministic JSON report.
//!
//! Usage: `hello-serde [NAME_REGEX]` (default: `^(serde|regex)`).
//!
//! The input is compiled into the binary with `include_str!` so the program
//! needs no files, network, clock or randomness at run time: the same binary
//! and the same arguments always produce the same bytes on stdout.

mod model;
mod report;

use std::io::Write;
use std::process::ExitCode;

/// Embedded at compile time; changing the data changes the binary.
const CATALOGUE_JSON: &str = include_str!("../data/catalogue.json");

const DEFAULT_FILTER: &str = "^(serde|regex)";

fn main() -> ExitCode {
    let filter = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_FILTER.to_owned());

    match run(&filter) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello-serde: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(filter: &str) -> Result<(), Box<dyn std::error::Error>> {
    let catalogue: model::Catalogue = serde_json::from_str(CATALOGUE_JSON)?;
    let patterns = report::Patterns::new(filter)?;
    let report = report::build(&catalogue, filter, &patterns);

    // Serialize to a buffer first so a failure can't leave half a document
    // on stdout, then write it in one go with a trailing newline.
    let mut out = serde_json::to_vec_pretty(&report)?;
    out.push(b'\n');
    std::io::stdout().lock().write_all(&out)?;
    Ok(())
}
