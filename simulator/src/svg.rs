//! Small, dependency-free SVG charts for the HTML reports: line charts, horizontal bars and
//! an H3 hexagon heat map. Text is SVG text (the browser's fonts), so no font files are needed.

use std::fmt::Write as _;

use h3o::CellIndex;

/// Colours for series, in order.
pub const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Escapes text for SVG/HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" upper bound for an axis.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if max <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn number(value: f64) -> String {
    if value.abs() >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value.abs() >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// A line chart of several series over the same x positions (`labels` every few points).
pub fn line_chart(title: &str, y_label: &str, x_labels: &[String], series: &[(String, Vec<f64>)]) -> String {
    let (width, height, left, right, top, bottom) = (760.0, 300.0, 60.0, 150.0, 30.0, 40.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let points = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0).max(2);
    let max = nice_max(series.iter().flat_map(|(_, v)| v.iter().copied()).fold(0.0, f64::max));
    let x = |i: usize| left + plot_w * i as f64 / (points - 1) as f64;
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(svg, r#"<text x="{left}" y="18" font-size="13" font-weight="bold">{}</text>"#, escape(title));
    for k in 0..=4 {
        let value = max * f64::from(k) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y0}" y2="{y0}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            y(value) + 4.0,
            number(value),
            y0 = y(value),
        );
    }
    let _ = write!(
        svg,
        r#"<text transform="translate(14,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        escape(y_label)
    );
    let every = (x_labels.len() / 8).max(1);
    for (i, label) in x_labels.iter().enumerate().step_by(every) {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x(i),
            top + plot_h + 16.0,
            escape(label)
        );
    }
    for (n, (name, values)) in series.iter().enumerate() {
        let colour = PALETTE[n % PALETTE.len()];
        let path: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
        let _ =
            write!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#, path.join(" "));
        let ly = top + 14.0 * n as f64;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            left + plot_w + 12.0,
            ly,
            left + plot_w + 26.0,
            ly + 9.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal bars, largest first as given.
pub fn bar_chart(title: &str, bars: &[(String, f64)]) -> String {
    let (width, row, left, top) = (760.0, 18.0, 200.0, 30.0);
    let height = top + row * bars.len().max(1) as f64 + 10.0;
    let max = nice_max(bars.iter().map(|(_, v)| *v).fold(0.0, f64::max));
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(svg, r#"<text x="10" y="18" font-size="13" font-weight="bold">{}</text>"#, escape(title));
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        let w = (width - left - 80.0) * value / max;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{left}" y="{y}" width="{w:.1}" height="{}" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            left - 6.0,
            y + 12.0,
            escape(label),
            row - 4.0,
            PALETTE[0],
            left + w + 4.0,
            y + 12.0,
            number(*value)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A colour on a yellow → red ramp for `t` in 0..=1.
pub fn heat(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let (r, g, b) = (255.0, 255.0 * (1.0 - 0.85 * t), 178.0 * (1.0 - t));
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, b as u8)
}

/// A heat map of H3 cells (equirectangular projection), with a legend.
pub fn cell_map(title: &str, unit: &str, cells: &[(CellIndex, f64)]) -> String {
    let (width, height, margin) = (760.0, 520.0, 30.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(svg, r#"<text x="10" y="18" font-size="13" font-weight="bold">{}</text>"#, escape(title));
    if cells.is_empty() {
        svg.push_str(r#"<text x="10" y="40">no data</text></svg>"#);
        return svg;
    }
    let boundaries: Vec<Vec<(f64, f64)>> =
        cells.iter().map(|(cell, _)| cell.boundary().iter().map(|ll| (ll.lat(), ll.lng())).collect()).collect();
    let (mut s, mut w, mut n, mut e) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for (lat, lng) in boundaries.iter().flatten() {
        (s, n, w, e) = (s.min(*lat), n.max(*lat), w.min(*lng), e.max(*lng));
    }
    let kx = ((s + n) / 2.0).to_radians().cos();
    let scale = ((width - 2.0 * margin - 120.0) / ((e - w) * kx)).min((height - 2.0 * margin - 20.0) / (n - s));
    let project = |lat: f64, lng: f64| (margin + (lng - w) * kx * scale, margin + 20.0 + (n - lat) * scale);
    let (low, high) = cells.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, v)| (lo.min(*v), hi.max(*v)));
    let span = (high - low).max(1e-9);
    for ((cell, value), boundary) in cells.iter().zip(&boundaries) {
        let points: Vec<String> = boundary
            .iter()
            .map(|(lat, lng)| {
                let (x, y) = project(*lat, *lng);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            r##"<polygon points="{}" fill="{}" stroke="#888" stroke-width="0.5"><title>{cell}: {value:.2} {}</title></polygon>"##,
            points.join(" "),
            heat((value - low) / span),
            escape(unit)
        );
    }
    let lx = width - 110.0;
    for k in 0..=10 {
        let t = f64::from(k) / 10.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{}" width="16" height="16" fill="{}"/>"#,
            60.0 + 16.0 * (10.0 - f64::from(k)),
            heat(t)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="70">{} {}</text><text x="{}" y="234">{}</text>"#,
        lx + 22.0,
        number(high),
        escape(unit),
        lx + 22.0,
        number(low)
    );
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_and_escape_text() {
        let line = line_chart("a <b>", "n", &["00:00".into(), "01:00".into()], &[("x&y".into(), vec![1.0, 3.0])]);
        assert!(line.starts_with("<svg") && line.ends_with("</svg>"));
        assert!(line.contains("a &lt;b&gt;") && line.contains("x&amp;y"));
        assert!(line.contains("<polyline"));
        let bars = bar_chart("top", &[("c1".into(), 5.0), ("c2".into(), 2.0)]);
        assert_eq!(bars.matches("<rect").count(), 2);
        let cell: CellIndex = "882a100d25fffff".parse().unwrap();
        let map = cell_map("pm25", "ug/m3", &[(cell, 12.0)]);
        assert_eq!(map.matches("<polygon").count(), 1);
        assert_eq!(nice_max(73.0), 100.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(heat(0.0), "#ffffb2");
        assert_eq!(heat(1.0), "#ff2600");
    }
}
