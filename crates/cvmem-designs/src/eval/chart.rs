//! Hand-written SVG line charts with logarithmic axes: one series per design, a legend, binary
//! size and time tick labels. No dependency; the output is plain SVG text.

use std::fmt::Write;

/// How tick labels are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes (4K, 2M, 1G, 64T).
    Bytes,
    /// Nanoseconds (ns, µs, ms, s).
    Nanos,
}

/// A log-log line chart.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// X unit.
    pub x_unit: Unit,
    /// Y unit.
    pub y_unit: Unit,
    /// (name, points) per series; points with non-positive values are left out.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Notes printed under the chart.
    pub notes: Vec<String>,
    /// (name, (x, low, high)) per series: the spread of repeated runs, drawn as error bars.
    pub bars: Vec<(String, Vec<Bar>)>,
}

/// An error bar: x, low, high.
pub type Bar = (f64, f64, f64);

/// A fixed colour per design name, so charts agree with each other.
pub fn color(name: &str) -> &'static str {
    match name {
        "linux" => "#d62728",
        "option-a" => "#ff7f0e",
        "option-b" => "#8c564b",
        "option-c" => "#e377c2",
        "bitmap" => "#9467bd",
        "rangemap" => "#2ca02c",
        "roaring" => "#17becf",
        "cvmem" => "#1f77b4",
        _ => "#7f7f7f",
    }
}

/// A tick label.
pub fn label(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => {
            for (s, p) in [("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
                let u = (1u64 << p) as f64;
                if v >= u {
                    return trim(v / u) + s;
                }
            }
            trim(v)
        }
        Unit::Nanos => {
            for (s, u) in [("s", 1e9), ("ms", 1e6), ("µs", 1e3)] {
                if v >= u {
                    return trim(v / u) + " " + s;
                }
            }
            trim(v) + " ns"
        }
    }
}

/// Designs drawn dashed, so that lines lying on top of each other stay visible.
fn dash(name: &str) -> &'static str {
    match name {
        "option-a" | "option-c" => r#" stroke-dasharray="7,4""#,
        _ => "",
    }
}

fn trim(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 || x >= 100.0 {
        format!("{:.0}", x)
    } else if x >= 10.0 {
        format!("{:.1}", x)
    } else {
        format!("{:.2}", x)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    /// Renders the chart as an SVG document.
    pub fn to_svg(&self) -> String {
        const W: f64 = 760.0;
        const H: f64 = 460.0;
        let (left, right, top) = (80.0, 150.0, 40.0);
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .chain(
                self.bars
                    .iter()
                    .flat_map(|(_, b)| b.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)])),
            )
            .filter(|&(x, y)| x > 0.0 && y > 0.0)
            .collect();
        let mut out = String::new();
        let height = H + 14.0 * self.notes.len() as f64;
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
            W / 2.0,
            escape(&self.title)
        );
        if pts.is_empty() {
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle">no data</text></svg>"#,
                W / 2.0,
                H / 2.0
            );
            return out;
        }
        let lg = |v: f64| v.log10();
        let (mut x0, mut x1) = (f64::MAX, f64::MIN);
        let (mut y0, mut y1) = (f64::MAX, f64::MIN);
        for &(x, y) in &pts {
            x0 = x0.min(lg(x));
            x1 = x1.max(lg(x));
            y0 = y0.min(lg(y));
            y1 = y1.max(lg(y));
        }
        if x1 - x0 < 1e-9 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        // Y ticks: decades for times; powers of two spaced evenly for bytes.
        let ticks: Vec<f64> = match self.y_unit {
            Unit::Nanos => {
                y0 = y0.floor();
                y1 = y1.ceil().max(y0 + 1.0);
                (y0 as i32..=y1 as i32).map(|e| 10f64.powi(e)).collect()
            }
            Unit::Bytes => {
                let (b0, b1) = (y0 / 2f64.log10(), y1 / 2f64.log10());
                let span = (b1 - b0).max(1.0);
                let step = [1.0, 2.0, 4.0, 5.0, 10.0]
                    .into_iter()
                    .find(|s| span / s <= 9.0)
                    .unwrap_or(10.0);
                let lo = (b0 / step).floor() * step;
                let hi = ((b1 / step).ceil() * step).max(lo + step);
                y0 = lo * 2f64.log10();
                y1 = hi * 2f64.log10();
                let mut t = Vec::new();
                let mut b = lo;
                while b <= hi + 1e-9 {
                    t.push(2f64.powf(b));
                    b += step;
                }
                t
            }
        };
        let plot_w = W - left - right;
        let plot_h = H - top - 60.0;
        let px = |x: f64| left + (lg(x) - x0) / (x1 - x0) * plot_w;
        let py = |y: f64| top + plot_h - (lg(y) - y0) / (y1 - y0) * plot_h;
        // Axes and grid.
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
        );
        for y in ticks {
            let yy = py(y);
            let _ = writeln!(
                out,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + plot_w,
                left - 6.0,
                yy + 4.0,
                label(y, self.y_unit)
            );
        }
        let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        let step = (xs.len() / 10).max(1);
        for x in xs.iter().step_by(step) {
            let xx = px(*x);
            let _ = writeln!(
                out,
                r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"##,
                top + plot_h,
                top + plot_h + 16.0,
                label(*x, self.x_unit)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + plot_w / 2.0,
            top + plot_h + 36.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            out,
            r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            escape(&self.y_label)
        );
        // Series and legend.
        // Solid series first, dashed ones on top of them.
        let mut order: Vec<usize> = (0..self.series.len()).collect();
        order.sort_by_key(|&k| !dash(&self.series[k].0).is_empty());
        for k in order {
            let (name, points) = &self.series[k];
            let c = color(name);
            let mut p: Vec<(f64, f64)> = points
                .iter()
                .copied()
                .filter(|&(x, y)| x > 0.0 && y > 0.0)
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !p.is_empty() {
                let path: Vec<String> = p
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                    .collect();
                let _ = writeln!(
                    out,
                    r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"{}/>"#,
                    path.join(" "),
                    dash(name)
                );
                for &(x, y) in &p {
                    let _ = writeln!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>{}: {} at {}</title></circle>"#,
                        px(x),
                        py(y),
                        escape(name),
                        label(y, self.y_unit),
                        label(x, self.x_unit)
                    );
                }
            }
            let ly = top + 10.0 + 18.0 * k as f64;
            let lx = left + plot_w + 14.0;
            let _ = writeln!(
                out,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                lx + 20.0,
                lx + 26.0,
                ly + 4.0,
                escape(name)
            );
        }
        for (name, bars) in &self.bars {
            let c = color(name);
            for &(x, lo, hi) in bars.iter().filter(|b| b.0 > 0.0 && b.1 > 0.0) {
                let (xx, y_lo, y_hi) = (px(x), py(lo), py(hi));
                let _ = writeln!(
                    out,
                    r#"<path d="M{:.1},{y_lo:.1}V{y_hi:.1}M{:.1},{y_lo:.1}h8M{:.1},{y_hi:.1}h8" stroke="{c}" stroke-width="1.5" fill="none"><title>{}: {} to {} at {}</title></path>"#,
                    xx,
                    xx - 4.0,
                    xx - 4.0,
                    escape(name),
                    label(lo, self.y_unit),
                    label(hi, self.y_unit),
                    label(x, self.x_unit)
                );
            }
        }
        for (i, note) in self.notes.iter().enumerate() {
            let _ = writeln!(
                out,
                r##"<text x="{left}" y="{}" font-size="11" fill="#555">{}</text>"##,
                H + 14.0 * i as f64 - 6.0,
                escape(note)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}
