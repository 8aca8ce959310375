//! The loss curve as a small self-contained SVG (training loss per step, validation loss as
//! points), written to the run folder. SVG is a few lines of text; a plotting crate would add
//! a font stack and an image codec to the build for this one picture.

use std::fmt::Write;

/// An SVG chart of `train` (step, loss) as a line and `val` (step, loss) as dots.
pub fn loss_curve_svg(train: &[(usize, f64)], val: &[(usize, f64)]) -> String {
    let (w, h) = (720.0, 400.0);
    let (left, right, top, bottom) = (64.0, 16.0, 28.0, 44.0);
    let pts: Vec<(f64, f64)> =
        train.iter().chain(val).filter(|(_, l)| l.is_finite()).map(|&(s, l)| (s as f64, l)).collect();
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    if pts.is_empty() {
        let _ =
            writeln!(svg, r#"<text x="{}" y="{}">no loss recorded</text></svg>"#, w / 2.0 - 50.0, h / 2.0);
        return svg;
    }
    let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_min = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let (y_lo, y_hi) = (y_min - pad, y_max + pad);
    let px = |x: f64| left + (w - left - right) * x / x_max;
    let py = |y: f64| top + (h - top - bottom) * (1.0 - (y - y_lo) / (y_hi - y_lo));
    // Axes and ticks.
    let _ = writeln!(
        svg,
        r#"<path d="M{left},{top} V{} H{}" stroke="black" fill="none"/>"#,
        h - bottom,
        w - right
    );
    for i in 0..=4 {
        let y = y_lo + (y_hi - y_lo) * i as f64 / 4.0;
        let _ =
            writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">{y:.3}</text>"#, left - 6.0, py(y) + 4.0);
        let x = x_max * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{x:.0}</text>"#,
            px(x),
            h - bottom + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
        (left + w - right) / 2.0,
        h - 8.0
    );
    let _ = writeln!(svg, r#"<text x="{left}" y="18">loss (train: line, validation: dots)</text>"#);
    let line: Vec<String> = train
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|&(s, l)| format!("{:.1},{:.1}", px(s as f64), py(l)))
        .collect();
    if !line.is_empty() {
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
            line.join(" ")
        );
    }
    for &(s, l) in val.iter().filter(|p| p.1.is_finite()) {
        let _ =
            writeln!(svg, r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"/>"##, px(s as f64), py(l));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_point_inside_the_frame() {
        let svg = loss_curve_svg(&[(1, 3.0), (2, 2.0), (3, 1.5)], &[(0, 3.2), (3, 1.6)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let poly = svg.lines().find(|l| l.starts_with("<polyline")).expect("a line");
        assert_eq!(poly.matches(',').count(), 3);
        assert_eq!(svg.matches("<circle").count(), 2);
        // Range 1.5..3.2 padded by 5% (0.085): 3.2 maps to 28 + 328 * 0.085 / 1.87 = 42.9 and
        // 1.5 (step 3, x = 64 + 640) to 28 + 328 * (1 - 0.085 / 1.87) = 341.1.
        assert!(svg.contains(r#"cy="42.9""#), "{svg}");
        assert!(poly.contains("704.0,341.1"), "{poly}");
        assert!(loss_curve_svg(&[], &[]).contains("no loss recorded"));
    }
}
