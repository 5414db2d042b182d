//! The self-contained HTML page of a simulation report (inline SVG, no
//! external assets).

use super::report::Report;

/// The report as one HTML page.
pub fn render(report: &Report) -> String {
    format!("<!doctype html><title>{}</title>", report.scenario)
}
