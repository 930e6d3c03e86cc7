//! Prints one line per check (`ok <name>` / `FAIL <name>: expected X, got Y`) and counts failures.

use std::fmt::Display;
use std::io::Write;

/// Collects check results, writing each as it happens so output survives a later OOM kill.
pub struct Report<W: Write> {
    out: W,
    passed: usize,
    failed: usize,
}

impl<W: Write> Report<W> {
    pub fn new(out: W) -> Self {
        Report { out, passed: 0, failed: 0 }
    }

    /// Records a pass.
    pub fn ok(&mut self, name: &str) {
        self.passed += 1;
        self.line(format_args!("ok {name}"));
    }

    /// Records a pass with a note, e.g. `ok masked /proc/acpi (absent)`.
    pub fn ok_note(&mut self, name: &str, note: impl Display) {
        self.passed += 1;
        self.line(format_args!("ok {name} ({note})"));
    }

    /// Records a failure.
    pub fn fail(&mut self, name: &str, expected: impl Display, got: impl Display) {
        self.failed += 1;
        self.line(format_args!("FAIL {name}: expected {expected}, got {got}"));
    }

    /// Passes when `expected == got`, otherwise fails showing both with `Debug`.
    pub fn compare<T: PartialEq + std::fmt::Debug>(&mut self, name: &str, expected: &T, got: &T) {
        if expected == got {
            self.ok(name);
        } else {
            self.fail(name, format_args!("{expected:?}"), format_args!("{got:?}"));
        }
    }

    /// Passes when `passed`, otherwise fails with the given expectation and observation.
    pub fn check(&mut self, name: &str, passed: bool, expected: impl Display, got: impl Display) {
        if passed {
            self.ok(name);
        } else {
            self.fail(name, expected, got);
        }
    }

    pub fn failed(&self) -> usize {
        self.failed
    }

    pub fn passed(&self) -> usize {
        self.passed
    }

    /// Consumes the report, returning the writer.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        // Output is best-effort: a closed stdout must not abort the remaining checks.
        let _ = writeln!(self.out, "{args}");
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lines_and_counts() {
        let mut r = Report::new(Vec::new());
        r.ok("uid");
        r.compare("gid", &0, &1);
        r.check("hostname", true, "x", "x");
        r.ok_note("masked /proc/acpi", "absent");
        assert_eq!((r.passed(), r.failed()), (3, 1));
        let text = String::from_utf8(r.into_inner()).unwrap();
        assert_eq!(text, "ok uid\nFAIL gid: expected 0, got 1\nok hostname\nok masked /proc/acpi (absent)\n");
    }
}
