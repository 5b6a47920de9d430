//! A small SVG writer for grouped bar charts: one group per workload (or
//! member), one bar per system, every bar labelled with its value, and
//! under each group the ratio of the first system's value to the second's.
//!
//! Hand-written so that it needs no font files or drawing crate: text is
//! left to the SVG viewer, and only its width is estimated for the layout.

use std::fmt::Write as _;

/// One system compared (one bar per group).
#[derive(Clone, Debug)]
pub struct Series {
    /// Name in the legend, e.g. `Ballast`.
    pub name: String,
    /// Fill colour, e.g. `#3367d6`.
    pub color: String,
}

/// One group of bars: a label and one value per series (`None`: no data).
#[derive(Clone, Debug)]
pub struct Group {
    /// Label under the group; `\n` starts a second line.
    pub label: String,
    /// One value per series, in the order of [`BarChart::series`].
    pub values: Vec<Option<f64>>,
}

/// A grouped bar chart.
#[derive(Clone, Debug)]
pub struct BarChart {
    /// Title, on top.
    pub title: String,
    /// A line under the title (what the values are, which way is better).
    pub subtitle: String,
    /// Unit of the values, written along the y axis.
    pub unit: String,
    /// The systems, in bar order.
    pub series: Vec<Series>,
    /// The groups, left to right.
    pub groups: Vec<Group>,
    /// If set, each group shows `<ratio_label> <first/second>×` under its
    /// label, e.g. `Ballast/etcd 1.30×`.
    pub ratio_label: Option<String>,
}

const GROUP_W: f64 = 150.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 84.0;
const PLOT_H: f64 = 230.0;
const BOTTOM: f64 = 74.0;
const FONT: &str = "font-family=\"Helvetica, Arial, sans-serif\"";

/// Escapes `s` for SVG text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// A value as printed on a bar: thousands separated and no decimals from
/// 100 on, one decimal from 10, two below.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.abs() >= 100.0 {
        thousands(v.round() as i64)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `n` with commas between thousands.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut s = String::new();
    if n < 0 {
        s.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(c);
    }
    s
}

/// A y axis label: `v` with as many decimals as the tick `step` needs.
pub fn format_tick(v: f64, step: f64) -> String {
    let decimals = (0..4)
        .find(|d| {
            let scaled = step * 10f64.powi(*d);
            (scaled - scaled.round()).abs() < 1e-9 * scaled.max(1.0)
        })
        .unwrap_or(4);
    if decimals == 0 {
        thousands(v.round() as i64)
    } else {
        format!("{v:.*}", decimals as usize)
    }
}

/// The ratio `a / b` as `1.30×`, or `–` if it is not defined.
pub fn format_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// A round axis maximum at or above `max`, and its tick step: 1, 2, 2.5
/// or 5 times a power of ten, 3 to 6 steps up to the maximum.
pub fn axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.2);
    }
    let raw = max / 6.0;
    let pow = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * pow);
    ((max / step).ceil().max(1.0) * step, step)
}

