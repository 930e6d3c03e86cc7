//! `berth-check [EXPECTATIONS.json|-]`: runs inside a container and verifies the confinement it
//! was given, printing `ok <name>` / `FAIL <name>: expected X, got Y` per check.
//!
//! Exit status: 0 when every check passes, 1 when any fails, 2 when the expectations cannot be
//! read. The schema is `berth_integration::check::Expectations`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_integration::check::{self, Expectations, Report};

const DEFAULT_PATH: &str = "/check.json";

fn read_expectations(arg: Option<String>) -> Result<Expectations> {
    let path = arg.unwrap_or_else(|| DEFAULT_PATH.to_string());
    let text = if path == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
        text
    } else {
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("parsing {path}"))
}

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("-h" | "--help")) {
        println!("usage: berth-check [EXPECTATIONS.json|-]   (default {DEFAULT_PATH})");
        return ExitCode::SUCCESS;
    }
    let expectations = match read_expectations(arg) {
        Ok(e) => e,
        Err(err) => {
            eprintln!("berth-check: {err:#}");
            return ExitCode::from(2);
        }
    };
    let mut report = Report::new(std::io::stdout().lock());
    check::run(&expectations, &mut report);
    let (passed, failed) = (report.passed(), report.failed());
    drop(report);
    eprintln!("berth-check: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
