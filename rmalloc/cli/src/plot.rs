//! Line charts as PNG files with plotters: the font lookup, and a chart of
//! several named series over time (the RSS chart of `make demo`).

use std::path::Path;

use plotters::prelude::*;

/// Font files tried in order (after $KAL_CHART_FONT): Debian's
/// fonts-dejavu-core and the usual places of other distributions.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Register a sans-serif font for plotters' ab_glyph text renderer.
pub fn load_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let env = std::env::var("KAL_CHART_FONT").ok().filter(|s| !s.is_empty());
        let candidates: Vec<String> = env
            .into_iter()
            .chain(FONTS.iter().map(|s| s.to_string()))
            .collect();
        for c in &candidates {
            if let Ok(bytes) = std::fs::read(c) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("no font for the chart: install fonts-dejavu-core or set KAL_CHART_FONT=/path/to/font.ttf"
            .to_string())
    })
    .clone()
}

/// Colours of the series, in order.
const PALETTE: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(44, 160, 44),
    RGBColor(31, 119, 180),
    RGBColor(127, 127, 127),
];

/// Draw `series` (name, points of (seconds, value)) as lines, with a legend,
/// time on the x axis and `y_desc` on the y axis.
pub fn lines(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    lines_with_markers(path, title, y_desc, series, None)
}

/// [`lines`], plus named event markers (red triangles) at given points.
pub fn lines_with_markers(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    markers: Option<(&str, &[(f64, f64)])>,
) -> Result<(), String> {
    load_font()?;
    let err = |e: &dyn std::fmt::Display| format!("drawing chart {}: {e}", path.display());
    let pts = series.iter().flat_map(|s| s.1.iter());
    let t_max = pts.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let y_max = pts.map(|p| p.1).fold(1.0f64, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (1024, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(y_desc)
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| err(&e))?;
    }
    if let Some((name, points)) = markers.filter(|m| !m.1.is_empty()) {
        let red = RGBColor(214, 39, 40);
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 7, red.filled())),
            )
            .map_err(|e| err(&e))?
            .label(format!("{name} ({})", points.len()))
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, red.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