impl BarChart {
    /// The chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let n_groups = self.groups.len().max(1);
        let n_series = self.series.len().max(1);
        let width = (LEFT + GROUP_W * n_groups as f64 + RIGHT).max(560.0);
        let plot_w = width - LEFT - RIGHT;
        let group_w = plot_w / n_groups as f64;
        let height = TOP + PLOT_H + BOTTOM;
        let base = TOP + PLOT_H;
        let max = self
            .groups
            .iter()
            .flat_map(|g| g.values.iter().flatten())
            .fold(0.0f64, |m, v| m.max(*v));
        // Room above the highest bar for its label.
        let (top, step) = axis(max * 1.08);
        let y = |v: f64| base - (v / top * PLOT_H).clamp(0.0, PLOT_H);

        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" {FONT}>"
        );
        let _ = writeln!(s, "<title>{}</title>", escape(&self.title));
        let _ = writeln!(
            s,
            "<rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"#ffffff\"/>"
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"24\" font-size=\"16\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>",
            width / 2.0,
            escape(&self.title)
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"44\" font-size=\"12\" fill=\"#555555\" text-anchor=\"middle\">{}</text>",
            width / 2.0,
            escape(&self.subtitle)
        );
        self.legend(&mut s, width);

        // Grid lines and y axis labels.
        let ticks = (top / step).round() as usize;
        for i in 0..=ticks {
            let v = step * i as f64;
            let yy = y(v);
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"{}\" stroke-width=\"1\"/>",
                width - RIGHT,
                if i == 0 { "#333333" } else { "#e5e5e5" }
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#555555\" text-anchor=\"end\">{}</text>",
                LEFT - 6.0,
                yy + 4.0,
                format_tick(v, step)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"16\" y=\"{:.1}\" font-size=\"12\" fill=\"#555555\" text-anchor=\"middle\" \
             transform=\"rotate(-90 16 {:.1})\">{}</text>",
            TOP + PLOT_H / 2.0,
            TOP + PLOT_H / 2.0,
            escape(&self.unit)
        );

        // Bars, their values, the group labels and ratios.
        let pad = group_w * 0.14;
        let bar_w = (group_w - 2.0 * pad) / n_series as f64;
        for (gi, g) in self.groups.iter().enumerate() {
            let gx = LEFT + group_w * gi as f64;
            for (si, series) in self.series.iter().enumerate() {
                let x = gx + pad + bar_w * si as f64;
                let cx = x + bar_w / 2.0;
                match g.values.get(si).copied().flatten() {
                    Some(v) => {
                        let top_y = y(v);
                        let _ = writeln!(
                            s,
                            "<rect x=\"{:.1}\" y=\"{top_y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
                             <title>{}: {}</title></rect>",
                            x + 1.0,
                            bar_w - 2.0,
                            base - top_y,
                            escape(&series.color),
                            escape(&series.name),
                            format_value(v)
                        );
                        let _ = writeln!(
                            s,
                            "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
                            top_y - 4.0,
                            format_value(v)
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#999999\" text-anchor=\"middle\">no data</text>",
                            base - 4.0
                        );
                    }
                }
            }
            let mid = gx + group_w / 2.0;
            let mut ly = base + 18.0;
            for line in g.label.split('\n') {
                let _ = writeln!(
                    s,
                    "<text x=\"{mid:.1}\" y=\"{ly:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
                    escape(line)
                );
                ly += 15.0;
            }
            if let Some(label) = &self.ratio_label {
                let ratio = format_ratio(
                    g.values.first().copied().flatten(),
                    g.values.get(1).copied().flatten(),
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{mid:.1}\" y=\"{ly:.1}\" font-size=\"12\" font-weight=\"bold\" fill=\"#333333\" \
                     text-anchor=\"middle\">{} {}</text>",
                    escape(label),
                    escape(&ratio)
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }

    /// The legend, centred under the subtitle.
    fn legend(&self, s: &mut String, width: f64) {
        // About 7 px per character at 12 px.
        let item_w: Vec<f64> = self
            .series
            .iter()
            .map(|se| 22.0 + 7.0 * se.name.chars().count() as f64 + 18.0)
            .collect();
        let mut x = (width - item_w.iter().sum::<f64>()) / 2.0;
        for (se, w) in self.series.iter().zip(&item_w) {
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"56\" width=\"14\" height=\"14\" fill=\"{}\"/>",
                escape(&se.color)
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"67\" font-size=\"12\">{}</text>",
                x + 20.0,
                escape(&se.name)
            );
            x += w;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks that `svg` is well-formed XML as far as this writer's output
    /// goes: balanced elements, quoted attributes, no stray `<` or `&`.
    /// Returns the element names in document order.
    pub(crate) fn check_well_formed(svg: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = svg.trim();
        if !rest.starts_with("<svg") {
            return Err("does not start with <svg".into());
        }
        while !rest.is_empty() {
            match rest.find('<') {
                None => {
                    check_text(rest)?;
                    if !rest.trim().is_empty() {
                        return Err(format!("text after the root: {rest:?}"));
                    }
                    break;
                }
                Some(i) => {
                    check_text(&rest[..i])?;
                    if i > 0 && stack.is_empty() && !rest[..i].trim().is_empty() {
                        return Err("text outside the root".into());
                    }
                    rest = &rest[i..];
                }
            }
            let end = rest.find('>').ok_or("unclosed tag")?;
            let tag = &rest[1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                if stack.is_empty() && !rest.trim().is_empty() {
                    return Err("content after the root element".into());
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name: String = tag.chars().take_while(|c| !c.is_whitespace()).collect();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("bad element name in <{tag}>"));
            }
            check_attributes(&tag[name.len()..])?;
            names.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
        }
        if stack.is_empty() {
            Ok(names)
        } else {
            Err(format!("unclosed elements: {stack:?}"))
        }
    }

    fn check_text(t: &str) -> Result<(), String> {
        let mut rest = t;
        while let Some(i) = rest.find('&') {
            rest = &rest[i..];
            let end = rest.find(';').ok_or("& without ;")?;
            let ent = &rest[1..end];
            let ok = matches!(ent, "amp" | "lt" | "gt" | "quot" | "apos")
                || (ent.starts_with('#') && ent[1..].chars().all(|c| c.is_ascii_digit()));
            if !ok {
                return Err(format!("bad entity &{ent};"));
            }
            rest = &rest[end + 1..];
        }
        if t.contains('>') {
            return Err(format!("stray > in text {t:?}"));
        }
        Ok(())
    }

    fn check_attributes(a: &str) -> Result<(), String> {
        let mut rest = a.trim();
        while !rest.is_empty() {
            let eq = rest
                .find('=')
                .ok_or(format!("attribute without value: {rest:?}"))?;
            let name = rest[..eq].trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("bad attribute name {name:?}"));
            }
            let after = &rest[eq + 1..];
            let after = after.strip_prefix('"').ok_or("unquoted attribute")?;
            let close = after.find('"').ok_or("unterminated attribute")?;
            let value = &after[..close];
            if value.contains('<') {
                return Err("< in an attribute".into());
            }
            check_text(value)?;
            rest = after[close + 1..].trim_start();
        }
        Ok(())
    }

    fn chart() -> BarChart {
        BarChart {
            title: "Throughput <median> & more".into(),
            subtitle: "requests/s, higher is better".into(),
            unit: "requests/s".into(),
            series: vec![
                Series {
                    name: "Ballast".into(),
                    color: "#3367d6".into(),
                },
                Series {
                    name: "etcd 3.4".into(),
                    color: "#e8710a".into(),
                },
            ],
            groups: vec![
                Group {
                    label: "put".into(),
                    values: vec![Some(10249.1), Some(7868.6)],
                },
                Group {
                    label: "range\nserializable".into(),
                    values: vec![Some(26607.2), None],
                },
            ],
            ratio_label: Some("Ballast/etcd".into()),
        }
    }

    #[test]
    fn svg_is_well_formed_and_labelled() {
        let svg = chart().to_svg();
        let names = check_well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert_eq!(names[0], "svg");
        // Three bars (one value is missing), two legend boxes, the background.
        assert_eq!(names.iter().filter(|n| *n == "rect").count(), 6);
        for text in [
            "Throughput &lt;median&gt; &amp; more",
            "10,249",
            "7,869",
            "26,607",
            "no data",
            "Ballast/etcd 1.30×",
            "Ballast/etcd –",
            ">range<",
            ">serializable<",
            ">Ballast<",
            ">etcd 3.4<",
            "requests/s",
        ] {
            assert!(svg.contains(text), "missing {text:?} in\n{svg}");
        }
    }

    #[test]
    fn checker_rejects_broken_documents() {
        assert!(check_well_formed("<svg><g></svg>").is_err());
        assert!(check_well_formed("<svg><text>a & b</text></svg>").is_err());
        assert!(check_well_formed("<svg x=1></svg>").is_err());
        assert!(check_well_formed("<svg><text>a</text></svg>").is_ok());
    }

    #[test]
    fn empty_and_zero_charts_still_render() {
        let mut c = chart();
        c.groups.clear();
        check_well_formed(&c.to_svg()).unwrap();
        let mut c = chart();
        for g in &mut c.groups {
            g.values = vec![Some(0.0), Some(0.0)];
        }
        let svg = c.to_svg();
        check_well_formed(&svg).unwrap();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn values_axes_and_ratios() {
        assert_eq!(format_value(1234567.0), "1,234,567");
        assert_eq!(format_value(999.6), "1,000");
        assert_eq!(format_value(-1500.0), "-1,500");
        assert_eq!(format_value(20.554), "20.6");
        assert_eq!(format_value(3.456), "3.46");
        assert_eq!(format_tick(0.0, 5000.0), "0");
        assert_eq!(format_tick(25_000.0, 5000.0), "25,000");
        assert_eq!(format_tick(7.5, 2.5), "7.5");
        assert_eq!(format_tick(0.1, 0.05), "0.10");
        assert_eq!(format_tick(40.0, 10.0), "40");
        assert_eq!(format_ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(format_ratio(Some(3.0), Some(0.0)), "–");
        assert_eq!(format_ratio(None, Some(1.0)), "–");
        assert_eq!(axis(0.0), (1.0, 0.2));
        assert_eq!(axis(95.0), (100.0, 20.0));
        assert_eq!(axis(11_000.0), (12_000.0, 2_000.0));
        for max in [0.3, 7.0, 28_700.0, 10_249.0, 1e6, 123_456.0] {
            let (top, step) = axis(max);
            let steps = (top / step * 1e6).round() / 1e6;
            assert!(
                top >= max && (3.0..=6.0).contains(&steps),
                "{max}: {top} {step}"
            );
        }
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }
}
