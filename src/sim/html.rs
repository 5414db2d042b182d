//! The self-contained HTML page of a simulation report (inline SVG, no
//! external assets).
//!
//! One page, no script, no fetched resource: a header with the verdict, a
//! map of the network, the delivery matrix, latency per nation pair, the
//! throughput timeline with the events, and the tables behind them. Every
//! string taken from the report is escaped. Attributes are written in
//! single quotes, which `esc` escapes too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::report::{LinkReport, MatrixCell, NationReport, PairLatency, Report};
use super::scenario::{PublisherSpec, SubscriberSpec};
use crate::label::Nation;

/// `write!` to a `String`, which cannot fail.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

/// The report as one HTML page.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(256 * 1024);
    w!(
        out,
        "<!doctype html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n\
         <meta name='viewport' content='width=device-width, initial-scale=1'>\n\
         <title>{} — Entente simulation report</title>\n<style>{CSS}</style>\n</head>\n\
         <body>\n<main>\n",
        esc(&report.scenario)
    );
    header(&mut out, report);
    // What went wrong comes first; the long tables come last.
    findings_section(&mut out, report);
    map_section(&mut out, report);
    matrix_section(&mut out, report);
    latency_section(&mut out, report);
    timeline_section(&mut out, report);
    events_section(&mut out, report);
    traffic_section(&mut out, report);
    links_section(&mut out, report);
    pairs_section(&mut out, report);
    w!(
        out,
        "<footer>Written by <code>entente simulate</code> from <code>report.json</code>. \
         Times are from the start of traffic.</footer>\n</main>\n</body>\n</html>\n"
    );
    out
}

const CSS: &str = "
:root{--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--ink:#1f2328;--muted:#57606a;--line:#d0d7de}
*{box-sizing:border-box}
body{margin:0;background:#eef1f5;color:var(--ink);font:14px/1.45 'Helvetica Neue',Helvetica,Arial,'Liberation Sans','DejaVu Sans',sans-serif}
main{max-width:1380px;margin:0 auto;padding:18px 20px 28px}
section,header.top{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 20px;margin:0 0 16px}
h1{font-size:28px;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:19px;margin:0 0 4px}
h3{font-size:15px;margin:12px 0 6px}
p.hint{margin:0 0 12px;color:var(--muted);max-width:1100px}
.kicker{text-transform:uppercase;font-size:12px;letter-spacing:.08em;color:var(--muted);font-weight:600}
p.desc{font-size:16px;margin:4px 0 10px;max-width:1150px}
dl.meta{display:flex;flex-wrap:wrap;gap:6px 28px;margin:0 0 14px}
dl.meta div{display:flex;gap:6px;align-items:baseline}
dl.meta dt{color:var(--muted);font-size:13px}
dl.meta dd{margin:0}
.override{color:var(--warn);font-weight:600}
.muted{color:var(--muted)}
code{font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:.92em;background:#f3f4f6;padding:1px 4px;border-radius:4px}
.verdict{display:flex;gap:14px;align-items:stretch;flex-wrap:wrap}
.badge{color:#fff;border-radius:10px;padding:8px 26px;display:flex;flex-direction:column;justify-content:center;min-width:190px}
.badge b{font-size:40px;line-height:1.1;letter-spacing:.04em}
.badge span{font-size:12px;opacity:.95}
.badge.pass{background:var(--ok)}.badge.fail{background:var(--bad)}
.card{border:2px solid;border-radius:10px;padding:6px 16px;min-width:190px}
.card .n{font-size:32px;font-weight:700;line-height:1.2;font-variant-numeric:tabular-nums}
.card .what{font-weight:600}.card .why{font-size:12px;color:var(--muted)}
.card.good{border-color:#8fd19e;background:#f0fbf3;color:var(--ok)}
.card.bad{border-color:#ff8182;background:#fff1f0;color:var(--bad)}
.card .why{color:var(--muted)}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.stat{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:8px;padding:6px 14px;min-width:150px}
.stat .n{font-size:20px;font-weight:700;font-variant-numeric:tabular-nums}
.stat .what{font-size:13px;font-weight:600}.stat .why{font-size:12px;color:var(--muted)}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid #eaeef2;text-align:right;vertical-align:top}
th{background:#f6f8fa;font-weight:600;font-size:13px;white-space:nowrap}
.l{text-align:left}
td.wrap{white-space:normal;max-width:520px;text-align:left}
.row{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}
.cols{display:flex;gap:18px;align-items:flex-start}
table.small{font-size:12.5px}
table.small td,table.small th{padding:2px 6px}
table.pairs td,table.pairs th{padding:2px 5px}
.cols.tight{gap:12px}
.tag{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;font-weight:700}
.tag.cut{background:#e5e7ea;color:#cf222e;border:1px solid #cf222e}
.tag.down{background:#fff1f0;color:#cf222e}
.tag.ok{background:#dafbe1;color:#1a7f37}
.tag.no{background:#ffebe9;color:#cf222e}
td.bad,span.bad{color:var(--bad);font-weight:700}
svg text{font-family:'Helvetica Neue',Helvetica,Arial,'Liberation Sans','DejaVu Sans',sans-serif}
svg .halo{paint-order:stroke;stroke:#fff;stroke-width:4px;stroke-linejoin:round}
svg.map .code{font-size:13.5px;font-weight:700;fill:#1f2328}
svg.map .node.cut .code{fill:#6e7781}
svg.map .note{font-size:11px;font-weight:800;fill:#cf222e;letter-spacing:.03em}
svg.map .node circle{fill:#0969da;stroke:#fff;stroke-width:2}
svg.map .node.cut circle{fill:#c3c8cf;stroke:#6e7781;stroke-width:2;stroke-dasharray:3 2}
svg.map .node.down circle{fill:#fff;stroke:#cf222e;stroke-width:2.5}
svg .axis{font-size:12px;fill:#57606a}
svg .grid{stroke:#e6e9ed;stroke-width:1}
svg .small{font-size:11px;fill:#57606a}
table.matrix{font-size:12px;border:1px solid #d0d7de}
table.matrix th{padding:3px 5px;text-align:center}
table.matrix th.o{text-align:left}
table.matrix td{padding:2px 5px;border:1px solid #e6e9ed;min-width:50px;line-height:1.3}
table.matrix td span{display:block}
table.matrix td.diag{background:#f6f8fa}
table.matrix td.short{background:#fff8c5}
table.matrix td.over{background:#ffd8d3}
table.matrix span.short{color:#7d4e00;font-weight:700}
table.matrix span.over{color:#cf222e;font-weight:800}
table.matrix span.zero{color:#afb8c1}
table.matrix span.cutp{background:repeating-linear-gradient(135deg,#d0d5db 0 3px,#f2f4f6 3px 6px);color:#1f2328;font-weight:800;border-radius:2px}
table.matrix th.cutcol{background:#dde1e6;color:#cf222e}
table.matrix th small{display:block;font-size:10px;font-weight:700}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;font-size:12.5px;color:var(--muted);margin:0 0 10px;align-items:center}
.sw{display:inline-block;width:22px;height:14px;border:1px solid #d0d7de;vertical-align:-2px;margin-right:5px;border-radius:2px}
.sw.short{background:#fff8c5}.sw.over{background:#ffd8d3}
.sw.cutp{background:repeating-linear-gradient(135deg,#dde1e6 0 3px,#f2f4f6 3px 6px)}
ol.phases{margin:0;padding-left:22px}
footer{color:var(--muted);font-size:12px;text-align:center}
";

// ---------------------------------------------------------------- strings

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, for HTML text and
/// attributes alike.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `12345678` as `12,345,678`.
fn num(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as milliseconds, two decimals (one from 100 ms).
fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// Microseconds as seconds with milliseconds.
fn secs(us: u64) -> String {
    format!("{:.3} s", us as f64 / 1e6)
}

/// A duration for people: `850 ms`, `12.5 s`, `60 s`, `3 min 20 s`.
fn dur(us: u64) -> String {
    if us == 0 {
        "0 s".to_owned()
    } else if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else if us < 120_000_000 {
        let s = format!("{:.1}", us as f64 / 1e6);
        format!("{} s", s.strip_suffix(".0").unwrap_or(&s))
    } else {
        let s = us / 1_000_000;
        if s.is_multiple_of(60) {
            format!("{} min", s / 60)
        } else {
            format!("{} min {} s", s / 60, s % 60)
        }
    }
}

/// `part` as a percentage of `whole`.
fn pct(part: u64, whole: u64) -> String {
    let share = part as f64 * 100.0 / whole as f64;
    if whole == 0 {
        "–".to_owned()
    } else if part < whole && share >= 99.995 {
        // Not "100.00 %" when some are missing.
        "99.99+ %".to_owned()
    } else {
        format!("{share:.2} %")
    }
}

/// A round step near `raw`: 1, 2 or 5 times a power of ten.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

/// Ticks from 0 to at least `max`, about `target` of them, and the top.
fn ticks(max: f64, target: usize) -> (Vec<f64>, f64) {
    let step = nice_step(max.max(1e-9) / target.max(1) as f64);
    let top = ((max / step).ceil() * step).max(step);
    let n = (top / step).round() as usize;
    ((0..=n).map(|i| i as f64 * step).collect(), top)
}

/// A tick label: no needless decimals.
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else if (v * 10.0 - (v * 10.0).round()).abs() < 1e-6 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The first word of an event's action and its nation, as in `cut USA`.
fn action_nation(action: &str) -> Option<(&str, &str)> {
    let mut words = action.split_whitespace();
    Some((words.next()?, words.next()?))
}

// ----------------------------------------------------------------- header

fn header(out: &mut String, r: &Report) {
    let v = &r.verdict;
    w!(
        out,
        "<header class='top'>\n<div class='kicker'>Entente simulation report</div>\n<h1>{}</h1>\n",
        esc(&r.scenario)
    );
    if !r.description.trim().is_empty() {
        w!(out, "<p class='desc'>{}</p>\n", esc(&r.description));
    }
    let overridden = if r.duration_us != r.scenario_duration_us {
        format!(
            " <span class='override'>(overridden by --duration, the scenario says {})</span>",
            dur(r.scenario_duration_us)
        )
    } else {
        String::new()
    };
    w!(
        out,
        "<dl class='meta'><div><dt>Network</dt><dd><code>{}</code></dd></div>\
         <div><dt>Ran</dt><dd><b>{}</b> of traffic{overridden}</dd></div>\
         <div><dt>Started</dt><dd>{}</dd></div>\
         <div><dt>Wall time</dt><dd>{} <span class='muted'>(set-up and drain included)</span></dd></div>\
         <div><dt>Nations</dt><dd>{}, {} link{}, {} event{}</dd></div></dl>\n",
        esc(&r.network_file),
        dur(r.duration_us),
        esc(&r.started_at),
        dur(r.wall_time_us),
        r.nations.len(),
        r.links.len(),
        if r.links.len() == 1 { "" } else { "s" },
        r.events.len(),
        if r.events.len() == 1 { "" } else { "s" }
    );
    let (class, word, why) = if v.passed {
        ("pass", "PASS", "no leak, no duplicate, no unexplained loss")
    } else {
        (
            "fail",
            "FAIL",
            "a leak, a duplicate, an unexplained loss or a broken audit chain",
        )
    };
    w!(
        out,
        "<div class='verdict'><div class='badge {class}'><b>{word}</b><span>{why}</span></div>\n"
    );
    for (n, what, why) in [
        (v.leaks, "Leaks", "deliveries the policy forbids · must be 0"),
        (v.duplicates, "Duplicates", "delivered more than once · must be 0"),
        (
            v.unexplained_losses,
            "Unexplained losses",
            "lost with no event to explain them · must be 0",
        ),
    ] {
        let class = if n == 0 { "good" } else { "bad" };
        w!(
            out,
            "<div class='card {class}'><div class='n'>{}</div><div class='what'>{what}</div>\
             <div class='why'>{why}</div></div>\n",
            num(n)
        );
    }
    w!(out, "</div>\n<div class='stats'>\n");
    let unack = format!("{} not acknowledged", num(v.unacknowledged));
    let expected_why = "eligible (message, subscriber) pairs".to_owned();
    let delivered_why = format!("{} of expected", pct(v.delivered, v.expected));
    let explained_why = "lost inside an event's window".to_owned();
    let transition_why = "during a change-over, either outcome allowed".to_owned();
    let reordered_why = "arrived after a later one of the same publisher".to_owned();
    let broken = v.audit_logs.iter().filter(|log| !log.intact).count();
    let audit_why = match v.audit_logs.iter().find(|log| !log.intact) {
        Some(log) => format!("BROKEN in {}: {}", log.nation, log.detail),
        None => format!(
            "records in {} nodes' logs, every hash chain intact",
            v.audit_logs.len()
        ),
    };
    let records = v.audit_logs.iter().map(|log| log.records).sum();
    let mut stats = vec![
        (v.published, "Published", "publishes attempted".to_owned()),
        (v.acknowledged, "Acknowledged", unack),
        (v.expected, "Expected deliveries", expected_why),
        (v.delivered, "Delivered", delivered_why),
        (v.explained_losses, "Explained losses", explained_why),
        (v.in_transition, "In transition", transition_why),
        (v.reordered, "Out of order", reordered_why),
    ];
    if !v.audit_logs.is_empty() {
        stats.push((
            records,
            if broken == 0 {
                "Audit records"
            } else {
                "Audit chain broken"
            },
            audit_why,
        ));
    }
    for (n, what, why) in stats {
        w!(
            out,
            "<div class='stat'><div class='what'>{what}</div><div class='n'>{}</div>\
             <div class='why'>{}</div></div>\n",
            num(n),
            esc(&why)
        );
    }
    w!(out, "</div>\n</header>\n");
}

// -------------------------------------------------------------------- map

/// The map's size.
const MAP_W: f64 = 900.0;
const MAP_H: f64 = 620.0;
/// Where nations are drawn (the legend is below).
const MAP_TOP: f64 = 46.0;
const MAP_BOTTOM: f64 = 520.0;
/// Width of the box for a nation far outside the cluster.
const INSET_W: f64 = 150.0;
/// A nation's dot.
const NODE_R: f64 = 8.0;
/// Longitudes outside this are drawn in an inset, not to scale.
const CLUSTER_LON: (f64, f64) = (-30.0, 60.0);

/// A rectangle, `x0 <= x1`, `y0 <= y1`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Rect {
    fn around(x: f64, y: f64, r: f64) -> Rect {
        Rect {
            x0: x - r,
            y0: y - r,
            x1: x + r,
            y1: y + r,
        }
    }

    fn overlaps(&self, other: &Rect) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }

    fn inside(&self, other: &Rect) -> bool {
        self.x0 >= other.x0 && self.x1 <= other.x1 && self.y0 >= other.y0 && self.y1 <= other.y1
    }

    /// Whether the segment `p`–`q` crosses it (Liang–Barsky).
    fn hit_by(&self, p: (f64, f64), q: (f64, f64)) -> bool {
        let (dx, dy) = (q.0 - p.0, q.1 - p.1);
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        for (pp, qq) in [
            (-dx, p.0 - self.x0),
            (dx, self.x1 - p.0),
            (-dy, p.1 - self.y0),
            (dy, self.y1 - p.1),
        ] {
            if pp.abs() < 1e-12 {
                if qq < 0.0 {
                    return false;
                }
            } else {
                let t = qq / pp;
                if pp < 0.0 {
                    t0 = t0.max(t);
                } else {
                    t1 = t1.min(t);
                }
                if t0 > t1 {
                    return false;
                }
            }
        }
        true
    }
}

/// Equirectangular projection: `x = ox + lon·kx·scale`, `y = oy − lat·scale`.
#[derive(Debug, Clone, Copy)]
struct Projection {
    kx: f64,
    scale: f64,
    ox: f64,
    oy: f64,
}

impl Projection {
    fn xy(&self, lat: f64, lon: f64) -> (f64, f64) {
        (self.ox + lon * self.kx * self.scale, self.oy - lat * self.scale)
    }

    fn lat_at(&self, y: f64) -> f64 {
        (self.oy - y) / self.scale
    }

    fn lon_at(&self, x: f64) -> f64 {
        (x - self.ox) / (self.kx * self.scale)
    }
}

/// Where everything on the map goes.
struct MapLayout {
    /// Each nation's dot, by code.
    pos: HashMap<String, (f64, f64)>,
    /// Nations drawn in the west inset, by index in `nations`.
    west: Vec<usize>,
    /// Nations drawn in the east inset.
    east: Vec<usize>,
    /// The main (to scale) area.
    main: Rect,
    projection: Projection,
}

fn layout(nations: &[NationReport]) -> MapLayout {
    let finite = |n: &NationReport| n.lat.is_finite() && n.lon.is_finite();
    let far = |n: &NationReport| !finite(n) || n.lon < CLUSTER_LON.0 || n.lon > CLUSTER_LON.1;
    let mut cluster: Vec<usize> = (0..nations.len()).filter(|&i| !far(&nations[i])).collect();
    let (mut west, mut east) = (Vec::new(), Vec::new());
    if cluster.is_empty() {
        cluster = (0..nations.len()).filter(|&i| finite(&nations[i])).collect();
        west = (0..nations.len()).filter(|&i| !finite(&nations[i])).collect();
    } else {
        for (i, n) in nations.iter().enumerate() {
            if far(n) {
                if finite(n) && n.lon > CLUSTER_LON.1 {
                    east.push(i);
                } else {
                    west.push(i);
                }
            }
        }
    }
    let left = if west.is_empty() { 50.0 } else { INSET_W + 60.0 };
    let right = MAP_W - if east.is_empty() { 50.0 } else { INSET_W + 60.0 };
    let main = Rect {
        x0: left,
        y0: MAP_TOP + 10.0,
        x1: right,
        y1: MAP_BOTTOM - 10.0,
    };
    let mean_lat = if cluster.is_empty() {
        50.0
    } else {
        cluster.iter().map(|&i| nations[i].lat).sum::<f64>() / cluster.len() as f64
    };
    let kx = mean_lat.to_radians().cos().max(0.2);
    let (mut min_lat, mut max_lat, mut min_lon, mut max_lon) = (90.0f64, -90.0f64, 180.0f64, -180.0f64);
    for &i in &cluster {
        min_lat = min_lat.min(nations[i].lat);
        max_lat = max_lat.max(nations[i].lat);
        min_lon = min_lon.min(nations[i].lon);
        max_lon = max_lon.max(nations[i].lon);
    }
    if cluster.is_empty() {
        (min_lat, max_lat, min_lon, max_lon) = (45.0, 55.0, 0.0, 20.0);
    }
    let span_x = ((max_lon - min_lon) * kx).max(2.0);
    let span_y = (max_lat - min_lat).max(2.0);
    let scale = ((main.x1 - main.x0) / span_x).min((main.y1 - main.y0) / span_y);
    let projection = Projection {
        kx,
        scale,
        ox: (main.x0 + main.x1) / 2.0 - (min_lon + max_lon) / 2.0 * kx * scale,
        oy: (main.y0 + main.y1) / 2.0 + (min_lat + max_lat) / 2.0 * scale,
    };
    let mut pos = HashMap::new();
    for &i in &cluster {
        let n = &nations[i];
        pos.insert(n.nation.clone(), projection.xy(n.lat, n.lon));
    }
    for (group, x) in [
        (&west, 30.0 + (INSET_W - 20.0) / 2.0),
        (&east, MAP_W - 30.0 - (INSET_W - 20.0) / 2.0),
    ] {
        // Place them at their latitude, clamped, at least 90 px apart.
        let (lo, hi) = (MAP_TOP + 50.0, MAP_BOTTOM - 70.0);
        let mut ys: Vec<(usize, f64)> = group
            .iter()
            .map(|&i| {
                let y = if finite(&nations[i]) {
                    projection.xy(nations[i].lat, 0.0).1
                } else {
                    hi
                };
                (i, y.clamp(lo, hi))
            })
            .collect();
        ys.sort_by(|a, b| a.1.total_cmp(&b.1));
        for k in 1..ys.len() {
            ys[k].1 = ys[k].1.max(ys[k - 1].1 + 90.0);
        }
        if ys.last().is_some_and(|l| l.1 > hi) {
            let step = if ys.len() > 1 {
                (hi - lo) / (ys.len() - 1) as f64
            } else {
                0.0
            };
            for (k, y) in ys.iter_mut().enumerate() {
                y.1 = lo + step * k as f64;
            }
        }
        for (i, y) in ys {
            pos.insert(nations[i].nation.clone(), (x, y));
        }
    }
    MapLayout {
        pos,
        west,
        east,
        main,
        projection,
    }
}

/// A link's line, end to end.
type Segment = ((f64, f64), (f64, f64));

/// A placed label: where its text starts, its anchor and its extent.
#[derive(Debug, Clone, Copy)]
struct LabelSpot {
    x: f64,
    y: f64,
    anchor: &'static str,
    rect: Rect,
}

/// One label to place: the dot, the code, and a second line (`CUT OUT`).
struct LabelWant<'a> {
    at: (f64, f64),
    code: &'a str,
    note: Option<&'a str>,
}

const CODE_CHAR_W: f64 = 9.2;
const NOTE_CHAR_W: f64 = 7.9;

/// Puts each label beside its dot where it hides no dot, no other label
/// and as few links as possible, crowded dots first.
fn place_labels(
    wants: &[LabelWant],
    segments: &[Segment],
    obstacles: &[Rect],
    bounds: Rect,
) -> Vec<LabelSpot> {
    const CANDIDATES: [(f64, f64, &str); 8] = [
        (13.0, 5.0, "start"),
        (-13.0, 5.0, "end"),
        (0.0, -14.0, "middle"),
        (0.0, 25.0, "middle"),
        (10.0, -11.0, "start"),
        (10.0, 21.0, "start"),
        (-10.0, -11.0, "end"),
        (-10.0, 21.0, "end"),
    ];
    let dots: Vec<Rect> = wants
        .iter()
        .map(|w| Rect::around(w.at.0, w.at.1, NODE_R + 3.0))
        .collect();
    let mut order: Vec<usize> = (0..wants.len()).collect();
    let crowd = |i: usize| {
        wants
            .iter()
            .filter(|o| {
                let (dx, dy) = (o.at.0 - wants[i].at.0, o.at.1 - wants[i].at.1);
                dx * dx + dy * dy < 80.0 * 80.0
            })
            .count()
    };
    order.sort_by_key(|&i| std::cmp::Reverse(crowd(i)));
    let mut placed: Vec<Option<LabelSpot>> = vec![None; wants.len()];
    for i in order {
        let want = &wants[i];
        let code_w = want.code.chars().count() as f64 * CODE_CHAR_W;
        let note_w = want.note.map_or(0.0, |n| n.chars().count() as f64 * NOTE_CHAR_W);
        let width = code_w.max(note_w);
        let extra = if want.note.is_some() { 13.0 } else { 0.0 };
        let mut best: Option<(f64, LabelSpot)> = None;
        for (k, &(dx, dy, anchor)) in CANDIDATES.iter().enumerate() {
            let dy = if dy < 0.0 { dy - extra } else { dy };
            let (x, y) = (want.at.0 + dx, want.at.1 + dy);
            let (x0, x1) = match anchor {
                "start" => (x, x + width),
                "end" => (x - width, x),
                _ => (x - width / 2.0, x + width / 2.0),
            };
            let rect = Rect {
                x0,
                y0: y - 11.0,
                x1,
                y1: y + 3.0 + extra,
            };
            let mut cost = k as f64 * 2.0;
            for (j, dot) in dots.iter().enumerate() {
                if rect.overlaps(dot) {
                    cost += if j == i { 5000.0 } else { 1000.0 };
                }
            }
            for spot in placed.iter().flatten() {
                if rect.overlaps(&spot.rect) {
                    cost += 1000.0;
                }
            }
            cost += 500.0 * obstacles.iter().filter(|o| rect.overlaps(o)).count() as f64;
            if !rect.inside(&bounds) {
                cost += 1000.0;
            }
            let shrunk = Rect {
                x0: rect.x0 + 1.0,
                y0: rect.y0 + 1.0,
                x1: rect.x1 - 1.0,
                y1: rect.y1 - 1.0,
            };
            cost += 25.0 * segments.iter().filter(|s| shrunk.hit_by(s.0, s.1)).count() as f64;
            if best.as_ref().is_none_or(|b| cost < b.0) {
                best = Some((cost, LabelSpot { x, y, anchor, rect }));
            }
        }
        placed[i] = best.map(|b| b.1);
    }
    placed.into_iter().map(|p| p.expect("a candidate")).collect()
}

/// The link colour scale, `t` from 0 (fast) to 1 (slow).
fn ramp(t: f64) -> String {
    const STOPS: [(f64, [f64; 3]); 4] = [
        (0.0, [94.0, 201.0, 98.0]),
        (0.35, [33.0, 145.0, 140.0]),
        (0.7, [49.0, 104.0, 142.0]),
        (1.0, [68.0, 1.0, 84.0]),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let k = STOPS
        .iter()
        .rposition(|s| s.0 <= t)
        .unwrap_or(0)
        .min(STOPS.len() - 2);
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    let f = (t - a.0) / (b.0 - a.0);
    let c: Vec<u8> = (0..3)
        .map(|i| (a.1[i] + (b.1[i] - a.1[i]) * f).round().clamp(0.0, 255.0) as u8)
        .collect();
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// How a link is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LinkLook {
    Severed,
    Down,
    Measured(u64),
    Idle,
}

fn link_look(l: &LinkReport, cut: &HashSet<&str>) -> LinkLook {
    if l.severed || cut.contains(l.a.as_str()) || cut.contains(l.b.as_str()) {
        LinkLook::Severed
    } else if !l.up_at_end {
        LinkLook::Down
    } else if let Some(p50) = l.measured_p50_us {
        LinkLook::Measured(p50)
    } else {
        LinkLook::Idle
    }
}

fn map_section(out: &mut String, r: &Report) {
    w!(
        out,
        "<section id='map'>\n<h2>Network map</h2>\n<p class='hint'>Each nation is drawn at its \
         capital; each line is an emulated link, coloured by the median latency measured between \
         its two ends. A nation cut out of the network is greyed out and its links are drawn \
         severed.</p>\n<div class='row'>\n"
    );
    map_svg(out, r);
    nations_table(out, r);
    w!(out, "</div>\n</section>\n");
}

fn map_svg(out: &mut String, r: &Report) {
    let lay = layout(&r.nations);
    let cut: HashSet<&str> = r
        .nations
        .iter()
        .filter(|n| n.cut_at_end)
        .map(|n| n.nation.as_str())
        .collect();
    let down: HashSet<&str> = r
        .nations
        .iter()
        .filter(|n| n.down_at_end && !n.cut_at_end)
        .map(|n| n.nation.as_str())
        .collect();
    w!(
        out,
        "<svg class='map' viewBox='0 0 {MAP_W} {MAP_H}' width='{MAP_W}' height='{MAP_H}' \
         role='img' aria-label='Map of the network'>\n\
         <defs><linearGradient id='map-ramp' x1='0' x2='1' y1='0' y2='0'>"
    );
    for k in 0..=10 {
        let t = k as f64 / 10.0;
        w!(out, "<stop offset='{t:.1}' stop-color='{}'/>", ramp(t));
    }
    w!(
        out,
        "</linearGradient></defs>\n<rect x='0' y='0' width='{MAP_W}' height='{MAP_H}' fill='#fbfcfd' rx='8'/>\n"
    );
    graticule(out, &lay);
    insets(out, r, &lay);

    // Links.
    let measured: Vec<u64> = r
        .links
        .iter()
        .filter_map(|l| match link_look(l, &cut) {
            LinkLook::Measured(v) => Some(v),
            _ => None,
        })
        .collect();
    let lo = measured.iter().copied().min().unwrap_or(0) as f64;
    let hi = (measured.iter().copied().max().unwrap_or(1000) as f64).max(lo + 1000.0);
    let mut segments = Vec::new();
    let mut marks = String::new();
    let mut sever_marks: Vec<(f64, f64)> = Vec::new();
    let mut obstacles: Vec<Rect> = Vec::new();
    w!(out, "<g class='links'>\n");
    for l in &r.links {
        let (Some(&a), Some(&b)) = (lay.pos.get(&l.a), lay.pos.get(&l.b)) else {
            continue;
        };
        segments.push((a, b));
        let look = link_look(l, &cut);
        let title = format!(
            "{} – {}: emulated {} ms ± {} ms, loss {:.2} %, {} Mbit/s; measured p50 {}; \
             {} datagrams, {} dropped{}",
            l.a,
            l.b,
            ms(l.delay_us),
            ms(l.jitter_us),
            l.loss * 100.0,
            l.bandwidth_mbps,
            l.measured_p50_us
                .map_or("none".to_owned(), |v| format!("{} ms", ms(v))),
            num(l.datagrams),
            num(l.dropped),
            match look {
                LinkLook::Severed => "; severed (an end is cut out)",
                LinkLook::Down => "; down at the end",
                _ => "",
            }
        );
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt().max(1.0);
        let at = |t: f64| (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        match look {
            LinkLook::Severed => {
                // The ✕ goes in the middle, or as near it as it can
                // without covering another ✕ or a dot.
                let t = [0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74, 0.18, 0.82]
                    .into_iter()
                    .find(|&t| {
                        let m = at(t);
                        let clear =
                            |p: &(f64, f64), d: f64| (p.0 - m.0).powi(2) + (p.1 - m.1).powi(2) >= d * d;
                        sever_marks.iter().all(|p| clear(p, 24.0)) && lay.pos.values().all(|p| clear(p, 22.0))
                    })
                    .unwrap_or(0.5);
                sever_marks.push(at(t));
                let gap = 11.0 / len;
                let (p, q) = (at((t - gap).max(0.0)), at((t + gap).min(1.0)));
                w!(
                    out,
                    "<g class='link severed'><title>{}</title>\
                     <line x1='{:.1}' y1='{:.1}' x2='{:.1}' y2='{:.1}' stroke='#cf222e' stroke-width='2.5' stroke-dasharray='7 5'/>\
                     <line x1='{:.1}' y1='{:.1}' x2='{:.1}' y2='{:.1}' stroke='#cf222e' stroke-width='2.5' stroke-dasharray='7 5'/></g>\n",
                    esc(&title),
                    a.0,
                    a.1,
                    p.0,
                    p.1,
                    q.0,
                    q.1,
                    b.0,
                    b.1
                );
                let m = at(t);
                w!(
                    marks,
                    "<g class='sever'><circle cx='{:.1}' cy='{:.1}' r='8' fill='#fff' stroke='#cf222e' stroke-width='1.5'/>\
                     <path d='M{:.1},{:.1}l8,8m0,-8l-8,8' stroke='#cf222e' stroke-width='2.6' stroke-linecap='round'/></g>\n",
                    m.0,
                    m.1,
                    m.0 - 4.0,
                    m.1 - 4.0
                );
            }
            LinkLook::Down => {
                w!(
                    out,
                    "<g class='link down'><title>{}</title><line x1='{:.1}' y1='{:.1}' x2='{:.1}' y2='{:.1}' \
                     stroke='#57606a' stroke-width='2.5' stroke-dasharray='5 5'/></g>\n",
                    esc(&title),
                    a.0,
                    a.1,
                    b.0,
                    b.1
                );
                let m = at(0.5);
                obstacles.push(Rect {
                    x0: m.0 - 16.0,
                    y0: m.1 - 8.0,
                    x1: m.0 + 16.0,
                    y1: m.1 + 6.0,
                });
                w!(
                    marks,
                    "<text class='halo' x='{:.1}' y='{:.1}' text-anchor='middle' font-size='11' \
                     font-weight='700' fill='#57606a'>down</text>\n",
                    m.0,
                    m.1 + 4.0
                );
            }
            LinkLook::Measured(v) => {
                let colour = ramp((v as f64 - lo) / (hi - lo));
                w!(
                    out,
                    "<g class='link'><title>{}</title><line x1='{:.1}' y1='{:.1}' x2='{:.1}' y2='{:.1}' \
                     stroke='{colour}' stroke-width='3.5' stroke-linecap='round'/></g>\n",
                    esc(&title),
                    a.0,
                    a.1,
                    b.0,
                    b.1
                );
            }
            LinkLook::Idle => {
                w!(
                    out,
                    "<g class='link idle'><title>{}</title><line x1='{:.1}' y1='{:.1}' x2='{:.1}' y2='{:.1}' \
                     stroke='#8c959f' stroke-width='2' stroke-dasharray='2 4' stroke-linecap='round'/></g>\n",
                    esc(&title),
                    a.0,
                    a.1,
                    b.0,
                    b.1
                );
            }
        }
    }
    w!(out, "</g>\n{marks}");

    // Nodes and labels.
    let placed_nations: Vec<&NationReport> = r
        .nations
        .iter()
        .filter(|n| lay.pos.contains_key(&n.nation))
        .collect();
    let wants: Vec<LabelWant> = placed_nations
        .iter()
        .map(|n| LabelWant {
            at: lay.pos[&n.nation],
            code: &n.nation,
            note: if cut.contains(n.nation.as_str()) {
                Some("CUT OUT")
            } else if down.contains(n.nation.as_str()) {
                Some("DOWN")
            } else {
                None
            },
        })
        .collect();
    let bounds = Rect {
        x0: 4.0,
        y0: 4.0,
        x1: MAP_W - 4.0,
        y1: MAP_BOTTOM + 14.0,
    };
    obstacles.extend(sever_marks.iter().map(|m| Rect::around(m.0, m.1, 9.0)));
    let spots = place_labels(&wants, &segments, &obstacles, bounds);
    w!(out, "<g class='nodes'>\n");
    for ((n, want), spot) in placed_nations.iter().zip(&wants).zip(&spots) {
        let class = if cut.contains(n.nation.as_str()) {
            "node cut"
        } else if down.contains(n.nation.as_str()) {
            "node down"
        } else {
            "node"
        };
        let (x, y) = want.at;
        w!(
            out,
            "<g class='{class}'><title>{} — {}: published {}, received {}{}</title>\
             <circle cx='{x:.1}' cy='{y:.1}' r='{NODE_R}'/>",
            esc(&n.nation),
            esc(&n.capital),
            num(n.published),
            num(n.received),
            if n.cut_at_end {
                " · cut out at the end"
            } else if n.down_at_end {
                " · down at the end"
            } else {
                ""
            }
        );
        if class == "node down" {
            w!(
                out,
                "<path d='M{:.1},{:.1}l10,10m0,-10l-10,10' stroke='#cf222e' stroke-width='2.2'/>",
                x - 5.0,
                y - 5.0
            );
        }
        w!(
            out,
            "<text class='code halo' x='{:.1}' y='{:.1}' text-anchor='{}'>{}</text>",
            spot.x,
            spot.y,
            spot.anchor,
            esc(&n.nation)
        );
        if let Some(note) = want.note {
            w!(
                out,
                "<text class='note halo' x='{:.1}' y='{:.1}' text-anchor='{}'>{note}</text>",
                spot.x,
                spot.y + 13.0,
                spot.anchor
            );
        }
        w!(out, "</g>\n");
    }
    w!(out, "</g>\n");
    map_legend(out, &measured, lo, hi);
    w!(out, "</svg>\n");
}

/// Faint parallels every 5° and meridians every 10° over the main area.
fn graticule(out: &mut String, lay: &MapLayout) {
    let m = lay.main;
    let p = lay.projection;
    let (x0, x1, y0, y1) = (m.x0 - 30.0, m.x1 + 30.0, MAP_TOP - 10.0, MAP_BOTTOM + 10.0);
    w!(out, "<g class='graticule'>\n");
    let (lat_lo, lat_hi) = (p.lat_at(y1), p.lat_at(y0));
    let mut lat = (lat_lo / 5.0).ceil() * 5.0;
    while lat <= lat_hi {
        let y = p.xy(lat, 0.0).1;
        w!(
            out,
            "<line class='grid' x1='{x0:.1}' y1='{y:.1}' x2='{x1:.1}' y2='{y:.1}'/>\
             <text class='small' x='{:.1}' y='{:.1}' text-anchor='end' opacity='.7'>{lat:.0}°N</text>\n",
            x1 - 2.0,
            y - 3.0
        );
        lat += 5.0;
    }
    let (lon_lo, lon_hi) = (p.lon_at(x0), p.lon_at(x1));
    let mut lon = (lon_lo / 10.0).ceil() * 10.0;
    while lon <= lon_hi {
        let x = p.xy(0.0, lon).0;
        let label = if lon.abs() < 0.5 {
            "0°".to_owned()
        } else if lon < 0.0 {
            format!("{:.0}°W", -lon)
        } else {
            format!("{lon:.0}°E")
        };
        w!(
            out,
            "<line class='grid' x1='{x:.1}' y1='{y0:.1}' x2='{x:.1}' y2='{y1:.1}'/>\
             <text class='small' x='{x:.1}' y='{:.1}' text-anchor='middle' opacity='.7'>{label}</text>\n",
            y0 - 4.0
        );
        lon += 10.0;
    }
    w!(out, "</g>\n");
}

/// The boxes for nations far from the others, not to scale.
fn insets(out: &mut String, r: &Report, lay: &MapLayout) {
    for (group, x0, side) in [
        (&lay.west, 14.0, "west"),
        (&lay.east, MAP_W - 14.0 - INSET_W, "east"),
    ] {
        if group.is_empty() {
            continue;
        }
        let names: Vec<String> = group.iter().map(|&i| esc(&r.nations[i].capital)).collect();
        let cx = x0 + INSET_W / 2.0;
        let heading = if side == "west" {
            "across the Atlantic"
        } else {
            "far to the east"
        };
        w!(
            out,
            "<g class='inset {side}'><rect x='{x0:.1}' y='{:.1}' width='{INSET_W}' height='{:.1}' rx='10' \
             fill='#eaf2fb' stroke='#9cbbe0' stroke-dasharray='6 4'/>\
             <text class='small' x='{cx:.1}' y='{:.1}' text-anchor='middle' font-style='italic'>{heading}</text>",
            MAP_TOP - 12.0,
            MAP_BOTTOM - MAP_TOP + 28.0,
            MAP_TOP + 6.0
        );
        let mut y = MAP_BOTTOM - 14.0 - 14.0 * names.len() as f64;
        for name in &names {
            w!(
                out,
                "<text class='small' x='{cx:.1}' y='{y:.1}' text-anchor='middle' font-weight='700'>{name}</text>"
            );
            y += 14.0;
        }
        w!(
            out,
            "<text class='small' x='{cx:.1}' y='{y:.1}' text-anchor='middle'>(not to scale)</text></g>\n"
        );
    }
}

fn map_legend(out: &mut String, measured: &[u64], lo: f64, hi: f64) {
    let y = MAP_BOTTOM + 40.0;
    w!(
        out,
        "<g class='legend'><line x1='14' y1='{:.1}' x2='{:.1}' y2='{:.1}' stroke='#d0d7de'/>\n",
        MAP_BOTTOM + 22.0,
        MAP_W - 14.0,
        MAP_BOTTOM + 22.0
    );
    if measured.is_empty() {
        w!(
            out,
            "<text class='axis' x='20' y='{:.1}'>No link carried measured traffic.</text>\n",
            y + 8.0
        );
    } else {
        w!(
            out,
            "<text class='axis' x='20' y='{:.1}' font-weight='600' fill='#1f2328'>Link colour: measured p50 latency</text>\
             <rect x='250' y='{:.1}' width='260' height='12' rx='3' fill='url(#map-ramp)'/>\n",
            y + 8.0,
            y - 2.0
        );
        for k in 0..=4 {
            let f = k as f64 / 4.0;
            let v = lo + (hi - lo) * f;
            let x = 250.0 + 260.0 * f;
            w!(
                out,
                "<line x1='{x:.1}' y1='{:.1}' x2='{x:.1}' y2='{:.1}' stroke='#57606a'/>\
                 <text class='axis' x='{x:.1}' y='{:.1}' text-anchor='middle'>{} ms</text>\n",
                y + 10.0,
                y + 14.0,
                y + 26.0,
                ms(v.round() as u64)
            );
        }
    }
    let y2 = y + 56.0;
    let items: [(&str, String); 5] = [
        (
            "no traffic measured",
            "<line x1='0' y1='0' x2='34' y2='0' stroke='#8c959f' stroke-width='2' stroke-dasharray='2 4'/>".to_owned(),
        ),
        (
            "link down",
            "<line x1='0' y1='0' x2='34' y2='0' stroke='#57606a' stroke-width='2.5' stroke-dasharray='5 5'/>".to_owned(),
        ),
        (
            "severed (cut out)",
            "<line x1='0' y1='0' x2='34' y2='0' stroke='#cf222e' stroke-width='2.5' stroke-dasharray='7 5'/>\
             <circle cx='17' cy='0' r='7' fill='#fff' stroke='#cf222e' stroke-width='1.5'/>\
             <path d='M13.5,-3.5l7,7m0,-7l-7,7' stroke='#cf222e' stroke-width='2.4' stroke-linecap='round'/>"
                .to_owned(),
        ),
        (
            "nation cut out",
            "<circle cx='17' cy='0' r='8' fill='#c3c8cf' stroke='#6e7781' stroke-width='2' stroke-dasharray='3 2'/>".to_owned(),
        ),
        (
            "node down",
            "<circle cx='17' cy='0' r='8' fill='#fff' stroke='#cf222e' stroke-width='2.5'/>\
             <path d='M12,-5l10,10m0,-10l-10,10' stroke='#cf222e' stroke-width='2.2'/>"
                .to_owned(),
        ),
    ];
    let mut x = 20.0;
    for (label, sample) in items {
        w!(
            out,
            "<g transform='translate({x:.1},{:.1})'>{sample}</g>\
             <text class='axis' x='{:.1}' y='{:.1}'>{label}</text>\n",
            y2 - 4.0,
            x + 42.0,
            y2
        );
        x += 52.0 + label.len() as f64 * 6.6 + 22.0;
    }
    w!(out, "</g>\n");
}

fn nations_table(out: &mut String, r: &Report) {
    w!(
        out,
        "<div><h3>Nations</h3><table class='small nations'><tr><th class='l'>Nation</th>\
         <th class='l'>Capital</th><th>Published</th><th>Received</th><th class='l'>At the end</th></tr>\n"
    );
    for n in &r.nations {
        let mut state = Vec::new();
        if n.cut_at_end {
            state.push("<span class='tag cut'>CUT OUT</span>".to_owned());
        }
        if n.down_at_end {
            state.push("<span class='tag down'>DOWN</span>".to_owned());
        }
        if n.received_while_cut > 0 {
            state.push(format!(
                "<span class='bad'>{} received while cut</span>",
                num(n.received_while_cut)
            ));
        }
        if state.is_empty() {
            state.push("<span class='muted'>up</span>".to_owned());
        }
        w!(
            out,
            "<tr><td class='l'><b>{}</b></td><td class='l'>{}</td><td>{}</td><td>{}</td><td class='l'>{}</td></tr>\n",
            esc(&n.nation),
            esc(&n.capital),
            num(n.published),
            num(n.received),
            state.join(" ")
        );
    }
    w!(out, "</table></div>\n");
}

// ----------------------------------------------------------------- matrix

/// Nation codes in the report's order, then any others sorted.
fn ordered<'a>(r: &'a Report, codes: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let rank: HashMap<&str, usize> = r
        .nations
        .iter()
        .enumerate()
        .map(|(i, n)| (n.nation.as_str(), i))
        .collect();
    let mut out: Vec<&str> = codes.collect::<HashSet<_>>().into_iter().collect();
    out.sort_by(|a, b| {
        let (ra, rb) = (rank.get(a).copied(), rank.get(b).copied());
        match (ra, rb) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.cmp(b),
        }
    });
    out
}

/// For each nation a successful `cut` event cut out: the times it was cut
/// (from the cut being due to its `restore` having applied, if any).
fn cut_windows(r: &Report) -> HashMap<String, Vec<(u64, u64)>> {
    let mut windows: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut events: Vec<_> = r.events.iter().filter(|e| e.ok).collect();
    events.sort_by_key(|e| e.at_us);
    for e in events {
        match action_nation(&e.action) {
            Some(("cut", nation)) => {
                let list = windows.entry(nation.to_owned()).or_default();
                if list.last().is_none_or(|w| w.1 != u64::MAX) {
                    list.push((e.at_us.min(e.started_us), u64::MAX));
                }
            }
            Some(("restore", nation)) => {
                if let Some(last) = windows.get_mut(nation).and_then(|l| l.last_mut()) {
                    if last.1 == u64::MAX {
                        last.1 = e.applied_us.max(e.at_us);
                    }
                }
            }
            _ => {}
        }
    }
    windows
}

fn matrix_section(out: &mut String, r: &Report) {
    w!(
        out,
        "<section id='matrix'>\n<h2>Deliveries: origin × receiving nation</h2>\n<p class='hint'>\
         Messages published in the row's nation and delivered to subscribers in the column's \
         nation, counted per (message, subscriber). Hover a cell for what the oracle expected.</p>\n"
    );
    if r.matrix.is_empty() {
        w!(
            out,
            "<p class='muted'>No deliveries were recorded.</p>\n</section>\n"
        );
        return;
    }
    let rows = ordered(r, r.matrix.iter().map(|c| c.origin.as_str()));
    let cols = ordered(r, r.matrix.iter().map(|c| c.receiver.as_str()));
    let cells: HashMap<(&str, &str), &MatrixCell> = r
        .matrix
        .iter()
        .map(|c| ((c.origin.as_str(), c.receiver.as_str()), c))
        .collect();
    let phase_count = r
        .phases
        .len()
        .max(r.matrix.iter().map(|c| c.phases.len()).max().unwrap_or(0))
        .max(1);
    let windows = cut_windows(r);
    let cut_nations: HashSet<&str> = r
        .nations
        .iter()
        .filter(|n| n.cut_at_end)
        .map(|n| n.nation.as_str())
        .chain(windows.keys().map(String::as_str))
        .collect();
    // Whether phase `k` lies wholly inside a time `nation` was cut out.
    let after_cut = |nation: &str, k: usize| -> bool {
        let Some(phase) = r.phases.get(k) else {
            return false;
        };
        windows.get(nation).is_some_and(|ws| {
            ws.iter()
                .any(|&(from, to)| phase.from_us >= from && phase.to_us <= to)
        })
    };

    w!(
        out,
        "<div class='legend'><span><b>Each cell, top to bottom:</b></span><ol class='phases'>"
    );
    for k in 0..phase_count {
        match r.phases.get(k) {
            Some(p) => w!(
                out,
                "<li><b>{}</b> <span class='muted'>({} – {})</span></li>",
                esc(&p.label),
                dur(p.from_us),
                dur(p.to_us)
            ),
            None => w!(out, "<li>phase {}</li>", k + 1),
        }
    }
    w!(
        out,
        "</ol><span><span class='sw short'></span>fewer delivered than expected</span>\
         <span><span class='sw over'></span>more delivered than expected</span>"
    );
    if !windows.is_empty() {
        w!(
            out,
            "<span><span class='sw cutp'></span>after the row's or column's nation was cut out \
             (must be 0)</span>"
        );
    }
    w!(
        out,
        "<span><span style='color:#afb8c1;font-weight:700'>0</span> nothing expected, nothing \
         delivered</span></div>\n"
    );

    w!(out, "<table class='matrix'><tr><th class='o'>from ↓ to →</th>");
    for c in &cols {
        if cut_nations.contains(c) {
            w!(out, "<th class='cutcol'>{}<small>CUT</small></th>", esc(c));
        } else {
            w!(out, "<th>{}</th>", esc(c));
        }
    }
    w!(out, "<th>total</th></tr>\n");
    for o in &rows {
        if cut_nations.contains(o) {
            w!(out, "<tr><th class='o cutcol'>{}<small>CUT</small></th>", esc(o));
        } else {
            w!(out, "<tr><th class='o'>{}</th>", esc(o));
        }
        let mut totals = vec![(0u64, 0u64); phase_count];
        for c in &cols {
            let Some(cell) = cells.get(&(*o, *c)) else {
                w!(out, "<td class='none'><span class='zero'>–</span></td>");
                continue;
            };
            let mut spans = String::new();
            let (mut short, mut over) = (false, false);
            let mut title = format!("{} → {}", esc(o), esc(c));
            for (k, total) in totals.iter_mut().enumerate() {
                let label = r
                    .phases
                    .get(k)
                    .map_or(format!("phase {}", k + 1), |p| p.label.clone());
                let Some(pc) = cell.phases.get(k) else {
                    w!(spans, "<span class='zero'>–</span>");
                    continue;
                };
                total.0 += pc.delivered;
                total.1 += pc.expected;
                let mut class = Vec::new();
                if pc.delivered > pc.expected {
                    over = true;
                    class.push("over");
                } else if pc.delivered < pc.expected {
                    short = true;
                    class.push("short");
                } else if pc.expected == 0 {
                    class.push("zero");
                }
                if o != c && (after_cut(o, k) || after_cut(c, k)) {
                    class.push("cutp");
                }
                w!(
                    spans,
                    "<span class='{}'>{}</span>",
                    class.join(" "),
                    num(pc.delivered)
                );
                w!(
                    title,
                    "&#10;{}: {} delivered of {} expected",
                    esc(&label),
                    num(pc.delivered),
                    num(pc.expected)
                );
            }
            let class = if over {
                "over"
            } else if short {
                "short"
            } else if o == c {
                "diag"
            } else {
                ""
            };
            w!(out, "<td class='{class}' title='{title}'>{spans}</td>");
        }
        w!(out, "<td class='total'>");
        for (d, e) in totals {
            let class = if d > e {
                "over"
            } else if d < e {
                "short"
            } else {
                ""
            };
            w!(
                out,
                "<span class='{class}' title='{} of {} expected'>{}</span>",
                num(d),
                num(e),
                num(d)
            );
        }
        w!(out, "</td></tr>\n");
    }
    w!(out, "</table>\n</section>\n");
}

// ---------------------------------------------------------------- latency

fn latency_section(out: &mut String, r: &Report) {
    w!(
        out,
        "<section id='latency'>\n<h2>Latency per nation pair</h2>\n<p class='hint'>From publish to \
         delivery, per origin and receiving nation, against the emulated delay of the fastest path \
         between them (the sum of its links' delays). No delivery can be faster than its path: every \
         point lies above the dashed line.</p>\n"
    );
    if r.pairs.is_empty() {
        w!(
            out,
            "<p class='muted'>No delivery was measured.</p>\n</section>\n"
        );
        return;
    }
    let mut pairs: Vec<&PairLatency> = r.pairs.iter().collect();
    pairs.sort_by(|a, b| (&a.origin, &a.receiver).cmp(&(&b.origin, &b.receiver)));
    w!(out, "<div class='row'>\n");
    latency_chart(out, &pairs);
    // The slowest pairs, to start from.
    let mut slow = pairs.clone();
    slow.sort_by_key(|p| std::cmp::Reverse(p.p99_us));
    w!(
        out,
        "<div><h3>Highest p99</h3><table class='small'><tr><th class='l'>pair</th><th>p50</th>\
         <th>p99</th><th>path</th><th>hops</th></tr>\n"
    );
    for p in slow.iter().take(12) {
        w!(
            out,
            "<tr><td class='l'>{} → {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&p.origin),
            esc(&p.receiver),
            ms(p.p50_us),
            ms(p.p99_us),
            ms(p.path_delay_us),
            p.path_hops
        );
    }
    w!(
        out,
        "</table><p class='muted' style='font-size:12px'>All times in ms; every pair is in \
         <a href='#pairs'>the table at the end</a>.</p></div>\n</div>\n</section>\n"
    );
}

/// Every pair's latency, in as many columns as fit.
fn pairs_section(out: &mut String, r: &Report) {
    if r.pairs.is_empty() {
        return;
    }
    let mut pairs: Vec<&PairLatency> = r.pairs.iter().collect();
    pairs.sort_by(|a, b| (&a.origin, &a.receiver).cmp(&(&b.origin, &b.receiver)));
    w!(
        out,
        "<section id='pairs'>\n<h2>Latency, all {} pairs</h2>\n<p class='hint'>In ms, sorted by \
         origin, then receiver; <b>path</b> is the emulated delay of the fastest path and \
         <b>hops</b> its links. A minimum below the path delay (red) would be a clock or \
         accounting error.</p>\n",
        pairs.len()
    );
    let columns = if pairs.len() > 60 {
        3
    } else if pairs.len() > 20 {
        2
    } else {
        1
    };
    let per = pairs.len().div_ceil(columns);
    w!(out, "<div class='cols tight'>\n");
    for chunk in pairs.chunks(per.max(1)) {
        w!(
            out,
            "<table class='small pairs'><tr><th class='l'>pair</th><th>n</th>\
             <th>min</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>path</th><th>hops</th></tr>\n"
        );
        for p in chunk {
            let impossible = p.min_us < p.path_delay_us;
            w!(
                out,
                "<tr><td class='l'>{} → {}</td><td>{}</td><td{}>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&p.origin),
                esc(&p.receiver),
                num(p.count),
                if impossible {
                    " class='bad' title='faster than the path delay: a clock or accounting error'"
                } else {
                    ""
                },
                ms(p.min_us),
                ms(p.p50_us),
                ms(p.p90_us),
                ms(p.p99_us),
                ms(p.max_us),
                ms(p.path_delay_us),
                p.path_hops
            );
        }
        w!(out, "</table>\n");
    }
    w!(out, "</div>\n</section>\n");
}

/// Colour for a path's number of hops.
fn hop_colour(hops: u32) -> &'static str {
    match hops {
        0 => "#8c959f",
        1 => "#0969da",
        2 => "#d4760b",
        _ => "#8250df",
    }
}

fn latency_chart(out: &mut String, pairs: &[&PairLatency]) {
    const W: f64 = 900.0;
    const H: f64 = 470.0;
    const L: f64 = 64.0;
    const R: f64 = 24.0;
    const T: f64 = 20.0;
    const B: f64 = 78.0;
    let max_path = pairs.iter().map(|p| p.path_delay_us).max().unwrap_or(0) as f64 / 1000.0;
    let max_p50 = pairs.iter().map(|p| p.p50_us).max().unwrap_or(0) as f64 / 1000.0;
    let max_p99 = pairs.iter().map(|p| p.p99_us).max().unwrap_or(0) as f64 / 1000.0;
    // A few very slow deliveries must not squash everything else.
    let base = max_p50.max(max_path).max(0.5);
    let y_want = max_p99.min(base * 2.5).max(base);
    let (xt, x_top) = ticks((max_path * 1.05).max(1.0), 8);
    let (yt, y_top) = ticks(y_want * 1.05, 6);
    let sx = |v: f64| L + v / x_top * (W - L - R);
    let sy = |v: f64| H - B - v.min(y_top) / y_top * (H - T - B);
    w!(
        out,
        "<svg class='latency' viewBox='0 0 {W} {H}' width='{W}' height='{H}' role='img' \
         aria-label='Latency against path delay'>\n<rect x='0' y='0' width='{W}' height='{H}' fill='#fff'/>\n"
    );
    for v in &xt {
        let x = sx(*v);
        w!(
            out,
            "<line class='grid' x1='{x:.1}' y1='{T}' x2='{x:.1}' y2='{:.1}'/>\
             <text class='axis' x='{x:.1}' y='{:.1}' text-anchor='middle'>{}</text>\n",
            H - B,
            H - B + 16.0,
            tick(*v)
        );
    }
    for v in &yt {
        let y = sy(*v);
        w!(
            out,
            "<line class='grid' x1='{L}' y1='{y:.1}' x2='{:.1}' y2='{y:.1}'/>\
             <text class='axis' x='{:.1}' y='{:.1}' text-anchor='end'>{}</text>\n",
            W - R,
            L - 6.0,
            y + 4.0,
            tick(*v)
        );
    }
    w!(
        out,
        "<text class='axis' x='{:.1}' y='{:.1}' text-anchor='middle'>emulated path delay (ms)</text>\
         <text class='axis' transform='translate(16,{:.1}) rotate(-90)' text-anchor='middle'>latency (ms)</text>\n",
        (L + W - R) / 2.0,
        H - B + 34.0,
        (T + H - B) / 2.0
    );
    // y = x: the physical floor.
    // Its label goes below it, along it: no point can be there.
    let end = x_top.min(y_top);
    let (x0, y0, x1, y1) = (sx(0.0), sy(0.0), sx(end), sy(end));
    let angle = (y1 - y0).atan2(x1 - x0).to_degrees();
    let (lx, ly) = (x0 + (x1 - x0) * 0.8, y0 + (y1 - y0) * 0.8);
    w!(
        out,
        "<line x1='{x0:.1}' y1='{y0:.1}' x2='{x1:.1}' y2='{y1:.1}' stroke='#1f2328' stroke-width='1.5' stroke-dasharray='6 4'/>\
         <text class='axis' transform='translate({lx:.1},{ly:.1}) rotate({angle:.1})' y='15' text-anchor='middle'>\
         latency = path delay (no delivery can be faster)</text>\n"
    );
    for p in pairs {
        let x = sx(p.path_delay_us as f64 / 1000.0);
        let (y50, y99) = (sy(p.p50_us as f64 / 1000.0), sy(p.p99_us as f64 / 1000.0));
        let colour = hop_colour(p.path_hops);
        w!(
            out,
            "<g><title>{} → {}: p50 {} ms, p99 {} ms, path {} ms over {} hop(s)</title>\
             <line x1='{x:.1}' y1='{y50:.1}' x2='{x:.1}' y2='{y99:.1}' stroke='{colour}' stroke-width='1.5' opacity='.55'/>\
             <circle cx='{x:.1}' cy='{y50:.1}' r='3.6' fill='{colour}' fill-opacity='.85' stroke='#fff' stroke-width='.8'/>",
            esc(&p.origin),
            esc(&p.receiver),
            ms(p.p50_us),
            ms(p.p99_us),
            ms(p.path_delay_us),
            p.path_hops
        );
        if p.p99_us as f64 / 1000.0 > y_top {
            w!(
                out,
                "<path d='M{:.1},{:.1}l4,6h-8z' fill='{colour}'/>",
                x,
                T - 2.0
            );
        }
        if p.min_us < p.path_delay_us {
            w!(
                out,
                "<circle cx='{x:.1}' cy='{:.1}' r='6' fill='none' stroke='#cf222e' stroke-width='2'/>",
                sy(p.min_us as f64 / 1000.0)
            );
        }
        w!(out, "</g>\n");
    }
    // Legend.
    let ly = H - 18.0;
    let mut x = L;
    w!(
        out,
        "<circle cx='{x:.1}' cy='{:.1}' r='3.6' fill='#57606a'/><line x1='{x:.1}' y1='{:.1}' x2='{x:.1}' y2='{:.1}' stroke='#57606a' stroke-width='1.5'/>\
         <text class='axis' x='{:.1}' y='{ly:.1}'>dot = p50, line up to p99</text>\n",
        ly - 4.0,
        ly - 4.0,
        ly - 16.0,
        x + 10.0
    );
    x += 200.0;
    for (hops, label) in [(0u32, "same nation"), (1, "1 hop"), (2, "2 hops"), (3, "3+ hops")] {
        w!(
            out,
            "<circle cx='{x:.1}' cy='{:.1}' r='5' fill='{}'/><text class='axis' x='{:.1}' y='{ly:.1}'>{label}</text>\n",
            ly - 4.0,
            hop_colour(hops),
            x + 9.0
        );
        x += 30.0 + label.len() as f64 * 7.0;
    }
    if max_p99 > y_top {
        w!(
            out,
            "<text class='axis' x='{:.1}' y='{ly:.1}'>▲ p99 above {} ms</text>\n",
            x + 10.0,
            tick(y_top)
        );
    }
    w!(out, "</svg>\n");
}

// --------------------------------------------------------------- timeline

fn timeline_section(out: &mut String, r: &Report) {
    w!(
        out,
        "<section id='timeline'>\n<h2>Throughput over time</h2>\n<p class='hint'>Messages per second \
         delivered to subscribers (by arrival) and published (acknowledged), with the events: the \
         shaded band runs from an event starting to it having taken effect everywhere.</p>\n"
    );
    let t = &r.timeline;
    let buckets = t.published.len().max(t.delivered.len());
    if t.bucket_us == 0 || buckets == 0 {
        w!(
            out,
            "<p class='muted'>No timeline was recorded.</p>\n</section>\n"
        );
        return;
    }
    const W: f64 = 1296.0;
    const L: f64 = 76.0;
    const R: f64 = 20.0;
    let mut label_rows: Vec<f64> = Vec::new();
    // Event labels, staggered into rows so they do not overlap.
    let end_us = (buckets as u64 * t.bucket_us).max(
        r.events
            .iter()
            .map(|e| e.applied_us.max(e.started_us))
            .max()
            .unwrap_or(0),
    );
    let sx = |us: u64| L + us as f64 / end_us as f64 * (W - L - R);
    let mut labels = Vec::new();
    for e in &r.events {
        let at = if e.applied_us >= e.started_us && e.applied_us > 0 {
            e.applied_us
        } else {
            e.started_us
        };
        let x = sx(at);
        let shown = e.action.chars().count() + if e.ok { 0 } else { " (failed)".len() };
        let width = shown as f64 * 7.4 + 10.0;
        let (x0, anchor, tx) = if x + width > W - R {
            (x - width, "end", x - 4.0)
        } else {
            (x, "start", x + 4.0)
        };
        let row = match label_rows.iter().position(|&end| end < x0) {
            Some(row) => row,
            None => {
                label_rows.push(f64::MIN);
                label_rows.len() - 1
            }
        };
        label_rows[row] = x0 + width;
        labels.push((e, x, anchor, tx, row));
    }
    let top = 26.0 + 15.0 * label_rows.len().max(1) as f64;
    let panel_h = 130.0;
    let gap = 34.0;
    let panels = [
        ("delivered / s", &t.delivered, "#1a7f37", top),
        ("published / s", &t.published, "#0969da", top + panel_h + gap),
    ];
    let h = top + 2.0 * panel_h + gap + 48.0;
    w!(
        out,
        "<svg class='timeline' viewBox='0 0 {W} {h:.0}' width='{W}' height='{h:.0}' role='img' \
         aria-label='Throughput over time'>\n<rect x='0' y='0' width='{W}' height='{h:.0}' fill='#fff'/>\n"
    );
    let seconds = t.bucket_us as f64 / 1e6;
    // Phases, lightly shaded in turn.
    for (k, p) in r.phases.iter().enumerate() {
        let (x0, x1) = (sx(p.from_us.min(end_us)), sx(p.to_us.min(end_us)));
        if k % 2 == 1 {
            for &(_, _, _, y) in &panels {
                w!(
                    out,
                    "<rect x='{x0:.1}' y='{y:.1}' width='{:.1}' height='{panel_h}' fill='#f3f5f8'/>",
                    (x1 - x0).max(0.0)
                );
            }
        }
        w!(
            out,
            "<text class='small halo' x='{:.1}' y='{:.1}'>{}</text>\n",
            x0 + 10.0,
            top + 13.0,
            esc(&p.label)
        );
    }
    for (name, series, colour, y0) in panels {
        let max = series.iter().copied().max().unwrap_or(0) as f64 / seconds;
        let (yt, y_top) = ticks(max.max(1.0) * 1.08, 3);
        let sy = |v: f64| y0 + panel_h - v / y_top * panel_h;
        for v in &yt {
            let y = sy(*v);
            w!(
                out,
                "<line class='grid' x1='{L}' y1='{y:.1}' x2='{:.1}' y2='{y:.1}'/>\
                 <text class='axis' x='{:.1}' y='{:.1}' text-anchor='end'>{}</text>\n",
                W - R,
                L - 6.0,
                y + 4.0,
                num(v.round() as u64)
            );
        }
        let points: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mid = (i as f64 + 0.5) * t.bucket_us as f64;
                format!("{:.1},{:.1}", sx(mid as u64), sy(n as f64 / seconds))
            })
            .collect();
        w!(
            out,
            "<polyline points='{}' fill='none' stroke='{colour}' stroke-width='2.2' stroke-linejoin='round'/>\
             <text x='{:.1}' y='{:.1}' font-size='13' font-weight='700' fill='{colour}' class='halo' text-anchor='end'>{name}</text>\n",
            points.join(" "),
            W - R - 4.0,
            y0 + 14.0
        );
    }
    // Time axis.
    let axis_y = top + 2.0 * panel_h + gap;
    let (xt, _) = ticks(end_us as f64 / 1e6, 12);
    for v in xt.iter().filter(|v| **v * 1e6 <= end_us as f64 + 1.0) {
        let x = sx((v * 1e6) as u64);
        w!(
            out,
            "<line x1='{x:.1}' y1='{axis_y:.1}' x2='{x:.1}' y2='{:.1}' stroke='#8c959f'/>\
             <text class='axis' x='{x:.1}' y='{:.1}' text-anchor='middle'>{}</text>\n",
            axis_y + 5.0,
            axis_y + 19.0,
            tick(*v)
        );
    }
    w!(
        out,
        "<text class='axis' x='{:.1}' y='{:.1}' text-anchor='middle'>time since traffic started (s); \
         buckets of {}</text>\n",
        (L + W - R) / 2.0,
        axis_y + 38.0,
        dur(t.bucket_us)
    );
    // Events.
    for (e, x, anchor, tx, row) in labels {
        let colour = if e.ok { "#8250df" } else { "#cf222e" };
        let (s, a) = (sx(e.started_us), sx(e.applied_us.max(e.started_us)));
        w!(
            out,
            "<g class='event'><title>{}: due {}, started {}, applied {}</title>\
             <rect x='{s:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='{colour}' opacity='.14'/>\
             <line x1='{x:.1}' y1='{:.1}' x2='{x:.1}' y2='{axis_y:.1}' stroke='{colour}' stroke-width='1.6' stroke-dasharray='4 3'/>\
             <text x='{tx:.1}' y='{:.1}' text-anchor='{anchor}' font-size='12.5' font-weight='700' fill='{colour}' class='halo'>{}{}</text></g>\n",
            esc(&e.action),
            secs(e.at_us),
            secs(e.started_us),
            secs(e.applied_us),
            top,
            (a - s).max(2.0),
            axis_y - top,
            16.0 + 15.0 * row as f64,
            16.0 + 15.0 * row as f64 + 4.0,
            esc(&e.action),
            if e.ok { "" } else { " (failed)" }
        );
    }
    w!(out, "</svg>\n</section>\n");
}

// ----------------------------------------------------------------- tables

fn events_section(out: &mut String, r: &Report) {
    w!(
        out,
        "<section id='events'>\n<h2>Events</h2>\n<p class='hint'>The scenario's timed events: when \
         each was due, when it started and when it had taken effect everywhere (for a cut: the last \
         node's acknowledgement), and the eligible deliveries lost because of it.</p>\n"
    );
    if r.events.is_empty() {
        w!(
            out,
            "<p class='muted'>The scenario has no events.</p>\n</section>\n"
        );
        return;
    }
    w!(
        out,
        "<table class='events'><tr><th class='l'>action</th><th>due</th><th>started</th>\
         <th>applied</th><th>took</th><th class='l'>ok</th><th class='l'>detail</th><th>explained losses</th></tr>\n"
    );
    for e in &r.events {
        w!(
            out,
            "<tr><td class='l'><b>{}</b></td><td>{}</td><td>{} <span class='muted'>(+{})</span></td>\
             <td>{}</td><td>{}</td><td class='l'>{}</td><td class='wrap'>{}</td><td>{}</td></tr>\n",
            esc(&e.action),
            secs(e.at_us),
            secs(e.started_us),
            dur(e.started_us.saturating_sub(e.at_us)),
            secs(e.applied_us),
            dur(e.applied_us.saturating_sub(e.started_us)),
            if e.ok {
                "<span class='tag ok'>✓ ok</span>"
            } else {
                "<span class='tag no'>✗ failed</span>"
            },
            esc(&e.detail),
            num(e.explained_losses)
        );
    }
    w!(out, "</table>\n</section>\n");
}

fn traffic_section(out: &mut String, r: &Report) {
    w!(
        out,
        "<section id='traffic'>\n<h2>Traffic</h2>\n<p class='hint'>What the scenario ran: each \
         publisher is one session publishing at a steady rate, each subscriber one session with \
         one pattern.</p>\n<div class='cols'><table><tr><th class='l'>publisher</th>\
         <th class='l'>topic</th><th class='l'>marking</th><th>msg/s</th><th>bytes</th></tr>\n"
    );
    for p in &r.publishers {
        w!(
            out,
            "<tr><td class='l'>{}</td><td class='l'>{}</td><td class='l'>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&p.principal),
            esc(&p.topic),
            esc(&p.marking),
            p.rate,
            num(p.payload as u64)
        );
    }
    w!(
        out,
        "</table><table><tr><th class='l'>subscriber</th><th class='l'>pattern</th></tr>\n"
    );
    for sub in &r.subscribers {
        w!(
            out,
            "<tr><td class='l'>{}</td><td class='l'>{}</td></tr>\n",
            esc(&sub.principal),
            esc(&sub.pattern)
        );
    }
    w!(out, "</table></div>\n</section>\n");
}

fn links_section(out: &mut String, r: &Report) {
    if r.links.is_empty() {
        return;
    }
    let cut: HashSet<&str> = r
        .nations
        .iter()
        .filter(|n| n.cut_at_end)
        .map(|n| n.nation.as_str())
        .collect();
    w!(
        out,
        "<section id='links'>\n<h2>Links</h2>\n<p class='hint'>The emulated links as configured, the \
         median latency measured between their ends, and what the emulator carried and dropped \
         (loss, a full queue, or the link down).</p>\n<div class='cols'>\n"
    );
    let per = if r.links.len() > 14 {
        r.links.len().div_ceil(2)
    } else {
        r.links.len()
    };
    for chunk in r.links.chunks(per.max(1)) {
        w!(
            out,
            "<table class='small links'><tr><th class='l'>link</th><th>delay ms</th><th>jitter ms</th>\
             <th>loss</th><th>Mbit/s</th><th>p50 ms</th><th>datagrams</th><th>dropped</th><th class='l'>at the end</th></tr>\n"
        );
        for l in chunk {
            let state = match link_look(l, &cut) {
                LinkLook::Severed => "<span class='tag cut'>severed</span>",
                LinkLook::Down => "<span class='tag down'>down</span>",
                _ => "<span class='muted'>up</span>",
            };
            w!(
                out,
                "<tr><td class='l'><b>{}</b> – <b>{}</b></td><td>{}</td><td>{}</td><td>{:.2} %</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{} <span class='muted'>({})</span></td><td class='l'>{state}</td></tr>\n",
                esc(&l.a),
                esc(&l.b),
                ms(l.delay_us),
                ms(l.jitter_us),
                l.loss * 100.0,
                l.bandwidth_mbps,
                l.measured_p50_us.map_or("–".to_owned(), ms),
                num(l.datagrams),
                num(l.dropped),
                pct(l.dropped, l.datagrams)
            );
        }
        w!(out, "</table>\n");
    }
    w!(out, "</div>\n</section>\n");
}

fn findings_section(out: &mut String, r: &Report) {
    let findings = &r.verdict.findings;
    if findings.is_empty() {
        return;
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in findings {
        *kinds.entry(f.kind.as_str()).or_default() += 1;
    }
    let summary: Vec<String> = kinds.iter().map(|(k, n)| format!("{}: {n}", esc(k))).collect();
    w!(
        out,
        "<section id='findings'>\n<h2>Findings</h2>\n<p class='hint'>Some of the leaks, duplicates and \
         unexplained losses the oracle found, to start from ({}).</p>\n\
         <table class='findings'><tr><th class='l'>kind</th><th class='l'>publisher</th><th>seq</th>\
         <th class='l'>subscriber</th><th class='l'>marking</th><th>published</th><th class='l'>why</th></tr>\n",
        summary.join(", ")
    );
    for f in findings {
        w!(
            out,
            "<tr><td class='l bad'>{}</td><td class='l'>{}</td><td>{}</td><td class='l'>{}</td>\
             <td class='l'><code>{}</code></td><td>{}</td><td class='wrap'>{}</td></tr>\n",
            esc(&f.kind),
            esc(&f.publisher),
            f.seq,
            esc(&f.subscriber),
            esc(&f.marking),
            secs(f.published_us),
            esc(&f.why)
        );
    }
    w!(out, "</table>\n</section>\n");
}

// ----------------------------------------------------------------- sample

/// A realistic report of the 15-nation sample network with USA cut out
/// half-way, for the tests and for looking at the page.
#[doc(hidden)]
pub fn sample_report() -> Report {
    use super::geo;
    use super::report::{EventReport, Phase, PhaseCount, Timeline, Verdict};

    const PEERS: [(&str, &str); 28] = [
        ("GBR", "FRA"),
        ("GBR", "DEU"),
        ("GBR", "USA"),
        ("GBR", "NOR"),
        ("GBR", "POL"),
        ("GBR", "EST"),
        ("GBR", "UKR"),
        ("GBR", "TUR"),
        ("FRA", "DEU"),
        ("FRA", "USA"),
        ("FRA", "ROU"),
        ("FRA", "TUR"),
        ("DEU", "USA"),
        ("DEU", "POL"),
        ("DEU", "DNK"),
        ("POL", "USA"),
        ("POL", "LTU"),
        ("POL", "UKR"),
        ("POL", "ROU"),
        ("FIN", "SWE"),
        ("FIN", "EST"),
        ("SWE", "NOR"),
        ("SWE", "DNK"),
        ("DNK", "NOR"),
        ("EST", "LVA"),
        ("LVA", "LTU"),
        ("ROU", "UKR"),
        ("ROU", "TUR"),
    ];
    const CUT: &str = "USA";
    const HALF: u64 = 30_000_000;
    // Deterministic noise in [0, 1).
    let noise = |seed: u64| {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        (x % 10_000) as f64 / 10_000.0
    };

    let capitals = geo::capitals();
    let codes: Vec<String> = capitals.iter().map(|c| c.nation.as_str().to_owned()).collect();
    let index: HashMap<&str, usize> = codes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let delay = |a: &str, b: &str| -> u64 {
        let (a, b) = (capitals[index[a]].nation, capitals[index[b]].nation);
        geo::path_delay(a, b).map_or(5_000, |d| d.as_micros() as u64)
    };

    // Fastest paths (Floyd–Warshall over the links' delays).
    let n = codes.len();
    let mut dist = vec![vec![(u64::MAX / 4, 0u32); n]; n];
    for (i, row) in dist.iter_mut().enumerate() {
        row[i] = (0, 0);
    }
    for (a, b) in PEERS {
        let d = delay(a, b);
        dist[index[a]][index[b]] = (d, 1);
        dist[index[b]][index[a]] = (d, 1);
    }
    for k in 0..n {
        for i in 0..n {
            for j in 0..n {
                let via = (dist[i][k].0 + dist[k][j].0, dist[i][k].1 + dist[k][j].1);
                if via.0 < dist[i][j].0 {
                    dist[i][j] = via;
                }
            }
        }
    }
    // Messages per phase from each nation, subscribers in each nation, and
    // the share of a nation's messages another may receive. Ukraine is
    // outside NATO, so USA and UKR share nothing; Turkey gets less.
    let rate = |i: usize| 150 + (noise(i as u64 + 100) * 20.0) as u64 * 10;
    let subscribers = |j: usize| 1 + (noise(j as u64 + 200) * 2.5) as u64;
    let share = |a: &str, b: &str| match (a, b) {
        ("USA", "UKR") | ("UKR", "USA") => 0.0,
        _ if a == b => 1.0,
        ("TUR", _) | (_, "TUR") => 0.6,
        ("UKR", _) | (_, "UKR") => 0.8,
        _ => 1.0,
    };

    let mut matrix = Vec::new();
    let mut pairs = Vec::new();
    let mut received = vec![0u64; n];
    for (i, o) in codes.iter().enumerate() {
        for (j, rcv) in codes.iter().enumerate() {
            let before = (rate(i) as f64 * share(o, rcv)) as u64 * subscribers(j);
            let after = if (o == CUT || rcv == CUT) && o != rcv {
                0
            } else {
                before
            };
            let mut phases = vec![
                PhaseCount {
                    expected: before,
                    delivered: before,
                },
                PhaseCount {
                    expected: after,
                    delivered: after,
                },
            ];
            // Lost in the cut's window: explained, but fewer than expected.
            if o == "FRA" && rcv == CUT {
                phases[0].delivered -= 5;
            }
            received[j] += phases.iter().map(|p| p.delivered).sum::<u64>();
            let count = phases.iter().map(|p| p.delivered).sum::<u64>();
            matrix.push(MatrixCell {
                origin: o.clone(),
                receiver: rcv.clone(),
                phases,
            });
            if count == 0 {
                continue;
            }
            let (path, hops) = dist[i][j];
            let seed = (i * n + j) as u64;
            let overhead = 250 + 350 * u64::from(hops) + (noise(seed) * 600.0) as u64;
            let p50 = path + overhead;
            let p90 = p50 + 200 + (p50 as f64 * 0.12 * (1.0 + noise(seed + 1000))) as u64;
            let p99 = p90 + 500 + (p50 as f64 * 0.25 * (1.0 + noise(seed + 2000))) as u64;
            pairs.push(PairLatency {
                origin: o.clone(),
                receiver: rcv.clone(),
                count,
                min_us: path + 120 + 100 * u64::from(hops),
                p50_us: p50,
                p90_us: p90,
                p99_us: p99,
                max_us: p99 + 1_500 + (noise(seed + 3000) * 4_000.0) as u64,
                path_delay_us: path,
                path_hops: hops,
            });
        }
    }

    let nations = capitals
        .iter()
        .enumerate()
        .map(|(i, c)| NationReport {
            nation: codes[i].clone(),
            capital: c.name.clone(),
            lat: c.lat,
            lon: c.lon,
            cut_at_end: codes[i] == CUT,
            down_at_end: false,
            published: 2 * rate(i),
            received: received[i],
            received_while_cut: 0,
        })
        .collect();

    let links = PEERS
        .iter()
        .enumerate()
        .map(|(k, &(a, b))| {
            let d = delay(a, b);
            let idle = (a, b) == ("DNK", "NOR");
            let datagrams = 40_000 + (noise(k as u64 + 500) * 90_000.0) as u64;
            LinkReport {
                a: a.to_owned(),
                b: b.to_owned(),
                delay_us: d,
                jitter_us: d / 20,
                loss: 0.001,
                bandwidth_mbps: 100.0,
                measured_p50_us: (!idle).then_some(d + 400 + (noise(k as u64) * 500.0) as u64),
                up_at_end: true,
                severed: a == CUT || b == CUT,
                datagrams: if idle { 1_200 } else { datagrams },
                dropped: datagrams / 1000,
            }
        })
        .collect();

    let expected: u64 = matrix.iter().flat_map(|c| &c.phases).map(|p| p.expected).sum();
    let delivered: u64 = matrix.iter().flat_map(|c| &c.phases).map(|p| p.delivered).sum();
    let acknowledged: u64 = (0..n).map(|i| 2 * rate(i)).sum();
    let phase_sum = |k: usize| -> u64 { matrix.iter().map(|c| c.phases[k].delivered).sum() };
    let (before, after) = (phase_sum(0) / 30, phase_sum(1) / 30);
    let jitter = |b: u64, per: u64| per + (noise(b) * per as f64 * 0.06) as u64;
    let timeline = Timeline {
        bucket_us: 1_000_000,
        published: (0..62u64)
            .map(|b| match b {
                0 => acknowledged / 120,
                60.. => 0,
                _ => jitter(b + 7000, acknowledged / 62),
            })
            .collect(),
        delivered: (0..62u64)
            .map(|b| match b {
                0 => before / 3,
                1..=29 => jitter(b + 9000, before),
                30 => (before + after) / 2,
                31..=59 => jitter(b + 9000, after),
                60 => after / 4,
                _ => 0,
            })
            .collect(),
    };

    Report {
        scenario: "cut-usa".to_owned(),
        description: "Fifteen nations publish at every level for a minute; half-way through, the \
                      coalition cuts the United States out. Nothing may reach USA after the cut, \
                      and nothing else may be lost."
            .to_owned(),
        network_file: "config/network.toml".to_owned(),
        duration_us: 60_000_000,
        scenario_duration_us: 60_000_000,
        started_at: "2025-03-14T09:26:53Z".to_owned(),
        wall_time_us: 71_400_000,
        publishers: vec![PublisherSpec {
            principal: "gbr.analyst".to_owned(),
            nation: Nation::parse("GBR").unwrap_or_else(|| unreachable!()),
            topic: "sigint.summary".to_owned(),
            marking: "SECRET//REL TO NATO <&>".to_owned(),
            rate: 20.0,
            payload: 512,
        }],
        subscribers: vec![SubscriberSpec {
            principal: "usa.analyst".to_owned(),
            nation: Nation::parse("USA").unwrap_or_else(|| unreachable!()),
            pattern: ">".to_owned(),
        }],
        nations,
        links,
        events: vec![EventReport {
            action: format!("cut {CUT}"),
            at_us: HALF,
            started_us: HALF + 140,
            applied_us: HALF + 212_000,
            ok: true,
            detail: "14 nodes acknowledged; USA is cut out".to_owned(),
            explained_losses: 5,
        }],
        phases: vec![
            Phase {
                label: format!("before cut {CUT}"),
                from_us: 0,
                to_us: HALF,
            },
            Phase {
                label: format!("after cut {CUT}"),
                from_us: HALF,
                to_us: 60_000_000,
            },
        ],
        matrix,
        pairs,
        timeline,
        verdict: Verdict {
            published: acknowledged + 12,
            acknowledged,
            unacknowledged: 12,
            expected,
            delivered,
            leaks: 0,
            duplicates: 0,
            explained_losses: 5,
            unexplained_losses: 0,
            in_transition: 37,
            reordered: 0,
            findings: Vec::new(),
            warm_up_missing: Vec::new(),
            audit_logs: vec![super::report::AuditCheck {
                nation: "GBR".to_owned(),
                records: 4_321,
                intact: true,
                detail: "last hash 00".to_owned(),
            }],
            passed: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::Finding;
    use super::*;

    /// The `<svg class='CLASS'` … `</svg>` element.
    fn svg<'a>(page: &'a str, class: &str) -> &'a str {
        let start = page
            .find(&format!("<svg class='{class}'"))
            .unwrap_or_else(|| panic!("no {class} svg"));
        let end = page[start..].find("</svg>").expect("closed") + start + "</svg>".len();
        &page[start..end]
    }

    /// The delivery matrix table.
    fn matrix_table(page: &str) -> &str {
        let start = page.find("<table class='matrix'>").expect("a matrix");
        &page[start..start + page[start..].find("</table>").expect("closed")]
    }

    /// Checks that every tag in `xml` is closed in order; returns how many
    /// elements it has.
    fn well_formed(xml: &str) -> usize {
        let mut stack: Vec<&str> = Vec::new();
        let mut elements = 0;
        let mut rest = xml;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').expect("a tag ends") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "a '<' inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.trim()), "closing {name}");
            } else if !tag.ends_with('/') && !tag.starts_with('!') {
                let name = tag.split_whitespace().next().expect("a name");
                stack.push(name);
                elements += 1;
            } else {
                elements += 1;
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "left open: {stack:?}");
        elements
    }

    #[test]
    fn the_page_is_self_contained() {
        let page = render(&sample_report());
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.trim_end().ends_with("</html>"));
        for external in [
            "http://", "https://", "src=", "<link", "@import", "<script", "<img",
        ] {
            assert!(!page.contains(external), "the page has {external}");
        }
        // `url(` only for the map's own gradient.
        for (i, _) in page.match_indices("url(") {
            assert!(page[i..].starts_with("url(#map-ramp)"), "{}", &page[i..i + 30]);
        }
        assert!(page.len() > 50_000, "{}", page.len());
    }

    #[test]
    fn every_svg_is_well_formed() {
        let page = render(&sample_report());
        assert_eq!(page.matches("<svg").count(), 3);
        assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
        for class in ["map", "latency", "timeline"] {
            assert!(well_formed(svg(&page, class)) > 40, "{class}");
        }
    }

    #[test]
    fn the_map_shows_every_nation_and_each_link() {
        let report = sample_report();
        let page = render(&report);
        let map = svg(&page, "map");
        assert_eq!(report.nations.len(), 15);
        for n in &report.nations {
            assert!(map.contains(&format!(">{}</text>", n.nation)), "{}", n.nation);
        }
        let links = map.matches("<g class='link'>").count() + map.matches("<g class='link ").count();
        assert_eq!(links, report.links.len());
        // One link carried nothing: drawn grey and dotted.
        assert_eq!(map.matches("<g class='link idle'>").count(), 1);
        assert!(map.contains("Washington"), "the inset names its capital");
        assert!(map.contains("(not to scale)"));
        assert!(map.contains("across the Atlantic"));
    }

    #[test]
    fn washington_goes_in_the_inset_and_europe_keeps_its_shape() {
        let report = sample_report();
        let lay = layout(&report.nations);
        let at = |code: &str| lay.pos[code];
        let usa = report.nations.iter().position(|n| n.nation == "USA").unwrap();
        assert_eq!(lay.west, vec![usa]);
        assert!(lay.east.is_empty());
        assert!(at("USA").0 < INSET_W, "{:?}", at("USA"));
        // Europe fills the main area, to scale.
        assert!(at("GBR").0 > INSET_W + 40.0);
        assert!(at("GBR").0 < at("FRA").0 + 20.0 && at("FRA").0 < at("POL").0);
        assert!(at("FIN").1 < at("EST").1 && at("EST").1 < at("LVA").1);
        assert!(at("TUR").1 > at("UKR").1 && at("TUR").0 > at("ROU").0);
        let (w, h) = (at("TUR").0 - at("GBR").0, at("TUR").1 - at("FIN").1);
        assert!(w > 350.0 && h > 350.0, "{w} × {h}");
        for (code, (x, y)) in &lay.pos {
            assert!(
                (0.0..MAP_W).contains(x) && (MAP_TOP..MAP_BOTTOM).contains(y),
                "{code}"
            );
        }
    }

    #[test]
    fn labels_hide_no_dot_and_no_other_label() {
        let report = sample_report();
        let lay = layout(&report.nations);
        let wants: Vec<LabelWant> = report
            .nations
            .iter()
            .map(|n| LabelWant {
                at: lay.pos[&n.nation],
                code: &n.nation,
                note: n.cut_at_end.then_some("CUT OUT"),
            })
            .collect();
        let segments: Vec<_> = report
            .links
            .iter()
            .map(|l| (lay.pos[&l.a], lay.pos[&l.b]))
            .collect();
        let bounds = Rect {
            x0: 0.0,
            y0: 0.0,
            x1: MAP_W,
            y1: MAP_BOTTOM + 14.0,
        };
        let spots = place_labels(&wants, &segments, &[], bounds);
        for (i, a) in spots.iter().enumerate() {
            assert!(a.rect.inside(&bounds), "{}", wants[i].code);
            for (j, w) in wants.iter().enumerate() {
                let dot = Rect::around(w.at.0, w.at.1, NODE_R);
                assert!(
                    !a.rect.overlaps(&dot),
                    "{} hides the dot of {}",
                    wants[i].code,
                    w.code
                );
                if j != i {
                    assert!(
                        !a.rect.overlaps(&spots[j].rect),
                        "{} and {}",
                        wants[i].code,
                        w.code
                    );
                }
            }
        }
    }

    #[test]
    fn the_cut_nation_is_greyed_and_its_links_severed() {
        let report = sample_report();
        let page = render(&report);
        let map = svg(&page, "map");
        assert!(map.contains("CUT OUT"));
        let cut = map.find("<g class='node cut'>").expect("a cut node");
        let node = &map[cut..cut + map[cut..].find("</g>").unwrap()];
        assert!(node.contains(">USA</text>") && node.contains("CUT OUT"), "{node}");
        assert_eq!(map.matches("<g class='node cut'>").count(), 1);
        assert_eq!(map.matches("<g class='link severed'>").count(), 4);
        assert_eq!(map.matches("<g class='sever'>").count(), 4);
        // The matrix marks the after-cut cells of its row and column.
        let matrix = matrix_table(&page);
        assert!(matrix.contains("<th class='cutcol'>USA<small>CUT</small></th>"));
        assert_eq!(matrix.matches("<span class='zero cutp'>0</span>").count(), 28);

        // Not cut: nothing says so.
        let mut uncut = report;
        for n in &mut uncut.nations {
            n.cut_at_end = false;
        }
        for l in &mut uncut.links {
            l.severed = false;
        }
        uncut.events.clear();
        let page = render(&uncut);
        assert!(!page.contains("CUT OUT") && !page.contains("node cut"));
        assert!(!page.contains("<span class='sw cutp'>") && !page.contains(" cutp'>"));
        assert_eq!(page.matches("<g class='link severed'>").count(), 0);
    }

    #[test]
    fn down_links_and_nodes_are_drawn_down() {
        let mut report = sample_report();
        let fin_swe = report
            .links
            .iter_mut()
            .find(|l| l.a == "FIN" && l.b == "SWE")
            .unwrap();
        fin_swe.up_at_end = false;
        report
            .nations
            .iter_mut()
            .find(|n| n.nation == "LVA")
            .unwrap()
            .down_at_end = true;
        let page = render(&report);
        let map = svg(&page, "map");
        assert_eq!(map.matches("<g class='link down'>").count(), 1);
        assert!(map.contains(">down</text>"));
        let down = map.find("<g class='node down'>").expect("a down node");
        assert!(map[down..].starts_with("<g class='node down'><title>LVA"));
        assert!(map.contains(">DOWN</text>"));
    }

    #[test]
    fn report_strings_are_escaped() {
        let mut report = sample_report();
        report.scenario = "a<b".to_owned();
        report.description = "<script>alert(\"x\")</script> & 'co'".to_owned();
        report.events[0].detail = "<b>bold</b>".to_owned();
        report.phases[1].label = "after <cut>".to_owned();
        report.nations[0].capital = "Lon<don>".to_owned();
        report.verdict.findings.push(Finding {
            kind: "leak".to_owned(),
            publisher: "GBR/pub<1>".to_owned(),
            seq: 7,
            subscriber: "USA/sub&1".to_owned(),
            marking: "SECRET//REL TO <GBR, \"FRA\">".to_owned(),
            published_us: 31_000_000,
            why: "released to USA after the cut".to_owned(),
        });
        let page = render(&report);
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;co&#39;"));
        assert!(!page.contains("<script"));
        assert!(page.contains("<title>a&lt;b — Entente"));
        assert!(page.contains("&lt;b&gt;bold&lt;/b&gt;") && !page.contains("<b>bold"));
        assert!(page.contains("after &lt;cut&gt;") && !page.contains("<cut>"));
        assert!(page.contains("Lon&lt;don&gt;"));
        assert!(page.contains("SECRET//REL TO &lt;GBR, &quot;FRA&quot;&gt;"));
        assert!(page.contains("GBR/pub&lt;1&gt;") && page.contains("USA/sub&amp;1"));
        assert!(page.contains("every hash chain intact") && page.contains("Out of order"));
        // The traffic table: the sample's publisher marking carries `<&>`.
        assert!(page.contains("<td class='l'>SECRET//REL TO NATO &lt;&amp;&gt;</td>"));
        for class in ["map", "latency", "timeline"] {
            well_formed(svg(&page, class));
        }
    }

    #[test]
    fn the_verdict_and_its_numbers_are_shown() {
        let report = sample_report();
        let page = render(&report);
        let v = &report.verdict;
        assert!(page.contains("<div class='badge pass'><b>PASS</b>"));
        assert!(!page.contains("FAIL"));
        for n in [
            v.published,
            v.acknowledged,
            v.expected,
            v.delivered,
            v.in_transition,
        ] {
            assert!(page.contains(&format!("<div class='n'>{}</div>", num(n))), "{n}");
        }
        assert!(page.contains(&format!(
            "<div class='what'>Published</div><div class='n'>{}</div>",
            num(v.published)
        )));
        assert_eq!(
            page.matches("<div class='card good'><div class='n'>0</div>")
                .count(),
            3
        );
        assert!(page.contains("12 not acknowledged"));

        let mut failed = report;
        failed.verdict.passed = false;
        failed.verdict.leaks = 3;
        failed.verdict.findings.push(Finding {
            kind: "leak".to_owned(),
            publisher: "GBR/p1".to_owned(),
            seq: 1,
            subscriber: "USA/s1".to_owned(),
            marking: "S//REL TO NATO".to_owned(),
            published_us: 40_000_000,
            why: "after the cut".to_owned(),
        });
        let page = render(&failed);
        assert!(page.contains("<div class='badge fail'><b>FAIL</b>"));
        assert!(page.contains("<div class='card bad'><div class='n'>3</div><div class='what'>Leaks"));
        assert!(page.contains("<table class='findings'>") && page.contains("GBR/p1"));
    }

    #[test]
    fn no_findings_no_table() {
        assert!(!render(&sample_report()).contains("<table class='findings'>"));
    }

    #[test]
    fn the_header_says_what_ran() {
        let mut report = sample_report();
        let page = render(&report);
        assert!(page.contains("<b>60 s</b> of traffic"));
        assert!(!page.contains("overridden"));
        assert!(page.contains("2025-03-14T09:26:53Z") && page.contains("71.4 s"));
        report.duration_us = 10_000_000;
        report.scenario_duration_us = 180_000_000;
        let page = render(&report);
        assert!(page.contains("<b>10 s</b> of traffic"));
        assert!(page.contains("(overridden by --duration, the scenario says 3 min)"));
    }

    #[test]
    fn the_matrix_flags_short_and_extra_deliveries() {
        let mut report = sample_report();
        let page = render(&report);
        let matrix = matrix_table(&page);
        // FRA → USA lost 5 before the cut: amber.
        let fra_usa = report
            .matrix
            .iter()
            .find(|c| c.origin == "FRA" && c.receiver == "USA");
        let before = fra_usa.unwrap().phases[0];
        assert_eq!(before.delivered + 5, before.expected);
        assert_eq!(matrix.matches("<td class='short'").count(), 1);
        assert!(matrix.contains("<td class='short' title='FRA → USA"));
        assert!(matrix.contains(&format!("<span class='short'>{}</span>", num(before.delivered))));
        assert!(!matrix.contains("<td class='over'"));
        // 15 rows of 15 nations, plus headers.
        assert_eq!(matrix.matches("<tr>").count(), 16);
        let cell = report
            .matrix
            .iter_mut()
            .find(|c| c.origin == "GBR" && c.receiver == "DEU")
            .unwrap();
        cell.phases[1].delivered += 2;
        let extra = cell.phases[1].delivered;
        let page = render(&report);
        let matrix = matrix_table(&page);
        assert!(matrix.contains("<td class='over' title='GBR → DEU"));
        assert!(matrix.contains(&format!("<span class='over'>{}</span>", num(extra))));
    }

    #[test]
    fn only_nations_in_the_matrix_get_a_row_or_column() {
        let mut report = sample_report();
        report.matrix.retain(|c| c.origin != "TUR" && c.receiver != "TUR");
        let page = render(&report);
        let matrix = matrix_table(&page);
        assert!(!matrix.contains("TUR"));
        assert_eq!(matrix.matches("<tr>").count(), 15);
    }

    #[test]
    fn latency_and_timeline_show_every_pair_and_event() {
        let report = sample_report();
        let page = render(&report);
        let chart = svg(&page, "latency");
        assert_eq!(chart.matches("<circle cx=").count() - 5, report.pairs.len());
        assert!(chart.contains("latency = path delay"));
        let rows = page.matches("<tr><td class='l'>").count();
        assert!(rows >= report.pairs.len(), "{rows}");
        assert!(page.contains(&format!("Latency, all {} pairs", report.pairs.len())));
        // GBR → USA: 1 hop, its path delay in ms.
        let gbr_usa = report
            .pairs
            .iter()
            .find(|p| p.origin == "GBR" && p.receiver == "USA")
            .unwrap();
        assert!(page.contains(&format!(
            "<tr><td class='l'>GBR → USA</td><td>{}</td><td>{}</td><td>{}</td>",
            num(gbr_usa.count),
            ms(gbr_usa.min_us),
            ms(gbr_usa.p50_us)
        )));
        let timeline = svg(&page, "timeline");
        assert_eq!(timeline.matches("<polyline").count(), 2);
        assert!(timeline.contains(">cut USA</text>"));
        assert!(timeline.contains(">before cut USA</text>") && timeline.contains(">after cut USA</text>"));
        assert!(page.contains("<td class='l'><b>cut USA</b></td>"));
    }

    #[test]
    fn an_empty_report_still_renders() {
        let mut report = sample_report();
        report.nations.clear();
        report.links.clear();
        report.matrix.clear();
        report.pairs.clear();
        report.events.clear();
        report.phases.clear();
        report.timeline.published.clear();
        report.timeline.delivered.clear();
        let page = render(&report);
        assert!(page.contains("No deliveries were recorded."));
        assert!(page.contains("No timeline was recorded."));
        well_formed(svg(&page, "map"));
    }

    #[test]
    fn helpers_format_for_people() {
        assert_eq!(num(0), "0");
        assert_eq!(num(1234567), "1,234,567");
        assert_eq!(ms(2_634), "2.63");
        assert_eq!(ms(250_000), "250.0");
        assert_eq!(dur(60_000_000), "60 s");
        assert_eq!(dur(71_400_000), "71.4 s");
        assert_eq!(dur(200_000_000), "3 min 20 s");
        assert_eq!(dur(0), "0 s");
        assert_eq!(pct(175_891, 175_896), "99.99+ %");
        assert_eq!(pct(5, 5), "100.00 %");
        assert_eq!(pct(1, 0), "–");
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(ramp(0.0), "#5ec962");
        assert_eq!(ramp(1.0), "#440154");
    }
}
